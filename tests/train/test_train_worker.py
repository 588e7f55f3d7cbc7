"""The torchrun entry point: two CPU processes on gloo, and the bad-data exit code."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from ser_model.worker import BAD_CONFIG_EXIT, BAD_DATA_EXIT, main
from tests.train.synthetic import tiny_config, write_fold_job

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_two_gloo_processes_under_torchrun_train_a_fold(synthetic_corpus, tmp_path):
    root, manifest, folds = synthetic_corpus
    out = tmp_path / "out"
    job = write_fold_job(tmp_path, manifest, folds, tiny_config(epochs=2), 2, root, out)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ser_model.worker",
        *job.worker_args(),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["test"]["n"] == 6 and result["valid"]["n"] == 6, "every utterance counted once across ranks"
    assert result["speakers"]["test"] == ["S02"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "best" / "model.safetensors").is_file()


def test_bad_data_exits_with_code_3(synthetic_corpus, tmp_path):
    root, manifest, folds = synthetic_corpus
    broken = manifest.assign(path=manifest["path"].str.replace(".wav", ".missing.wav"))
    job = write_fold_job(tmp_path, broken, folds, tiny_config(epochs=1), 0, root, tmp_path / "out")
    assert main(job.worker_args()) == BAD_DATA_EXIT
    assert main(dataclasses.replace(job, fold=7).worker_args()) == BAD_DATA_EXIT


def test_resuming_under_another_configuration_exits_as_bad_config(synthetic_corpus, tmp_path):
    """Retrying cannot help when the checkpoint in --out was trained with another config: exit 2, not a crash."""
    root, manifest, folds = synthetic_corpus
    out = tmp_path / "out"
    first = write_fold_job(tmp_path / "a", manifest, folds, tiny_config(epochs=1), 0, root, out)
    other = write_fold_job(tmp_path / "b", manifest, folds, tiny_config(epochs=1, lr=1e-2), 0, root, out)
    assert main(first.worker_args()) == 0
    assert main(other.worker_args()) == BAD_CONFIG_EXIT


def test_the_worker_reads_back_every_argument_the_launcher_writes(tmp_path):
    """One list of flags (ser_model.launch.WORKER_FLAGS) on both sides of the fold-launch contract."""
    from ser_model.launch import WORKER_FLAGS, FoldJob
    from ser_model.worker import build_parser

    for cache in (tmp_path / "cache", None):
        job = FoldJob(
            corpus="ravdess",
            fold=-1,
            config_path=tmp_path / "c.json",
            manifest_path=tmp_path / "m.parquet",
            folds_path=tmp_path / "f.parquet",
            audio_root="s3://bucket/ravdess",
            out_dir=tmp_path / "release",
            epochs=2,
            feature_cache_dir=cache,
        )
        args = build_parser().parse_args(job.worker_args())
        assert (args.config, args.manifest, args.folds, args.fold, args.audio_root, args.out) == (
            str(job.config_path),
            str(job.manifest_path),
            str(job.folds_path),
            -1,
            "s3://bucket/ravdess",
            str(job.out_dir),
        )
        assert args.feature_cache == (None if cache is None else str(cache))
        assert not args.no_resume
    dests = {action.dest for action in build_parser()._actions}
    assert {flag.flag.removeprefix("--").replace("-", "_") for flag in WORKER_FLAGS} <= dests
