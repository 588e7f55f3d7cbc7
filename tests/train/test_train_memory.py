"""Memory of a training process: the audio cache holds only what it serves, a split over the
in-memory budget is streamed, and freed blocks of a training step go back to the system
(ser_model/allocator.py). Figures of a whole fold: benchmarks/fold_memory.py, docs/RESULTS.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from ser_model.allocator import HUGE_PAGES_TUNABLE, heap_env, heap_policy
from ser_model.config_validation import ConfigError
from ser_model.data import UtteranceDataset, memory_cache_bytes
from ser_model.launch import torchrun_command, worker_command, worker_env
from ser_stack.process_settings import DEFAULT_MEMORY_CACHE_BYTES, ProcessSettings

SR = 16000
LABELS = ("neutral", "happy")
HEAP_ENV = ProcessSettings.variable("heap")
MEMORY_CACHE_ENV = ProcessSettings.variable("memory_cache_bytes")


def padded_tones(root: Path, count: int = 3) -> pd.DataFrame:
    """WAVs of 1 s of silence, a tone of 0.3–0.5 s, 1 s of silence; their manifest rows."""
    rows = []
    for i in range(count):
        t = np.arange(int((0.3 + 0.1 * i) * SR)) / SR
        tone = (0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype(np.float32)
        silence = np.zeros(SR, dtype=np.float32)
        wave = np.concatenate([silence, tone, silence])
        soundfile.write(root / f"u{i}.wav", wave, SR)
        rows.append(
            {"path": f"u{i}.wav", "utt_id": f"u{i}", "label": LABELS[i % 2], "duration_s": len(wave) / SR}
        )
    return pd.DataFrame(rows)


def dataset(rows: pd.DataFrame, root: Path, preload: bool | None = None) -> UtteranceDataset:
    return UtteranceDataset(
        rows,
        root,
        LABELS,
        sample_rate=SR,
        crop_seconds=None,
        random_crop=False,
        preload=preload,
        trim_db=40.0,
    )


def test_cached_audio_holds_only_the_trimmed_span(tmp_path):
    """Each cached wave owns its samples (no view keeping the whole decoded file alive), as many
    bytes as the trimmed utterance, and equals what the same dataset serves when streaming."""
    rows = padded_tones(tmp_path)
    cached, streamed = dataset(rows, tmp_path, preload=True), dataset(rows, tmp_path, preload=False)
    assert cached.in_memory and not streamed.in_memory
    for i in range(len(rows)):
        wave = cached._cache[i]
        assert wave.base is None and wave.flags.owndata
        assert wave.nbytes == len(wave) * 4 < rows["duration_s"][i] * SR * 4 / 2  # the silence is cut
        np.testing.assert_array_equal(cached[i][0].numpy(), streamed[i][0].numpy())


def test_split_over_the_memory_budget_is_streamed(tmp_path, monkeypatch):
    rows = padded_tones(tmp_path)
    samples_bytes = int(np.ceil(rows["duration_s"].to_numpy() * SR).sum()) * 4
    monkeypatch.setenv(MEMORY_CACHE_ENV, str(samples_bytes))
    assert dataset(rows, tmp_path).in_memory
    monkeypatch.setenv(MEMORY_CACHE_ENV, str(samples_bytes - 1))
    assert not dataset(rows, tmp_path).in_memory
    monkeypatch.setenv(MEMORY_CACHE_ENV, "0")
    assert not dataset(rows, tmp_path).in_memory


def test_memory_budget_setting():
    assert memory_cache_bytes({}) == DEFAULT_MEMORY_CACHE_BYTES
    assert memory_cache_bytes({MEMORY_CACHE_ENV: " 123 "}) == 123
    for bad in ("-1", "1G", "1.5"):
        with pytest.raises(
            ConfigError, match=rf"{MEMORY_CACHE_ENV}='{bad}': expected a non-negative number of bytes"
        ):
            memory_cache_bytes({MEMORY_CACHE_ENV: bad})


HEAP = r"""
import sys
import numpy as np
import psutil
from ser_model.allocator import bound_heap

bounded = sys.argv[1] == "bound" and bound_heap(env={"SER_HEAP": "bounded"})
process = psutil.Process()
big = np.ones(30 * 2**20 // 8)  # a freed 30 MiB block raises glibc's dynamic mmap threshold to 30 MiB
del big
before = process.memory_info().rss
blocks = [np.ones((2 * 2**20 + 4096 * i) // 8) for i in range(20)]  # a step's activations
pin = np.ones(8192)  # allocated after them and kept (a statistic, an optimizer state)
del blocks
print(bounded, (process.memory_info().rss - before) / 2**20)
"""


def retained_mib(how: str, repo_root: Path) -> tuple[bool, float]:
    done = subprocess.run(
        [sys.executable, "-c", HEAP, how], capture_output=True, text=True, cwd=repo_root, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    bounded, retained = done.stdout.split()
    return bounded == "True", float(retained)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_go_back_to_the_system(repo_root):
    """With the threshold fixed, 20 freed blocks of 2 MiB leave no resident memory behind a small
    block allocated after them; with glibc's dynamic threshold (the check can fail) the heap
    keeps their 40 MiB."""
    bounded, retained = retained_mib("bound", repo_root)
    assert bounded
    assert retained < 8, f"{retained:.1f} MiB retained after freeing 40 MiB in blocks of 2 MiB"
    bounded, retained = retained_mib("dynamic", repo_root)
    assert not bounded
    assert retained > 30, f"glibc's dynamic threshold retained only {retained:.1f} MiB"


def test_one_process_runs_without_a_launcher():
    """A fold of one process is the worker itself (a torchrun launcher would hold its own torch,
    about 0.5 GB); several processes, or a rendezvous across machines, go through torchrun."""
    args = ["--fold", "0", "--out", "x"]
    assert worker_command(1, args) == [sys.executable, "-m", "ser_model.worker", *args]
    assert worker_command(2, args) == torchrun_command(2, args)
    assert worker_command(1, args, rendezvous=(2, 0, "h:1")) == torchrun_command(
        1, args, rendezvous=(2, 0, "h:1")
    )


def test_heap_policy_is_read_and_checked():
    assert heap_policy({}) == "glibc"
    assert heap_policy({HEAP_ENV: "bounded"}) == "bounded"
    assert heap_policy({HEAP_ENV: " glibc "}) == "glibc"
    with pytest.raises(ConfigError, match=rf"{HEAP_ENV}='jemalloc': expected one of bounded, glibc"):
        heap_policy({HEAP_ENV: "jemalloc"})


def test_training_processes_start_with_huge_pages_only_under_the_bounded_policy():
    """The worker's environment gains glibc's huge-page tunable beside tunables already given,
    never a second hugetlb setting, and none under SER_HEAP=glibc."""
    bounded = {HEAP_ENV: "bounded"}
    assert worker_env(bounded)["GLIBC_TUNABLES"] == HUGE_PAGES_TUNABLE
    given = {**bounded, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert heap_env(given)["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{HUGE_PAGES_TUNABLE}"
    own = {**bounded, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert heap_env(own) == own
    assert "GLIBC_TUNABLES" not in worker_env({HEAP_ENV: "glibc"})
    assert "GLIBC_TUNABLES" not in worker_env({})  # glibc's own policy is the default


def ser_train_stderr(tmp_path: Path, heap: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", HEAP_ENV)}
    env[HEAP_ENV] = heap
    missing = tmp_path / "no-such-root"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ser_model.cli",
            "-v",
            "train",
            "--corpus",
            "ravdess",
            "--root",
            str(missing),
            "--fold",
            "0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_ser_train_from_a_shell_restarts_once_with_the_heap_settings(tmp_path):
    """`ser train` run from a shell restarts itself with the tunable (once: the restarted process
    has it) and then reports its bad root as usual; under SER_HEAP=glibc it does not restart; a bad
    SER_HEAP is a bad-input exit with the message."""
    bounded = ser_train_stderr(tmp_path, "bounded")
    assert bounded.stderr.count("restarting with GLIBC_TUNABLES") == 1, bounded.stderr[-2000:]
    assert bounded.returncode == 2 and "no-such-root" in bounded.stderr
    plain = ser_train_stderr(tmp_path, "glibc")
    assert "restarting" not in plain.stderr and plain.returncode == 2
    bad = ser_train_stderr(tmp_path, "tcmalloc")
    assert bad.returncode == 2 and f"{HEAP_ENV}='tcmalloc'" in bad.stderr
