"""Smoke test of the performance suite: `benchmarks/run.py --quick` on a tiny synthetic RAVDESS
tree writes perf.json with every ratio, both sides measured; and `benchmarks/gpu_wavlm.py`
runs its CPU correctness path. No timing assertions: figures are printed, not judged. Marked
slow: the two scripts take about 10-25 s together on two cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.corpora import ravdess_name, write_tone

REPO = Path(__file__).resolve().parents[2]
EXPECTED_RATIOS = {
    "ingest decode, 1 worker(s)",
    "inference overhead, fbank",
    "inference overhead, hf-tiny",
    "training step, fbank",
    "training step, hf-tiny",
}


def run_script(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def check_ratio(entry: dict) -> None:
    """Both sides positive and finite, the ratio their quotient, the verdict consistent with the target."""
    num, den = entry["numerator"]["value"], entry["denominator"]["value"]
    assert 0 < num < float("inf") and 0 < den < float("inf"), entry
    assert entry["ratio"] == pytest.approx(num / den)
    op, target = entry["target"]["op"], entry["target"]["value"]
    assert entry["met"] == (entry["ratio"] <= target if op == "<=" else entry["ratio"] >= target)


@pytest.fixture
def tiny_ravdess(tmp_path: Path) -> Path:
    """Five 1-second speech files of two actors in the RAVDESS layout."""
    root = tmp_path / "ravdess"
    for k in range(5):
        actor = 1 + k % 2
        write_tone(root / f"Actor_{actor:02d}" / f"{ravdess_name(1 + k, actor)}.flac", seconds=1.0)
    return root


@pytest.mark.slow
def test_quick_run_writes_every_ratio_with_both_sides_measured(tiny_ravdess, tmp_path):
    out = tmp_path / "perf"
    run_script("benchmarks/run.py", "--root", str(tiny_ravdess), "--out", str(out), "--quick", "--threads", "1")
    report = json.loads((out / "perf.json").read_text())
    names = {r["name"] for r in report["ratios"]}
    assert EXPECTED_RATIOS <= names, sorted(names)
    for entry in report["ratios"]:
        check_ratio(entry)
    machine = report["machine"]
    assert machine["torch_threads"] == 1 and machine["usable_cores"] >= 1 and len(machine["load_average_start"]) == 3
    for name in ("fbank", "hf-tiny"):
        training = report["training"][name]
        assert 0 < training["eam_share_of_step"] < 1 and 0 < training["data_share_of_iteration"] < 1
        assert training["flop_ratio"] > 1  # FLAM, head and losses add work on top of the backbone
    assert [r["backbone"] for r in report["rtf"]] == ["fbank", "hf-tiny"]
    assert all(r["rtf"] > 0 and r["audio_s"] == pytest.approx(2.0) for r in report["rtf"])
    assert all(m["rss_peak_mb"] >= m["rss_baseline_mb"] > 0 for m in report["memory"]["phases"].values())
    markdown = (out / "perf.md").read_text()
    for name in names:
        assert name in markdown
    assert report["machine"]["cpu_model"] in markdown


@pytest.mark.slow
def test_gpu_script_runs_its_cpu_correctness_path(tmp_path):
    run_script("benchmarks/gpu_wavlm.py", "--device", "cpu", "--tiny", "--repeats", "1", "--out", str(tmp_path))
    report = json.loads((tmp_path / "gpu_wavlm.json").read_text())
    assert {r["name"] for r in report["ratios"]} == {"training step, WavLM", "inference overhead, WavLM"}
    for entry in report["ratios"]:
        check_ratio(entry)
    training = report["training"]
    assert training["steps_per_s"] > 0 and training["flops_per_step"] > training["flops_backbone_forward_backward"] > 0
    assert training["share_of_peak_bf16"] is None  # no GPU peak for a CPU
    assert report["inference"]["rtf"] > 0 and report["backbone_config"]["model_type"] == "wavlm"
