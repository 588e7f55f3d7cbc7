"""benchmarks/fine_tuning.py without training: the small dataset's table (renamed labels and
speakers, audio copied under its folder) ingests with the renamed classes, and the summary's
figures equal references computed here from the runs' result.json files."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.fixtures.corpora import make_ravdess
from tests.fixtures.scripts import load_script


@pytest.fixture(scope="module")
def fine_tuning():
    return load_script("benchmarks/fine_tuning.py", "bench_fine_tuning")


def test_the_small_table_renames_labels_and_speakers_and_ingests_as_those(fine_tuning, tmp_path):
    from data_contracts.table_ingest import run_table_ingest

    make_ravdess(tmp_path / "ravdess", actors=range(13, 17), per_actor=8)
    table = fine_tuning.write_table(tmp_path / "ravdess", tmp_path / "small", range(13, 17), renamed=True)
    rows = table.read_text().splitlines()[1:]
    assert len(rows) == 4 * 8 and not (tmp_path / "small" / "audio" / "Actor_13").exists()
    assert {row.split(",")[2] for row in rows} == {"person-1", "person-2", "person-3", "person-4"}
    result = run_table_ingest(str(table), "rav-small", workers=1, progress=False)
    assert list(result.report["labels"]) == sorted(fine_tuning.RENAMED.values())


def test_the_summary_pairs_each_fold_and_seed_and_says_what_was_copied(fine_tuning, tmp_path):
    ua = {
        ("scratch", 0, 0): 0.40,
        ("scratch", 0, 1): 0.35,
        ("champion", 0, 0): 0.50,
        ("champion", 0, 1): 0.48,
    }
    ua[("scratch", 1, 0)] = 0.30  # its champion run has not finished: left out of the pairs
    for (start, fold, seed), value in ua.items():
        folder = tmp_path / fine_tuning.run_name(fold, start, seed)
        folder.mkdir()
        init = {"copied": ["backbone", "flam"], "head": "new"} if start == "champion" else None
        (folder / "result.json").write_text(json.dumps({"test": {"UA": value}, "init": init}))
    result = fine_tuning.summary(tmp_path, [0, 1], [0, 1])
    scratch = [40.0, 30.0, 35.0]
    assert result["starts"]["scratch"]["mean"] == pytest.approx(statistics.mean(scratch))
    assert result["starts"]["scratch"]["sd"] == pytest.approx(statistics.stdev(scratch))
    d = [50.0 - 40.0, 48.0 - 35.0]
    pair = result["champion_minus_scratch"]
    assert (pair["n"], pair["ahead"]) == (2, 2) and pair["mean"] == pytest.approx(statistics.mean(d))
    assert pair["se"] == pytest.approx(statistics.stdev(d) / 2**0.5)
    assert result["copied"] == [(("backbone", "flam"), "new")]
