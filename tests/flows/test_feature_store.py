"""flows.feature_store: key folders of the feature cache copied between machines through S3.

Fast tests run against moto's in-memory S3 with key folders written by hand through
ser_model.feature_cache_folder (no torch: entries are opaque bytes to the store); the integration
test repeats the round trip on the live SeaweedFS of the stack, in a bucket of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from flows import feature_store
from flows.feature_store import PREFIX, local_feature_cache_dir, pull, push, shared_feature_cache
from flows.storage import DataBucket
from ser_model.config import ModelConfig, SERConfig, TrainConfig
from ser_model.feature_cache_folder import (
    INDEX_FILE,
    KEY_FILE,
    IndexEntry,
    entry_path,
    key_digest,
    merge_index,
    read_index,
    write_key_file,
)
from ser_stack.files import write_atomically
from ser_stack.settings import StackSettings

LABELS = ("angry", "happy", "neutral", "sad")
N_LAYERS = 5  # hidden states of the pretend backbone: the embedding output and 4 layers


def hf_config(
    source: str = "org/wavlm-a",
    mode: str = "frozen",
    trim_db: float | None = None,
    wave_norm: bool = True,
    cache: bool = True,
) -> SERConfig:
    model = ModelConfig(backbone=f"hf:{source}", backbone_mode=mode, trim_db=trim_db, wave_norm=wave_norm)
    return SERConfig(labels=LABELS, model=model, train=TrainConfig(feature_cache=cache))


def key_record(config: SERConfig, weights: str = "w0") -> dict:
    """key.json as ``FeatureCache`` writes it for ``config`` (the hashes stand in for the backbone's)."""
    from ser_model.feature_cache import cache_key

    mc = config.model
    layers = list(range(N_LAYERS)) if mc.layer_weights else [N_LAYERS - 1]
    backbone = {"model_type": "wavlm", "config_sha256": "c" * 64, "weights_sha256": weights}
    key = cache_key(backbone, layers, trim_db=mc.trim_db, wave_norm=mc.wave_norm)
    return {"key": key, "source": mc.hf_source}


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def entry_bytes(name: str, size: int = 64) -> bytes:
    """Stand-in content of an entry (the store never parses entries)."""
    return (hashlib.sha256(name.encode()).digest() * (size // 32 + 1))[:size]


def write_key_folder(root: Path, record: dict, names: list[str]) -> Path:
    """A key folder as ``FeatureCache`` leaves it: key.json, one entry per name, their index records."""
    folder = root / key_digest(record["key"])
    (folder / "entries").mkdir(parents=True, exist_ok=True)
    write_key_file(folder, record["key"], record["source"])
    records = {}
    for name in names:
        data = entry_bytes(name)
        write_atomically(entry_path(folder, sha(name)), data)
        records[sha(name)] = IndexEntry((1, len(data) // 4, 1), hashlib.sha256(data).hexdigest())
    merge_index(folder, record["key"], records)
    return folder


def local_state(root: Path) -> dict[str, dict[str, bytes]]:
    """Every key folder under ``root``: its index records and the bytes of the entries they name."""
    state = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        index = read_index(folder)
        state[folder.name] = {s: (index[s], entry_path(folder, s).read_bytes()) for s in index}
    return state


def remote_keys(bucket: DataBucket) -> dict[str, int]:
    return bucket.list_sizes(PREFIX)


def count_calls(bucket: DataBucket, operation: str) -> list[str]:
    """Record the URL path of every ``operation`` (e.g. PutObject) the client sends from now on."""
    seen: list[str] = []
    bucket.client.meta.events.register(
        f"before-call.s3.{operation}", lambda params, **_: seen.append(params["url_path"])
    )
    return seen


NAMES = ["utt-a", "utt-b", "utt-c"]


# ----------------------------------------------------------------------------- round trip


def test_push_then_pull_on_another_machine_gives_the_same_folder(bucket, tmp_path):
    config = hf_config()
    write_key_folder(tmp_path / "a", key_record(config), NAMES)
    assert push(config, tmp_path / "a", bucket) == len(NAMES)
    pulled = pull(config, tmp_path / "b", bucket)
    assert pulled.downloaded == len(NAMES) and pulled.corrupt == {
        key_digest(key_record(config)["key"]): frozenset()
    }
    assert local_state(tmp_path / "b") == local_state(tmp_path / "a")
    folder = tmp_path / "b" / pulled.folders[0]
    assert json.loads((folder / KEY_FILE).read_text()) == key_record(config)


def test_pull_takes_only_the_wanted_entries_missing_locally(bucket, tmp_path):
    config = hf_config()
    write_key_folder(tmp_path / "a", key_record(config), NAMES)
    push(config, tmp_path / "a", bucket)
    write_key_folder(tmp_path / "b", key_record(config), NAMES[:1])  # this machine already has utt-a
    gets = count_calls(bucket, "GetObject")
    pulled = pull(config, tmp_path / "b", bucket, wanted=[sha("utt-a"), sha("utt-b")])
    assert pulled.downloaded == 1
    entry_gets = [path for path in gets if "/entries/" in path]
    assert len(entry_gets) == 1 and sha("utt-b") in entry_gets[0]
    assert set(read_index(tmp_path / "b" / pulled.folders[0])) == {sha("utt-a"), sha("utt-b")}


def test_a_pulled_entry_is_read_back_by_the_local_index_of_a_folder_filled_meanwhile(bucket, tmp_path):
    """Pull merges into the local index under its lock: records the worker added are kept."""
    config = hf_config()
    write_key_folder(tmp_path / "a", key_record(config), NAMES[:2])
    push(config, tmp_path / "a", bucket)
    write_key_folder(tmp_path / "b", key_record(config), ["computed-here"])
    pull(config, tmp_path / "b", bucket)
    assert set(local_state(tmp_path / "b")[key_digest(key_record(config)["key"])]) == {
        sha(n) for n in [*NAMES[:2], "computed-here"]
    }


# ----------------------------------------------------------------------------- checks


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete"])
def test_a_corrupted_remote_entry_is_not_used_and_the_next_push_replaces_it(bucket, tmp_path, caplog, damage):
    config = hf_config()
    digest = key_digest(key_record(config)["key"])
    write_key_folder(tmp_path / "a", key_record(config), NAMES)
    push(config, tmp_path / "a", bucket)
    key = f"{PREFIX}{digest}/entries/{sha('utt-b')}.safetensors"
    good = bucket.get_bytes(key)
    if damage == "flip a byte":
        bucket.put_bytes(key, good[:-1] + bytes([good[-1] ^ 0xFF]), "application/octet-stream")
    elif damage == "truncate":
        bucket.put_bytes(key, good[: len(good) // 2], "application/octet-stream")
    else:
        bucket.client.delete_object(Bucket=bucket.name, Key=key)
    with caplog.at_level(logging.WARNING, logger="flows.feature_store"):
        pulled = pull(config, tmp_path / "b", bucket)
    assert pulled.downloaded == len(NAMES) - 1 and pulled.corrupt == {digest: frozenset({sha("utt-b")})}
    assert sha("utt-b") not in read_index(tmp_path / "b" / digest)
    assert not entry_path(tmp_path / "b" / digest, sha("utt-b")).exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and sha("utt-b") in warnings[0] and "recomputes" in warnings[0]
    # the worker recomputes it on machine b; b's push puts a good copy back
    write_key_folder(tmp_path / "b", key_record(config), ["utt-b"])
    assert push(config, tmp_path / "b", bucket, pulled.corrupt) == 1
    assert bucket.get_bytes(key) == good
    assert pull(config, tmp_path / "c", bucket).corrupt == {digest: frozenset()}


def test_push_uploads_no_entry_that_fails_its_local_check(bucket, tmp_path, caplog):
    config = hf_config()
    folder = write_key_folder(tmp_path / "a", key_record(config), NAMES)
    entry_path(folder, sha("utt-c")).write_bytes(b"damaged on this disk")
    with caplog.at_level(logging.WARNING, logger="flows.feature_store"):
        assert push(config, tmp_path / "a", bucket) == 2
    assert any(sha("utt-c") in r.getMessage() and "not uploaded" in r.getMessage() for r in caplog.records)
    remote_index = json.loads(bucket.get_bytes(f"{PREFIX}{folder.name}/{INDEX_FILE}"))
    assert set(remote_index["entries"]) == {sha("utt-a"), sha("utt-b")}
    assert f"{PREFIX}{folder.name}/entries/{sha('utt-c')}.safetensors" not in remote_keys(bucket)


def test_a_remote_folder_whose_key_is_not_its_name_is_ignored(bucket, tmp_path, caplog):
    config = hf_config()
    folder = write_key_folder(tmp_path / "a", key_record(config), NAMES)
    push(config, tmp_path / "a", bucket)
    impostor = "0123456789abcdef"
    for key in remote_keys(bucket):
        bucket.put_bytes(
            key.replace(folder.name, impostor), bucket.get_bytes(key), "application/octet-stream"
        )
    with caplog.at_level(logging.WARNING, logger="flows.feature_store"):
        pulled = pull(config, tmp_path / "b", bucket)
    assert pulled.folders == (folder.name,)
    assert not (tmp_path / "b" / impostor).exists()
    assert any(impostor in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# ----------------------------------------------------------------------------- which keys


@pytest.mark.parametrize(
    "other",
    [
        {"source": "org/hubert-b"},
        {"mode": "weighted_sum"},
        {"trim_db": 30.0},
        {"wave_norm": False},
    ],
    ids=["another backbone", "another layer set", "another trimming", "another normalisation"],
)
def test_a_key_of_another_backbone_or_view_is_not_downloaded(bucket, tmp_path, other):
    mine, theirs = hf_config(), hf_config(**other)
    write_key_folder(tmp_path / "a", key_record(mine), NAMES[:1])
    theirs_folder = write_key_folder(tmp_path / "a", key_record(theirs, weights="w1"), NAMES)
    push(mine, tmp_path / "a", bucket)
    push(theirs, tmp_path / "a", bucket)
    gets = count_calls(bucket, "GetObject")
    pulled = pull(mine, tmp_path / "b", bucket)
    assert pulled.folders == (key_digest(key_record(mine)["key"]),)
    assert [p for p in gets if theirs_folder.name in p] == [f"/{PREFIX}{theirs_folder.name}/{KEY_FILE}"]
    assert not (tmp_path / "b" / theirs_folder.name).exists()


def test_other_weights_of_the_same_source_are_downloaded_for_the_worker_to_judge(bucket, tmp_path):
    """The store cannot hash weights without loading them: both keys of one source are candidates."""
    config = hf_config()
    write_key_folder(tmp_path / "a", key_record(config, weights="w0"), NAMES[:1])
    write_key_folder(tmp_path / "a", key_record(config, weights="w1"), NAMES[1:])
    push(config, tmp_path / "a", bucket)
    assert len(pull(config, tmp_path / "b", bucket).folders) == 2


def test_push_sends_only_the_folders_of_the_config(bucket, tmp_path):
    mine, theirs = hf_config(), hf_config(source="org/hubert-b")
    write_key_folder(tmp_path / "a", key_record(mine), NAMES[:1])
    theirs_folder = write_key_folder(tmp_path / "a", key_record(theirs, weights="w1"), NAMES)
    push(mine, tmp_path / "a", bucket)
    assert remote_keys(bucket) and not [k for k in remote_keys(bucket) if theirs_folder.name in k]


# ----------------------------------------------------------------------------- push


def test_push_is_idempotent(bucket, tmp_path):
    config = hf_config()
    write_key_folder(tmp_path / "a", key_record(config), NAMES)
    push(config, tmp_path / "a", bucket)
    before = {key: bucket.get_bytes(key) for key in remote_keys(bucket)}
    puts = count_calls(bucket, "PutObject")
    assert push(config, tmp_path / "a", bucket) == 0
    assert puts == []
    assert {key: bucket.get_bytes(key) for key in remote_keys(bucket)} == before


def test_pushes_of_two_machines_merge_into_the_union(bucket, tmp_path):
    config = hf_config()
    digest = key_digest(key_record(config)["key"])
    write_key_folder(tmp_path / "a", key_record(config), ["utt-a", "utt-b"])
    write_key_folder(tmp_path / "b", key_record(config), ["utt-b", "utt-c"])
    push(config, tmp_path / "a", bucket)
    puts = count_calls(bucket, "PutObject")
    assert push(config, tmp_path / "b", bucket) == 1  # utt-b is already there
    assert not [p for p in puts if sha("utt-b") in p]
    remote_index = json.loads(bucket.get_bytes(f"{PREFIX}{digest}/{INDEX_FILE}"))
    assert set(remote_index["entries"]) == {sha(n) for n in ("utt-a", "utt-b", "utt-c")}
    pull(config, tmp_path / "c", bucket)
    expected = {**local_state(tmp_path / "a")[digest], **local_state(tmp_path / "b")[digest]}
    assert local_state(tmp_path / "c")[digest] == expected


# ----------------------------------------------------------------------------- around the worker


def test_the_machine_folder_is_the_environment_s_or_in_the_state_folder(tmp_path):
    settings = StackSettings.from_env({"SER_STATE_DIR": str(tmp_path / "state")})
    assert local_feature_cache_dir(settings, {}) == tmp_path / "state" / "feature-cache"
    assert (
        local_feature_cache_dir(settings, {"SER_FEATURE_CACHE_DIR": str(tmp_path / "big-disk")})
        == tmp_path / "big-disk"
    )


@pytest.fixture
def machine(bucket, tmp_path, monkeypatch):
    """Settings of a machine whose feature-cache folder is tmp_path/machine, on the moto bucket."""
    monkeypatch.setenv("SER_FEATURE_CACHE_DIR", str(tmp_path / "machine"))
    monkeypatch.setattr(feature_store.DataBucket, "from_settings", classmethod(lambda cls, settings: bucket))
    return StackSettings.from_env({"SER_STATE_DIR": str(tmp_path / "state")})


def test_shared_cache_pulls_before_and_pushes_after_the_worker(bucket, machine, tmp_path):
    config = hf_config()
    digest = key_digest(key_record(config)["key"])
    write_key_folder(tmp_path / "elsewhere", key_record(config), ["utt-a"])
    push(config, tmp_path / "elsewhere", bucket)
    with shared_feature_cache(config, machine) as folder:
        assert folder == tmp_path / "machine"
        assert set(read_index(folder / digest)) == {sha("utt-a")}
        write_key_folder(folder, key_record(config), ["utt-b"])  # what the worker computes
    remote_index = json.loads(bucket.get_bytes(f"{PREFIX}{digest}/{INDEX_FILE}"))
    assert set(remote_index["entries"]) == {sha("utt-a"), sha("utt-b")}


def test_shared_cache_pushes_nothing_when_the_worker_fails(bucket, machine):
    config = hf_config()
    with pytest.raises(RuntimeError, match="worker died"):
        with shared_feature_cache(config, machine) as folder:
            write_key_folder(folder, key_record(config), ["utt-a"])
            raise RuntimeError("worker died")
    assert remote_keys(bucket) == {}


@pytest.mark.parametrize(
    "config", [hf_config(mode="finetune"), hf_config(cache=False)], ids=["finetune", "cache off"]
)
def test_without_a_feature_cache_the_worker_gets_none_and_s3_is_not_touched(bucket, machine, config):
    lists = count_calls(bucket, "ListObjectsV2")
    with shared_feature_cache(config, machine) as folder:
        assert folder is None
    assert lists == [] and remote_keys(bucket) == {}


def test_an_unreachable_s3_costs_a_warning_not_the_fold(tmp_path, monkeypatch, caplog):
    settings = StackSettings.from_env(
        {
            "SER_STATE_DIR": str(tmp_path / "state"),
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
        }
    )
    monkeypatch.setenv("SER_FEATURE_CACHE_DIR", str(tmp_path / "machine"))
    config = hf_config()
    with caplog.at_level(logging.WARNING, logger="flows.feature_store"):
        with shared_feature_cache(config, settings) as folder:
            write_key_folder(folder, key_record(config), ["utt-a"])
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2 and "pull" in messages[0] and "push" in messages[1]
    assert all("127.0.0.1:9" in m for m in messages)


# ----------------------------------------------------------------------------- live SeaweedFS


@pytest.mark.integration
def test_push_and_pull_on_live_seaweedfs(live_bucket, tmp_path):
    config = hf_config()
    digest = key_digest(key_record(config)["key"])
    write_key_folder(tmp_path / "a", key_record(config), NAMES)
    write_key_folder(tmp_path / "a", key_record(hf_config(source="org/hubert-b"), weights="w1"), NAMES)
    assert push(config, tmp_path / "a", live_bucket) == len(NAMES)
    assert push(config, tmp_path / "a", live_bucket) == 0
    pulled = pull(config, tmp_path / "b", live_bucket)
    assert pulled.folders == (digest,) and pulled.corrupt == {digest: frozenset()}
    assert local_state(tmp_path / "b") == {digest: local_state(tmp_path / "a")[digest]}
    key = f"{PREFIX}{digest}/entries/{sha('utt-a')}.safetensors"
    live_bucket.put_bytes(key, b"truncated", "application/octet-stream")
    assert pull(config, tmp_path / "c", live_bucket).corrupt == {digest: frozenset({sha("utt-a")})}
