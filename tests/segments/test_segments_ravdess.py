"""Issue 21 "Done when", on real RAVDESS: 8 fold-0 test utterances joined with 1.5 s of silence give
6 to 12 segments through `ser predict FILE --segments --json`, each utterance's middle inside exactly
one segment; --csv and --plot write the same segments as a table and a picture."""

from __future__ import annotations

import csv
import io
import json

import pytest

from data_contracts.labels import LABELS
from ser_model.cli import main
from tests.fixtures.recordings import fold0_test_files, write_joined

pytestmark = pytest.mark.slow


def test_eight_joined_utterances_give_six_to_twelve_segments_each_middle_in_one(
    shared_ravdess, ravdess_checkpoint, tmp_path, capsys
):
    files = fold0_test_files(shared_ravdess, 8)
    assert len({f.parent.name for f in files}) == 4
    recording = tmp_path / "joined.flac"
    spans = write_joined(files, recording, gap_s=1.5)

    assert main(["predict", str(recording), "--segments", "--json", "--model", str(ravdess_checkpoint)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert 6 <= len(records) <= 12, records
    for record in records:
        assert record["file"] == str(recording)
        assert 0 <= record["start_s"] < record["end_s"] <= spans[-1][1]
        assert record["label"] in LABELS["ravdess"]
        probabilities = [record[f"p_{c}"] for c in LABELS["ravdess"]]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert record["label"] == LABELS["ravdess"][probabilities.index(max(probabilities))]
    assert all(a["end_s"] <= b["start_s"] for a, b in zip(records, records[1:]))
    for start, end in spans:
        middle = (start + end) / 2
        assert sum(r["start_s"] <= middle < r["end_s"] for r in records) == 1, (middle, records)

    picture = tmp_path / "timeline.png"
    assert (
        main(
            [
                "predict",
                str(recording),
                "--segments",
                "--csv",
                "--plot",
                str(picture),
                "--model",
                str(ravdess_checkpoint),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(float(r["start_s"]), float(r["end_s"]), r["label"]) for r in rows] == [
        (r["start_s"], r["end_s"], r["label"]) for r in records
    ]
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_segment_options_without_segments_and_bad_settings_exit_2_saying_why(
    shared_ravdess, ravdess_checkpoint, capsys
):
    (file,) = fold0_test_files(shared_ravdess, 1)
    model = ["--model", str(ravdess_checkpoint)]
    assert main(["predict", str(file), "--csv", *model]) == 2
    assert "ser predict --csv: needs --segments" in capsys.readouterr().err
    assert main(["predict", str(file), "--segments", "--segment-set", "hop_s=9", *model]) == 2
    assert "SegmentConfig.hop_s: got 9.0 > window_s 4.0" in capsys.readouterr().err
    assert main(["predict", str(file), "--segments", "--segment-set", "hop", *model]) == 2
    assert "--segment-set 'hop': expected key=value, e.g. window_s=6" in capsys.readouterr().err
    assert main(["predict", str(file), "--segments", "--model", "/no/such/model.onnx"]) == 2
    assert "/no/such/model.onnx: cannot load the ONNX graph" in capsys.readouterr().err
