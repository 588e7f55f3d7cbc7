"""Security properties: no pickle on data paths, weights only through safetensors or
`torch.load(weights_only=True)`, manifest paths stay inside the audio root, S3 keys only from
validated ids.

Elsewhere: the planted-secret search through MLflow, Prefect and the logs is in
test_reliability_faults.py (and tests/e2e/test_train_ravdess.py); servers bound to 127.0.0.1 in
tests/infra/test_infra_live.py::test_every_server_listens_on_loopback_only; S3 refusing
anonymous requests in tests/infra/test_infra_live.py::test_s3_refuses_anonymous_requests;
credentials kept out of reprs in tests/infra/test_infra_settings.py; the worker's environment
without credentials in tests/flows/test_train_flow.py::test_worker_environment_has_no_credentials.
"""

from __future__ import annotations

import ast
import io
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from data_contracts.errors import SourceError
from ser_model.checkpoint import STATE_FILE, load_training_state
from ser_model.data import UtteranceDataset
from ser_model.model import SERModel
from ser_model.worker import BAD_DATA_EXIT
from ser_model.worker import main as worker_main
from tests.train.synthetic import LABELS, tiny_config, write_fold_job, write_synthetic_corpus

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCT_CODE = ("data_contracts", "ser_model", "flows", "infra", "benchmarks")

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
UNSAFE_CALLS = {
    "pd.read_pickle",
    "pandas.read_pickle",
    "yaml.unsafe_load",
    "yaml.full_load",
    "torch.jit.load",
    "eval",
    "exec",
}


# ----------------------------------------------------------------------------- source scan


def dotted(node: ast.AST) -> str:
    """`a.b.c` of a Name/Attribute chain, '' for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


def keyword_is(call: ast.Call, name: str, accepted: tuple[str, ...]) -> bool:
    """True when `call` passes keyword `name` as a constant or name among `accepted`."""
    for keyword in call.keywords:
        if keyword.arg == name:
            value = keyword.value
            text = repr(value.value) if isinstance(value, ast.Constant) else dotted(value)
            return text in accepted
    return False


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """`file:line what` for every way `source` could unpickle or execute data:
    importing a pickle-like module, `torch.load` without `weights_only=True`, `yaml.load`
    without a safe loader, `np.load(allow_pickle=True)`, `trust_remote_code=True`, and
    UNSAFE_CALLS."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [
                f"{filename}:{node.lineno} import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in UNSAFE_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{filename}:{node.lineno} from {node.module} import")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            where = f"{filename}:{node.lineno} {name}"
            if name == "torch.load" and not keyword_is(node, "weights_only", ("True",)):
                found.append(f"{where} without weights_only=True")
            elif name == "yaml.load" and not keyword_is(
                node, "Loader", ("yaml.SafeLoader", "yaml.CSafeLoader")
            ):
                found.append(f"{where} without a safe Loader")
            elif name in ("np.load", "numpy.load") and keyword_is(node, "allow_pickle", ("True",)):
                found.append(f"{where} with allow_pickle=True")
            elif name in UNSAFE_CALLS:
                found.append(where)
            elif keyword_is(node, "trust_remote_code", ("True",)):
                found.append(f"{where} with trust_remote_code=True")
    return found


def product_files() -> list[Path]:
    return [p for folder in PRODUCT_CODE for p in sorted((REPO_ROOT / folder).rglob("*.py"))]


def test_the_scanner_flags_each_unsafe_form():
    """The scan below can fail: every unsafe form is caught, the safe forms are not."""
    unsafe = "\n".join(
        [
            "import pickle",
            "from cloudpickle import loads",
            "torch.load(path)",
            "torch.load(path, weights_only=False)",
            "yaml.load(text)",
            "np.load(path, allow_pickle=True)",
            "pd.read_pickle(path)",
            "AutoModel.from_pretrained(x, trust_remote_code=True)",
        ]
    )
    assert len(unsafe_loads(unsafe)) == 8, unsafe_loads(unsafe)
    safe = "torch.load(p, map_location='cpu', weights_only=True)\nyaml.load(t, Loader=yaml.SafeLoader)\nnp.load(p)\nsafetensors.torch.load_file(p)"
    assert unsafe_loads(safe) == []


def test_product_code_never_unpickles_or_executes_data():
    files = product_files()
    assert len(files) > 30, "the scan found the code base"
    found = [
        hit
        for path in files
        for hit in unsafe_loads(path.read_text(encoding="utf-8"), str(path.relative_to(REPO_ROOT)))
    ]
    assert not found, "unsafe loading in product code:\n" + "\n".join(found)


def test_every_torch_load_in_product_code_is_the_checkpoint_state_loader():
    """Weights go through safetensors; the one torch.load reads the training state (tensors and plain values)."""
    calls = [
        f"{path.relative_to(REPO_ROOT)}"
        for path in product_files()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and dotted(node.func) == "torch.load"
    ]
    assert calls == ["ser_model/checkpoint.py"]


# ----------------------------------------------------------------------------- pickle payloads


class PlantsAMarker:
    """A pickle payload that, when unpickled, creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_posing_as_weights_or_training_state_never_runs(tmp_path):
    folder = tmp_path / "checkpoint"
    SERModel(tiny_config()).save_pretrained(folder)
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(PlantsAMarker(marker))
    pickle.loads(payload)
    assert marker.exists(), "the payload works when unpickled"
    marker.unlink()

    (folder / "model.safetensors").write_bytes(payload)
    with pytest.raises(SafetensorError, match="Error while deserializing header"):
        SERModel.from_pretrained(folder)
    assert not marker.exists()

    buffer = io.BytesIO()
    torch.save({"epoch": 1, "trap": PlantsAMarker(marker)}, buffer)
    (folder / STATE_FILE).write_bytes(buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_training_state(folder)
    assert not marker.exists()


# ----------------------------------------------------------------------------- manifest paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    manifest, folds = write_synthetic_corpus(root / "corpus", n_speakers=4, per_class=1)
    (root / "outside.wav").write_bytes((root / "corpus" / manifest["path"].iloc[0]).read_bytes())
    return root / "corpus", manifest, folds


def dataset(manifest, root):
    return UtteranceDataset(
        manifest, root, LABELS, sample_rate=16000, crop_seconds=None, random_crop=False, preload=False
    )


@pytest.mark.parametrize(
    "path, code",
    [
        ("../outside.wav", "path_escape"),
        ("S00/../../outside.wav", "path_escape"),
        ("{root}/S00/low_0.wav", "path_escape"),
        ("S00\\..\\..\\outside.wav", "path_escape"),
        ("S00//low_0.wav", "path_escape"),
        ("link-out.wav", "symlink_escape"),
        ("S00-link/low_0.wav", "symlink_escape"),
    ],
)
def test_a_manifest_path_leaving_the_audio_root_is_refused_naming_the_row(corpus, path, code):
    root, manifest, _ = corpus
    if not (root / "link-out.wav").is_symlink():
        (root / "link-out.wav").symlink_to(root.parent / "outside.wav")
        (root / "S00-link").symlink_to(root.parent)
    hostile = manifest.copy()
    hostile.loc[2, "path"] = path.format(root=root)
    with pytest.raises(SourceError, match=f"manifest row {hostile.loc[2, 'utt_id']}") as refused:
        dataset(hostile, root)
    assert refused.value.reason_code == code


def test_a_symlink_staying_inside_the_root_is_followed(corpus):
    root, manifest, _ = corpus
    inside = root / "S00-alias"
    if not inside.exists():
        inside.symlink_to(root / "S00", target_is_directory=True)
    aliased = manifest.copy()
    aliased.loc[0, "path"] = "S00-alias/" + manifest.loc[0, "path"].split("/", 1)[1]
    direct, through_link = dataset(manifest, root)[0][0], dataset(aliased, root)[0][0]
    assert torch.equal(direct, through_link)


def test_the_worker_exits_as_bad_data_on_an_escaping_path(corpus, tmp_path):
    """Retrying cannot fix a hostile manifest: the worker exits 3, which the flow never retries."""
    root, manifest, folds = corpus
    hostile = manifest.assign(path=manifest["path"].where(manifest.index != 0, "../outside.wav"))
    job = write_fold_job(tmp_path, hostile, folds, tiny_config(epochs=1), -1, root, tmp_path / "out")
    assert worker_main(job.worker_args()) == BAD_DATA_EXIT
    assert not (tmp_path / "out" / "checkpoints").exists(), "nothing was trained"


# ----------------------------------------------------------------------------- S3 keys

FP = "ab" * 32
HOSTILE_CORPORA = [
    "../ravdess",
    "ravdess/../iemocap",
    "RAVDESS",
    "ravdess\x00",
    "",
    "ravdess/",
    " ravdess",
    "ravdess%2F..",
    "rávdess",
]
HOSTILE_VERSIONS = [
    "../latest",
    "latest/..",
    FP + "/../x",
    FP + "\n",
    FP.upper(),
    "latest.json",
    "*",
    "%2e%2e",
    FP[:63] + "/",
    "",
    "\u0430" * 64,
]


class NoS3:
    """An S3 client stand-in that records every call; the tests expect none (or only the ones allowed)."""

    def __init__(self, objects: dict[str, bytes] | None = None):
        self.objects = objects or {}
        self.calls: list[tuple[str, str]] = []

    def get_object(self, Bucket: str, Key: str):
        self.calls.append(("get_object", Key))
        if Key not in self.objects:
            raise AssertionError(f"unexpected read of {Key}")
        return {"Body": io.BytesIO(self.objects[Key])}

    def __getattr__(self, operation: str):
        def call(**kwargs):
            self.calls.append((operation, kwargs.get("Key", kwargs.get("Prefix", ""))))
            raise AssertionError(f"S3 {operation} called with {kwargs}")

        return call


@pytest.mark.parametrize("corpus_name", HOSTILE_CORPORA)
def test_hostile_corpus_names_are_refused_before_any_s3_call(corpus_name):
    from data_contracts.errors import UnknownCorpusError
    from flows.storage import DataBucket, publish_manifest, read_latest, resolve_version

    client = NoS3()
    bucket = DataBucket(client=client, name="ser-data")
    attempts = [
        lambda: read_latest(corpus_name, bucket),
        lambda: resolve_version(corpus_name, FP, bucket),
        lambda: publish_manifest(corpus_name, FP, None, None, None, {}, "/root", bucket),
    ]
    for attempt in attempts:
        with pytest.raises(UnknownCorpusError, match="unknown dataset"):
            attempt()
    assert client.calls == []


@pytest.mark.parametrize("version", HOSTILE_VERSIONS)
def test_hostile_versions_and_fingerprints_are_refused_before_any_s3_call(version):
    from flows.storage import (
        DataBucket,
        InvalidKeyPartError,
        load_manifest_version,
        publish_manifest,
        resolve_version,
    )

    client = NoS3()
    bucket = DataBucket(client=client, name="ser-data")
    for attempt in (
        lambda: resolve_version("ravdess", version, bucket),
        lambda: load_manifest_version("ravdess", version, bucket),
        lambda: publish_manifest("ravdess", version, None, None, None, {}, "/root", bucket),
    ):
        with pytest.raises(InvalidKeyPartError, match="64 lowercase hex"):
            attempt()
    assert client.calls == []


@pytest.mark.parametrize("tampered", ["../../checkpoints/x", FP + "/../../iemocap/" + FP, None, 42])
def test_a_tampered_latest_pointer_is_refused_after_reading_only_the_pointer(tampered):
    import json

    from flows.storage import DataBucket, InvalidKeyPartError, object_key, resolve_version

    pointer_key = object_key("latest", "ravdess")
    client = NoS3({pointer_key: json.dumps({"fingerprint": tampered}).encode()})
    with pytest.raises(InvalidKeyPartError, match="invalid manifest fingerprint"):
        resolve_version("ravdess", "latest", DataBucket(client=client, name="ser-data"))
    assert client.calls == [("get_object", pointer_key)]
