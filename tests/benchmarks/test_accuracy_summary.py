"""benchmarks/accuracy.py's summary: finished runs of every variant under one folder are merged
(whichever process trained them), in VARIANTS order and fold order, with mean and population std
over folds equal to a reference computed here; unfinished runs are left out. No training."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("bench_accuracy", REPO / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(out: Path, variant: str, fold: int, ua: float, seconds: list[float]) -> None:
    run = out / variant / f"fold-{fold}"
    run.mkdir(parents=True)
    test = {"WA": ua + 0.01, "UA": ua, "macro_f1": ua - 0.01}
    result = {"fold": fold, "selected_epoch": len(seconds), "selection_rule": "rule", "valid": {"UA": ua / 2}, "test": test, "epochs": len(seconds)}
    (run / "result.json").write_text(json.dumps(result))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "seconds": s}) + "\n" for i, s in enumerate(seconds)))


def test_summary_merges_variants_in_order_with_reference_statistics(tmp_path, accuracy):
    ua = {"ce_only": [0.40, 0.50], "full": [0.30, 0.60, 0.45]}
    for variant, values in ua.items():
        for fold, value in reversed(list(enumerate(values))):
            write_run(tmp_path, variant, fold if fold < 2 else 10, value, [1.5, 2.5])
    (tmp_path / "no_eam" / "fold-0").mkdir(parents=True)  # still training: no result.json
    results = accuracy.collect(tmp_path)
    assert list(results) == ["full", "ce_only"]
    assert list(results["full"]) == [0, 1, 10]
    summary = accuracy.summarise(results)
    for variant, values in ua.items():
        pct = [100 * v for v in values]
        mean = sum(pct) / len(pct)
        std = math.sqrt(sum((v - mean) ** 2 for v in pct) / len(pct))
        row = summary[variant]
        assert row["UA"]["per_fold"] == pytest.approx(pct)
        assert row["UA"]["mean"] == pytest.approx(mean) and row["UA"]["std"] == pytest.approx(std)
        assert row["WA"]["mean"] == pytest.approx(mean + 1) and row["macro_f1"]["mean"] == pytest.approx(mean - 1)
        assert row["valid_UA_per_fold"] == pytest.approx([p / 2 for p in pct])
        assert row["train_seconds_per_fold"] == [4.0] * len(values) and row["selected_epoch_per_fold"] == [2] * len(values)
    meta = {"n_utterances": 10, "n_actors": 2, "seed": 0, "selection_rule": "rule", "overrides": {"train.epochs": 2}, "machine": "m"}
    table = accuracy.markdown(summary, meta)
    rows = [line for line in table.splitlines() if line.startswith("| full") or line.startswith("| ce_only")]
    assert rows[0].startswith("| full | 0,1,10 | ") and "30.0 / 60.0 / 45.0" in rows[0]
    assert rows[1].startswith("| ce_only | 0,1 | ") and f"{45.0:.1f} ± {5.0:.1f}" in rows[1]


def test_collect_refuses_nothing_finished(tmp_path, accuracy):
    with pytest.raises(FileNotFoundError, match="no finished run"):
        accuracy.write_summary(tmp_path, tmp_path, 0, {}, 1)
