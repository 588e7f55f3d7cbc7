"""The files of a feature cache on disk, torch-free: ``ser_model.feature_cache`` fills a key
folder, ``flows.feature_store`` copies key folders to and from S3; both read and write them here.

    <root>/<digest>/key.json                    {"key": <the key, in full>, "source": <hub id or folder>}
    <root>/<digest>/index.json                  {"key": <the key>, "entries": {<audio sha256>: {"shape": [K', T, D], "checksum": <file sha256>}}}
    <root>/<digest>/entries/<audio sha256>.safetensors
    <root>/<digest>/.lock                       index.json is rewritten only under an exclusive flock on it

``digest`` is :func:`key_digest` of the key (what the key holds: ``ser_model.feature_cache``).
The source in key.json is for the reader (and for :func:`key_may_fit`), not part of the key.
Files are written through a temporary file and ``os.replace`` (``ser_stack.files.write_atomically``),
so a reader sees a whole file or none, and index updates merge under the lock
(:func:`merge_index`), so processes filling one folder at once keep each other's records.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ser_model.config import SERConfig
from ser_stack.files import write_atomically

FEATURE_CACHE_DIR = "feature-cache"
"""The cache folder's name: beside a run's fold folders (``fit``: ``out_dir.parent / FEATURE_CACHE_DIR``), in
the stack's state folder (``flows.feature_store``), and the S3 prefix the folds share it under."""

__all__ = [
    "FEATURE_CACHE_DIR",
    "ENTRIES_DIR",
    "INDEX_FILE",
    "KEY_FILE",
    "IndexEntry",
    "entry_path",
    "key_digest",
    "key_may_fit",
    "locked",
    "merge_index",
    "read_index",
    "sha256_json",
    "write_key_file",
]

log = logging.getLogger(__name__)

KEY_FILE = "key.json"
INDEX_FILE = "index.json"
ENTRIES_DIR = "entries"
LOCK_FILE = ".lock"


def sha256_json(value: Any) -> str:
    """sha256 of ``value`` as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def key_digest(key: Mapping[str, Any]) -> str:
    """The folder name of a key: the first 16 hex digits of :func:`sha256_json` of it."""
    return sha256_json(key)[:16]


def write_key_file(folder: Path, key: Mapping[str, Any], source: str) -> None:
    """``folder``'s key.json: ``{"key": key, "source": source}``, where ``source`` (the hub id or
    local folder the backbone came from) is for readers and the flows' pull, not part of the key."""
    write_atomically(folder / KEY_FILE, json.dumps({"key": dict(key), "source": source}, indent=2) + "\n")


def entry_path(folder: Path, sha256: str) -> Path:
    """The entry file of the utterance whose audio has this sha256."""
    return folder / ENTRIES_DIR / f"{sha256}.safetensors"


@dataclass(frozen=True)
class IndexEntry:
    """An index record: the entry's shape (K', T, D) and the sha256 of its file."""

    shape: tuple[int, ...]
    checksum: str


def read_index(folder: Path) -> dict[str, IndexEntry]:
    """The records of ``folder``'s index.json; {} when it is absent, and {} with a warning when it is unreadable."""
    path = folder / INDEX_FILE
    if not path.is_file():
        return {}
    try:
        return index_from_json(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as err:
        log.warning("feature cache %s: index.json is unreadable (%s); every entry is recomputed", folder, err)
        return {}


def index_from_json(raw: Any) -> dict[str, IndexEntry]:
    """The records of a parsed index.json; KeyError, TypeError or AttributeError when it is malformed."""
    return {
        sha: IndexEntry(tuple(int(n) for n in e["shape"]), str(e["checksum"]))
        for sha, e in raw["entries"].items()
    }


def index_json(key: Mapping[str, Any], entries: Mapping[str, IndexEntry]) -> bytes:
    """index.json of ``key`` listing ``entries``, in sha256 order."""
    records = {sha: {"shape": list(e.shape), "checksum": e.checksum} for sha, e in sorted(entries.items())}
    return (json.dumps({"key": key, "entries": records}, indent=1) + "\n").encode()


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock of a key folder (``.lock``, flock): index.json changes only under it."""
    with open(folder / LOCK_FILE, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def merge_index(folder: Path, key: Mapping[str, Any], new: Mapping[str, IndexEntry]) -> None:
    """Add ``new`` records to ``folder``'s index.json, under the lock (other processes may add theirs)."""
    if not new:
        return
    with locked(folder):
        write_atomically(folder / INDEX_FILE, index_json(key, {**read_index(folder), **new}))


def key_may_fit(record: Mapping[str, Any], config: SERConfig) -> bool:
    """Whether a key.json ``record`` can be the key ``fit`` uses for ``config``, judged without
    loading the backbone: the same source (``ModelConfig.hf_source``, a local folder as
    ``HFBackbone.from_pretrained`` names it), the same layer set (every hidden state with layer
    weights, the last alone without) and the same view (``trim_db``, ``wave_norm``).

    Not judged: the backbone's config and weights hashes, the precision, the sample rate, the
    crop and the format, which need the backbone or torch; the worker checks the whole key, so
    a record that passes here and is not the worker's key only costs a download.
    """
    try:
        source, view, layers = record["source"], record["key"]["view"], record["key"]["layers"]
    except (KeyError, TypeError):
        return False
    if not (isinstance(view, dict) and isinstance(layers, list)):
        return False
    mc = config.model
    local = Path(mc.hf_source).expanduser()
    all_layers = len(layers) > 1 and layers == list(range(len(layers)))
    return (
        source == (str(local) if local.is_dir() else mc.hf_source)
        and (all_layers if mc.layer_weights else len(layers) == 1)
        and view.get("trim_db") == mc.trim_db
        and view.get("wave_norm") == mc.wave_norm
    )
