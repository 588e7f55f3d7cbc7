"""Smoke test of the performance suite: `benchmarks/run.py --quick` on a tiny synthetic RAVDESS
tree writes perf.json with every ratio, both sides measured; `benchmarks/gpu_wavlm.py` runs its
CPU correctness path; `benchmarks/serve_load.py` serves a model and loads it with a few
requests. No timing assertions: figures are printed, not judged. Marked slow: the three
scripts take about 40-60 s together on two cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.corpora import ravdess_name, write_tone
from tests.fixtures.network import free_port

REPO = Path(__file__).resolve().parents[2]
EXPECTED_RATIOS = {
    "ingest decode, 1 worker(s)",
    "ser ingest command, 1 worker(s) / bare soundfile loop",
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
    run_script(
        "benchmarks/run.py", "--root", str(tiny_ravdess), "--out", str(out), "--quick", "--threads", "1"
    )
    report = json.loads((out / "perf.json").read_text())
    names = {r["name"] for r in report["ratios"]}
    assert EXPECTED_RATIOS <= names, sorted(names)
    for entry in report["ratios"]:
        check_ratio(entry)
    help_s = report["commands"]["help"]["median_s"]
    assert 0 < help_s and report["commands"]["help"]["met"] == (
        help_s <= report["commands"]["help"]["target_s"]
    )
    machine = report["machine"]
    assert (
        machine["torch_threads"] == 1
        and machine["usable_cores"] >= 1
        and len(machine["load_average_start"]) == 3
    )
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
    run_script(
        "benchmarks/gpu_wavlm.py", "--device", "cpu", "--tiny", "--repeats", "1", "--out", str(tmp_path)
    )
    report = json.loads((tmp_path / "gpu_wavlm.json").read_text())
    assert {r["name"] for r in report["ratios"]} == {"training step, WavLM", "inference overhead, WavLM"}
    for entry in report["ratios"]:
        check_ratio(entry)
    training = report["training"]
    assert (
        training["steps_per_s"] > 0
        and training["flops_per_step"] > training["flops_backbone_forward_backward"] > 0
    )
    assert training["share_of_peak_bf16"] is None  # no GPU peak for a CPU
    assert report["inference"]["rtf"] > 0 and report["backbone_config"]["model_type"] == "wavlm"


@pytest.mark.slow
def test_serve_load_answers_every_request_and_reports_latency_and_memory(tiny_ravdess, tmp_path):
    out = tmp_path / "serve"
    run_script(
        "benchmarks/serve_load.py",
        "--root",
        str(tiny_ravdess),
        "--out",
        str(out),
        "--requests",
        "6",
        "--clients",
        "2",
        "--port",
        str(free_port()),
    )
    report = json.loads((out / "serve.json").read_text())
    assert set(report["phases"]) == {"base64", "waveform"}
    for phase in report["phases"].values():
        assert (phase["requests"], phase["clients"], phase["errors"]) == (6, 2, 0), phase
        assert 0 < phase["latency_p50_ms"] <= phase["latency_p95_ms"] <= phase["latency_max_ms"]
        assert phase["throughput_rps"] > 0 and phase["request_kib_mean"] > 0
    assert report["phases"]["waveform"]["request_kib_mean"] > report["phases"]["base64"]["request_kib_mean"]
    memory = report["server_rss"]
    assert (
        memory["peak_during_load_mb"] >= memory["after_warmup_mb"] > 0 and memory["idle_after_start_mb"] > 0
    )
    assert "| base64 | 6 | 2 | 0 |" in (out / "serve.md").read_text()


@pytest.mark.slow
def test_feature_cache_quick_run_measures_both_sides(shared_ravdess, tmp_path):
    """benchmarks/feature_cache.py --quick: live and cached epochs both measured in one run, the ratio their quotient."""
    run_script(
        "benchmarks/feature_cache.py",
        "--root",
        str(shared_ravdess),
        "--out",
        str(tmp_path),
        "--quick",
        "--threads",
        "1",
    )
    bench = json.loads((tmp_path / "feature_cache.json").read_text())["bench"]
    live, cached = bench["median_epoch_s"]["live"], bench["median_epoch_s"]["cached"]
    assert live > 0 and cached > 0 and bench["fill_s"] > 0
    assert bench["ratio"] == pytest.approx(live / cached, rel=0.01)
    assert bench["meets_target"] == (live / cached >= bench["target"])
    assert f"{bench['ratio']}×" in (tmp_path / "feature_cache.md").read_text()
