"""Ingest throughput on the real RAVDESS subset: 1 worker vs all cores, and bare soundfile decode.

    python benchmarks/ingest_throughput.py [--root ../shared/data/ravdess] [--limit-actors N]

Prints files/s and audio seconds/s for each, and the ratio of ingest to bare decode (the cost of
parsing, hashing, checks, schema validation and folds). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import soundfile as sf

from data_contracts.ingest import run_ingest
from ser_stack.settings import SHARED_RAVDESS

DEFAULT_ROOT = SHARED_RAVDESS


def subset(root: Path, actors: int | None, scratch: Path) -> Path:
    """`root` itself, or a scratch copy of its first `actors` actor folders (symlinks leading
    outside a corpus root are refused by design, so the subset is copied)."""
    if actors is None:
        return root
    for folder in sorted(root.glob("Actor_*"))[:actors]:
        (scratch / folder.name).mkdir()
        for path in folder.iterdir():
            shutil.copyfile(path, scratch / folder.name / path.name)
    return scratch


def bare_decode(root: Path) -> tuple[int, float]:
    """(files, audio seconds) of decoding every audio file under `root` with soundfile alone."""
    files, seconds = 0, 0.0
    for path in sorted(root.glob("Actor_*/*")):
        if path.suffix in (".wav", ".flac"):
            audio, rate = sf.read(path, dtype="float32")
            files, seconds = files + 1, seconds + len(audio) / rate
    return files, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument(
        "--limit-actors",
        type=int,
        default=None,
        help="use only the first N actors (at least 8: the fold protocol needs two groups of 4)",
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ravdess-subset-"))
    try:
        root = subset(args.root.resolve(), args.limit_actors, scratch)
        start = time.perf_counter()
        files, seconds = bare_decode(root)
        bare = time.perf_counter() - start
        print(
            f"bare soundfile decode: {files} files, {seconds:.0f} s of audio in {bare:.2f} s: "
            f"{files / bare:.0f} files/s, {seconds / bare:.0f} audio s/s"
        )
        cores = os.cpu_count() or 1
        for workers in sorted({1, cores}):
            start = time.perf_counter()
            result = run_ingest("ravdess", root, workers=workers, progress=False)
            took = time.perf_counter() - start
            audio = float(result.manifest["duration_s"].sum())
            n = len(result.manifest) + len(result.quarantine)
            print(
                f"ingest, {workers} worker(s): {n} files in {took:.2f} s: {n / took:.0f} files/s, "
                f"{audio / took:.0f} audio s/s, ratio to bare decode {took / bare:.2f}"
            )
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
