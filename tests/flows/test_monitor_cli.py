"""`ser monitor --model models:/ser-ravdess@champion` on a local MLflow store (no server): the
champion fetched from the registry, its fold-mean UA read from its version's tags."""

from __future__ import annotations

import json

from flows.cli import main
from tests.fixtures.champions import register_champion
from tests.fixtures.corpora import make_ravdess


def test_ser_monitor_reads_the_champion_and_its_fold_mean_from_the_registry(
    local_mlflow, experiment_id, tmp_path, capsys
):
    then, now = tmp_path / "then", tmp_path / "now"
    make_ravdess(then, actors=range(1, 9), per_actor=2)
    make_ravdess(now, actors=range(1, 11), per_actor=2)
    for root in (then, now):
        assert main(["ingest", "ravdess", str(root), "--out", str(root) + "-out", "--no-progress"]) == 0
    register_champion(local_mlflow, experiment_id, tmp_path / "best", "ab" * 32, {0: 0.9, 1: 0.7})
    capsys.readouterr()
    argv = ["monitor", "--model", "models:/ser-ravdess@champion", "--manifest", f"{now}-out"]
    assert main([*argv, "--reference", f"{then}-out", "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["new_rows"] == 4 and report["champion_UA_mean"] == 0.8  # mean of the two folds' UA
    assert report["UA_gap"] == 0.8 - report["UA"]
    assert "vs fold-mean UA 0.8000" in capsys.readouterr().out
    assert main([*argv, "--reference", f"{then}-out", "--fold-mean-ua", "0.3"]) == 0
    assert "vs fold-mean UA 0.3000" in capsys.readouterr().out  # the flag's value wins over the registry's
