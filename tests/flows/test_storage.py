"""flows.storage: the bucket layout, publication of manifest versions and the latest pointer.

Fast tests run against moto's in-memory S3; the integration test repeats the round trip on
the live SeaweedFS of the stack (in a bucket of its own, removed afterwards).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from botocore.exceptions import EndpointConnectionError
from hypothesis import given, settings
from hypothesis import strategies as st

from data_contracts.corpora.table import DATASET_NAME
from data_contracts.errors import ManifestError, UnknownCorpusError
from data_contracts.fingerprint import manifest_fingerprint
from data_contracts.folds import make_folds
from data_contracts.labels import CORPORA, LABELS
from flows.storage import (
    DataBucket,
    InvalidKeyPartError,
    ManifestVersionNotFoundError,
    StorageUnavailableError,
    get_parquet,
    list_manifest_versions,
    load_manifest_version,
    manifest_exists,
    object_key,
    publish_manifest,
    read_latest,
    write_latest,
)
from ser_stack.settings import StackSettings

FP = "ab" * 32


def tiny_version(n_actors: int = 8, label_shift: int = 0) -> dict:
    """A valid RAVDESS manifest version (no audio needed): manifest, quarantine, folds, report."""
    rows = []
    labels = LABELS["ravdess"]
    for actor in range(1, n_actors + 1):
        for k in range(2):
            emotion = (actor + k + label_shift) % len(labels)
            utt_id = f"03-01-{emotion + 1:02d}-01-01-{k + 1:02d}-{actor:02d}"
            rows.append(
                {
                    "utt_id": utt_id,
                    "corpus": "ravdess",
                    "path": f"Actor_{actor:02d}/{utt_id}.wav",
                    "speaker": f"Actor_{actor:02d}",
                    "session": f"Actor_{actor:02d}",
                    "gender": "M" if actor % 2 else "F",
                    "label": labels[emotion],
                    "label_raw": f"{emotion + 1:02d}",
                    "duration_s": 3.0 + k,
                    "sample_rate": 16000,
                    "channels": 1,
                    "sha256": f"{actor:032x}{k:032x}",
                    "fold": 0,
                }
            )
    manifest = pd.DataFrame(rows)
    folds = make_folds(manifest)
    fold_of = folds[folds["role"] == "test"].set_index("speaker")["fold"]
    manifest["fold"] = manifest["speaker"].map(fold_of).astype(int)
    quarantine = pd.DataFrame(
        [
            {
                "corpus": "ravdess",
                "path": "Actor_01/broken.wav",
                "utt_id": None,
                "reason_code": "unreadable",
                "reason": "not audio",
            }
        ]
    )
    fingerprint = manifest_fingerprint(manifest)
    return {
        "corpus": "ravdess",
        "fingerprint": fingerprint,
        "manifest": manifest,
        "quarantine": quarantine,
        "folds": folds,
        "report": {"corpus": "ravdess", "fingerprint": fingerprint, "utterances": len(manifest)},
        "root": "/data/ravdess",
    }


def count_calls(bucket: DataBucket, operation: str) -> list[str]:
    """Record the keys of every ``operation`` (e.g. PutObject) the client sends from now on."""
    seen: list[str] = []
    bucket.client.meta.events.register(
        f"before-call.s3.{operation}", lambda params, **_: seen.append(params["url_path"])
    )
    return seen


# ----------------------------------------------------------------------------- object keys


def test_object_key_layout():
    assert object_key("manifest", "ravdess", FP) == f"manifests/ravdess/{FP}/manifest.parquet"
    assert object_key("quarantine", "msp-improv", FP) == f"manifests/msp-improv/{FP}/quarantine.parquet"
    assert object_key("folds", "savee", FP) == f"manifests/savee/{FP}/folds.parquet"
    assert object_key("report", "iemocap", FP) == f"manifests/iemocap/{FP}/report.json"
    assert object_key("latest", "ravdess") == "manifests/ravdess/latest.json"
    assert object_key("source", "ravdess") == "manifests/ravdess/source.json"


def test_every_dataset_name_is_checked_by_one_resolver():
    """One dataset check (data_contracts.datasets.resolve_dataset: a corpus, or a table dataset's
    slug), one error type, wherever a name enters."""
    from flows.deploy import manifest_trigger
    from flows.limits import training_limit
    from flows.roots import root_env_var, root_variable

    for build in (
        lambda name: object_key("manifest", name, FP),
        root_env_var,
        root_variable,
        training_limit,
        lambda name: str(manifest_trigger(name, "ser-data").match),
    ):
        with pytest.raises(
            UnknownCorpusError, match=r"^unknown dataset 'Crema D': expected one of the corpora iemocap"
        ):
            build("Crema D")
        assert "ravdess" in build("ravdess").lower() and "crema" in build("crema-d").lower()


@pytest.mark.parametrize(
    "args, kwargs, fragment",
    [
        (("manifest", "ravdess", FP[:-1]), {}, "64 lowercase hex"),
        (("manifest", "ravdess", FP.upper()), {}, "64 lowercase hex"),
        (("manifest", "ravdess"), {}, "needs a fingerprint"),
        (("weights", "ravdess", FP), {}, "unknown object kind 'weights'"),
    ],
)
def test_object_key_rejects_ids_outside_the_layout(args, kwargs, fragment):
    with pytest.raises(InvalidKeyPartError, match=fragment.replace("(", r"\(")):
        object_key(*args, **kwargs)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["manifest", "report", "latest", "source"]),
    corpus=st.one_of(st.sampled_from(CORPORA), st.text(max_size=12)),
    fingerprint=st.one_of(st.just(FP), st.text(max_size=70)),
)
def test_any_key_built_stays_inside_its_prefix(kind, corpus, fingerprint):
    """Whatever text comes in, a key either is refused or lies under the corpus's own prefix
    with no '.', '..' or empty path component."""
    try:
        key = object_key(kind, corpus, fingerprint)
    except (InvalidKeyPartError, UnknownCorpusError):
        return
    assert key.startswith(f"manifests/{corpus}/")
    parts = key.rstrip("/").split("/")
    assert all(part not in ("", ".", "..") for part in parts)
    assert corpus in CORPORA or DATASET_NAME.fullmatch(corpus)


# ----------------------------------------------------------------------------- publication


def publish(bucket: DataBucket, version: dict):
    return publish_manifest(
        version["corpus"],
        version["fingerprint"],
        version["manifest"],
        version["quarantine"],
        version["folds"],
        version["report"],
        version["root"],
        bucket,
    )


def test_publish_then_load_round_trips_every_table(bucket):
    version = tiny_version()
    outcome = publish(bucket, version)
    assert outcome.status == "published" and outcome.previous is None
    pointer = read_latest("ravdess", bucket)
    assert pointer["fingerprint"] == version["fingerprint"]
    assert pointer["root"] == "/data/ravdess"
    assert pointer["report_key"] == object_key("report", "ravdess", version["fingerprint"])
    manifest, folds, report = load_manifest_version("ravdess", "latest", bucket)
    pd.testing.assert_frame_equal(manifest.reset_index(drop=True), version["manifest"], check_dtype=False)
    pd.testing.assert_frame_equal(
        folds.reset_index(drop=True), version["folds"].reset_index(drop=True), check_dtype=False
    )
    assert report == version["report"]
    assert manifest_fingerprint(manifest) == version["fingerprint"]
    assert get_parquet(bucket, object_key("quarantine", "ravdess", version["fingerprint"]))[
        "reason_code"
    ].tolist() == ["unreadable"]


def test_publishing_the_current_version_again_writes_nothing(bucket):
    version = tiny_version()
    publish(bucket, version)
    puts = count_calls(bucket, "PutObject")
    outcome = publish(bucket, version)
    assert outcome.status == "unchanged"
    assert puts == []


def test_a_new_version_moves_latest_and_keeps_the_old_one_loadable(bucket):
    old, new = tiny_version(), tiny_version(label_shift=1)
    assert old["fingerprint"] != new["fingerprint"]
    publish(bucket, old)
    outcome = publish(bucket, new)
    assert outcome.status == "published" and outcome.previous == old["fingerprint"]
    assert read_latest("ravdess", bucket)["fingerprint"] == new["fingerprint"]
    assert list_manifest_versions("ravdess", bucket) == sorted([old["fingerprint"], new["fingerprint"]])
    manifest, _, _ = load_manifest_version("ravdess", old["fingerprint"], bucket)
    assert sorted(manifest["label"]) == sorted(old["manifest"]["label"])


def test_s3_failure_mid_publication_leaves_latest_and_a_rerun_completes(bucket):
    """The fault "S3 stops during ingest", injected at the client: the third object write
    fails to connect. latest must still name the old version; a rerun publishes the new one."""
    old, new = tiny_version(), tiny_version(label_shift=1)
    publish(bucket, old)
    puts = []

    def fail_third_put(params, **_):
        puts.append(params["url_path"])
        if len(puts) == 3:
            raise EndpointConnectionError(endpoint_url="http://s3.test")

    bucket.client.meta.events.register("before-call.s3.PutObject", fail_third_put)
    with pytest.raises(
        StorageUnavailableError, match="unreachable during put_object of s3://ser-data/manifests/ravdess/"
    ):
        publish(bucket, new)
    assert read_latest("ravdess", bucket)["fingerprint"] == old["fingerprint"]
    assert not manifest_exists("ravdess", new["fingerprint"], bucket)
    bucket.client.meta.events.unregister("before-call.s3.PutObject", fail_third_put)
    assert publish(bucket, new).status == "published"
    assert read_latest("ravdess", bucket)["fingerprint"] == new["fingerprint"]


def test_incomplete_version_is_neither_loadable_nor_pointable(bucket):
    version = tiny_version()
    publish(bucket, version)
    bucket.client.delete_object(Bucket="ser-data", Key=object_key("folds", "ravdess", version["fingerprint"]))
    assert not manifest_exists("ravdess", version["fingerprint"], bucket)
    with pytest.raises(ManifestVersionNotFoundError, match="missing or incomplete.*available: none"):
        load_manifest_version("ravdess", version["fingerprint"], bucket)
    with pytest.raises(ManifestVersionNotFoundError, match="refusing to move latest"):
        write_latest("ravdess", {"fingerprint": version["fingerprint"]}, bucket)


def test_loading_a_corpus_never_ingested_says_what_to_run(bucket):
    with pytest.raises(ManifestVersionNotFoundError, match="run the ingest-savee deployment first"):
        load_manifest_version("savee", "latest", bucket)


def test_a_corrupted_manifest_is_rejected_on_load(bucket):
    version = tiny_version()
    publish(bucket, version)
    bad = version["manifest"].copy()
    bad.loc[3, "label"] = "bored"
    bucket.client.put_object(
        Bucket="ser-data",
        Key=object_key("manifest", "ravdess", version["fingerprint"]),
        Body=bad.to_parquet(index=False),
    )
    with pytest.raises(ManifestError, match="bored"):
        load_manifest_version("ravdess", "latest", bucket)


def test_unreachable_endpoint_is_a_storage_unavailable_error_naming_it():
    settings_ = StackSettings.from_env(
        {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    )
    bucket = DataBucket.from_settings(settings_, connect_timeout_s=1, max_attempts=1)
    with pytest.raises(StorageUnavailableError, match=r"http://127.0.0.1:9 unreachable during get_object"):
        read_latest("ravdess", bucket)


# ----------------------------------------------------------------------------- live SeaweedFS


@pytest.mark.integration
def test_publish_and_load_on_live_seaweedfs(live_bucket):
    old, new = tiny_version(), tiny_version(label_shift=1)
    assert publish(live_bucket, old).status == "published"
    assert publish(live_bucket, old).status == "unchanged"
    assert publish(live_bucket, new).previous == old["fingerprint"]
    manifest, folds, report = load_manifest_version("ravdess", "latest", live_bucket)
    assert manifest_fingerprint(manifest) == new["fingerprint"]
    assert set(folds["role"]) == {"train", "valid", "test"}
    assert list_manifest_versions("ravdess", live_bucket) == sorted([old["fingerprint"], new["fingerprint"]])
    pointer = json.loads(live_bucket.get_bytes(object_key("latest", "ravdess")))
    assert pointer["fingerprint"] == new["fingerprint"]
