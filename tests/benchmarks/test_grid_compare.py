"""benchmarks/grid_compare.py: one variant of two grids paired run for run by (seed, fold), with the
paired difference new − old equal to a reference computed here; runs only one side finished are
left out; a grid without common runs is an error, not an empty table."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from tests.fixtures.scripts import load_script


@pytest.fixture(scope="module")
def compare():
    return load_script("benchmarks/grid_compare.py", "bench_grid_compare")


def write_run(out, seed: int, fold: int, ua: float, ece: float | None = None, variant: str = "full") -> None:
    run = out / variant / f"seed-{seed}" / f"fold-{fold}"
    run.mkdir(parents=True)
    result = {"fold": fold, "test": {"WA": ua, "UA": ua, "macro_f1": ua}}
    if ece is not None:
        result["calibration"] = {"ECE_after": ece}
    (run / "result.json").write_text(json.dumps(result))


def test_runs_pair_by_seed_and_fold_and_the_difference_is_new_minus_old(tmp_path, compare, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    old_ua = {(0, 0): 0.60, (0, 1): 0.55, (1, 0): 0.50, (1, 3): 0.40}
    new_ua = {(0, 0): 0.62, (0, 1): 0.50, (1, 0): 0.53, (0, 4): 0.70}
    for (seed, fold), ua in old_ua.items():
        write_run(old, seed, fold, ua, ece=0.10)
    for (seed, fold), ua in new_ua.items():
        write_run(new, seed, fold, ua, ece=0.08 if fold else None)
    write_run(new, 0, 2, 0.9, variant="no_flam")  # another variant: never paired with full

    result = compare.comparison(old, new, "full")
    common = sorted(set(old_ua) & set(new_ua))
    assert [(s, f) for s, f, _, _ in result["pairs"]] == common
    d = [100 * (new_ua[k] - old_ua[k]) for k in common]
    assert result["UA"]["n"] == 3 and result["UA"]["mean"] == pytest.approx(statistics.fmean(d))
    assert result["UA"]["se"] == pytest.approx(statistics.stdev(d) / math.sqrt(3))
    assert (result["UA"]["ahead"], result["UA"]["behind"]) == (2, 1)
    assert result["ECE_after"]["n"] == 1 and result["ECE_after"]["mean"] == pytest.approx(-0.02)

    assert compare.main([str(old), str(new)]) == 0
    printed = capsys.readouterr().out
    assert "| 0 | 1 | 55.0 | 50.0 | -5.0 |" in printed and "n=3, 2 ahead, 1 behind" in printed


def test_no_common_run_or_a_missing_folder_is_an_error(tmp_path, compare, capsys):
    write_run(tmp_path / "old", 0, 0, 0.5)
    write_run(tmp_path / "new", 1, 0, 0.5)
    assert compare.main([str(tmp_path / "old"), str(tmp_path / "new")]) == 1
    assert "no (full, seed, fold) run finished in both grids" in capsys.readouterr().err
    assert compare.main([str(tmp_path / "old"), str(tmp_path / "absent")]) == 2
    assert "grid folder" in capsys.readouterr().err
