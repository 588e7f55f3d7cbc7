"""Multi-node torchrun, for real on loopback (issue 14): two launchers with ``--nnodes=2`` and a
c10d rendezvous on 127.0.0.1 train one fold with gloo, and the result equals a single-node run
with 2 processes (same world size, data order and seed → same metrics within float tolerance).
The command lines are the fold-launch contract's (ser_model/launch.py :func:`torchrun_command`)."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from ser_model.launch import FoldJob, read_result, torchrun_command, worker_env
from tests.train.synthetic import tiny_config, write_synthetic_corpus

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job(tmp_path, out: str) -> FoldJob:
    manifest, folds = write_synthetic_corpus(tmp_path / "audio", n_speakers=4, per_class=2)
    tiny_config(epochs=2).to_json(tmp_path / "config.json")
    manifest.to_parquet(tmp_path / "manifest.parquet")
    folds.to_parquet(tmp_path / "folds.parquet")
    return FoldJob(
        "ravdess",
        0,
        tmp_path / "config.json",
        tmp_path / "manifest.parquet",
        tmp_path / "folds.parquet",
        str(tmp_path / "audio"),
        tmp_path / out,
        epochs=2,
    )


def launch(commands: list[list[str]]) -> list[str]:
    env = {**worker_env(), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def test_two_loopback_nodes_train_a_fold_like_one_node_with_two_processes(tmp_path):
    single = job(tmp_path, "single")
    launch([torchrun_command(2, single.worker_args())])
    multi = job(tmp_path, "multi")
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [torchrun_command(1, multi.worker_args(), rendezvous=(2, rank, endpoint)) for rank in (0, 1)]
    launch([[*c[:3], "--local-addr=127.0.0.1", *c[3:]] for c in nodes])
    a, b = read_result(single.out_dir), read_result(multi.out_dir)
    assert a["selected_epoch"] == b["selected_epoch"]
    for split in ("valid", "test"):
        for metric in ("WA", "UA", "macro_f1"):
            assert b[split][metric] == pytest.approx(a[split][metric], abs=1e-6), (split, metric)
        assert b[split]["confusion"] == a[split]["confusion"]
    curves = [
        [r["train"]["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
        for d in (single.out_dir, multi.out_dir)
    ]
    assert curves[1] == pytest.approx(curves[0], rel=1e-5), "same data order and seed give the same losses"
