"""Table datasets (issue 34): a labels table of real RAVDESS audio, relabelled and renamed, with a
bad row of every kind; folds compared with references written here; the refusals; the CLI."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from data_contracts.corpora import SPECS
from data_contracts.corpora.folders import folders_table
from data_contracts.datasets import resolve_dataset
from data_contracts.errors import IngestError, UnknownCorpusError
from data_contracts.folds import label_share_spread, natural_key, stratified_speaker_groups
from data_contracts.ingest import read_ingest_outputs
from data_contracts.table_ingest import run_table_ingest

RENAMED = {"01": "neutral", "02": "calm", "03": "joy", "04": "sadness", "05": "anger"}
SPEAKERS = {
    f"{a:02d}": name
    for a, name in zip(range(1, 9), ("ana", "ben", "cleo", "dan", "eve", "fay", "gus", "hal"))
}


@pytest.fixture(autouse=True)
def forget_table_specs():
    """Each test starts with only the four corpora registered, as a fresh process does."""
    yield
    for name in [n for n in SPECS if n not in ("iemocap", "msp-improv", "ravdess", "savee")]:
        del SPECS[name]


def _good_rows(shared: Path, folder: Path) -> list[dict]:
    """Two takes of five emotions per actor 01-08, copied to ``audio/<speaker>/<label>/``."""
    rows = []
    for actor, speaker in SPEAKERS.items():
        for emotion, label in RENAMED.items():
            for statement in ("01", "02"):
                name = f"03-01-{emotion}-01-{statement}-01-{actor}.flac"
                target = folder / "audio" / speaker / label / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shared / f"Actor_{actor}" / name, target)
                rows.append({"path": f"audio/{speaker}/{label}/{name}", "label": label, "speaker": speaker})
    return rows


def _write_wave(path: Path, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, 16000)


@pytest.fixture
def calls(shared_ravdess, tmp_path) -> tuple[Path, list[dict], dict[int, str]]:
    """(table path, good rows, {row number: expected reason_code}) of the table dataset."""
    folder = tmp_path / "calls"
    rows = _good_rows(shared_ravdess, folder)
    rows[0]["path"] = str(folder / rows[0]["path"])  # an absolute path inside the folder is fine
    for i, row in enumerate(rows):
        row["call_id"] = f"c{i:03d}"
    (tmp_path / "outside.flac").write_bytes((folder / rows[1]["path"]).read_bytes())
    (folder / "audio" / "escape.flac").symlink_to(shared_ravdess / "Actor_09" / "03-01-01-01-01-01-09.flac")
    shutil.copyfile(folder / rows[2]["path"], folder / "audio" / "copy-of-row-4.flac")
    _write_wave(folder / "audio" / "silent.wav", np.zeros(16000, dtype=np.float32))
    _write_wave(folder / "audio" / "short.wav", 0.1 * np.ones(800, dtype=np.float32))
    (folder / "audio" / "notes.wav").write_text("not audio")
    bad = [
        ({"path": "audio/nowhere.flac", "label": "joy", "speaker": "ana"}, "missing_file"),
        (
            {"path": rows[3]["path"], "label": "", "speaker": "ana"},
            "empty_label",
        ),
        ({"path": "../outside.flac", "label": "joy", "speaker": "ana"}, "path_escape"),
        ({"path": "audio/escape.flac", "label": "joy", "speaker": "ana"}, "symlink_escape"),
        ({"path": "audio/copy-of-row-4.flac", "label": "joy", "speaker": "ana"}, "duplicate"),
        ({"path": rows[5]["path"], "label": "joy", "speaker": ""}, "empty_speaker"),
        ({"path": "audio/silent.wav", "label": "joy", "speaker": "ana"}, "silence"),
        ({"path": "audio/short.wav", "label": "joy", "speaker": "ana"}, "duration"),
        ({"path": "audio/notes.wav", "label": "joy", "speaker": "ana"}, "unreadable"),
        ({"path": "", "label": "joy", "speaker": "ana"}, "empty_path"),
    ]
    table = pd.DataFrame(rows + [row for row, _ in bad]).fillna("")
    path = folder / "labels.csv"
    table.to_csv(path, index=False)
    expected = {len(rows) + 2 + i: code for i, (_, code) in enumerate(bad)}
    return path, rows, expected


def test_every_good_row_is_kept_and_each_bad_row_quarantined_with_its_reason_and_row(calls):
    path, rows, expected = calls
    result = run_table_ingest(str(path), "calls", workers=1, progress=False)
    manifest = result.manifest
    assert sorted(manifest["path"]) == sorted(
        str(Path(r["path"]).relative_to(path.parent)) if r["path"].startswith("/") else r["path"]
        for r in rows
    )
    assert result.report["labels"] == sorted(RENAMED.values()) == list(SPECS["calls"].labels)
    assert sorted(manifest["speaker"].unique()) == sorted(SPEAKERS.values())
    assert set(manifest["gender"]) == {"U"}
    assert json.loads(manifest["metadata"].iloc[0]) == {"call_id": "c000"}
    quarantine = result.quarantine
    assert len(quarantine) == len(expected)
    found = {}
    for row in quarantine.itertuples():
        number = int(row.reason.split(" row ", 1)[1].split(":", 1)[0])
        assert row.reason.startswith(f"{path} row {number}: ")
        found[number] = row.reason_code
    assert found == expected


def _reference_roles(folds: pd.DataFrame) -> dict[int, dict[str, set]]:
    return {
        int(k): {role: set(t.loc[t["role"] == role, "speaker"]) for role in ("test", "valid", "train")}
        for k, t in folds.groupby("fold")
    }


def test_table_folds_are_speaker_disjoint_stratified_and_test_every_speaker_once(calls):
    path, _, _ = calls
    result = run_table_ingest(path, "calls", workers=1, progress=False)  # a Path, like a str
    roles = _reference_roles(result.folds)
    speakers = set(SPEAKERS.values())
    assert len(roles) == 5
    tested = [s for k in roles for s in roles[k]["test"]]
    assert sorted(tested) == sorted(speakers)  # every speaker in exactly one test fold
    order = sorted(roles)
    for k in order:
        test, valid, train = roles[k]["test"], roles[k]["valid"], roles[k]["train"]
        assert test and valid and train and test | valid | train == speakers
        assert not (test & valid or test & train or valid & train)
        assert valid == roles[order[(k + 1) % len(order)]]["test"]  # validation: next fold's test speakers
        labels_tested = set(result.manifest.loc[result.manifest["speaker"].isin(test), "label"])
        assert labels_tested == set(RENAMED.values())
    assert dict(zip(result.manifest["speaker"], result.manifest["fold"])) == {
        s: k for k in roles for s in roles[k]["test"]
    }


def _single_label_manifest(labels_of: dict[str, str], n: int = 10) -> pd.DataFrame:
    return pd.DataFrame([{"speaker": s, "label": label} for s, label in labels_of.items() for _ in range(n)])


def _best_spread(manifest: pd.DataFrame, k: int) -> float:
    """Reference: the smallest label-share spread over every assignment of speakers to k non-empty groups."""
    speakers = sorted(manifest["speaker"].unique())
    totals = manifest["label"].value_counts().to_dict()
    per = manifest.groupby("speaker")["label"].value_counts()
    best = float("inf")
    for assignment in itertools.product(range(k), repeat=len(speakers)):
        if len(set(assignment)) < k:
            continue
        counts = [{} for _ in range(k)]
        for speaker, g in zip(speakers, assignment):
            for label, n in per[speaker].items():
                counts[g][label] = counts[g].get(label, 0) + int(n)
        best = min(best, label_share_spread(counts, totals))
    return best


def test_stratified_groups_reach_the_brute_force_optimum_where_label_order_would_not():
    """Six speakers who each speak one emotion, two per emotion: the greedy split reaches the best
    spread over all assignments, and every group holds every label; grouping them in name order
    (what unstratified k-fold does) would put both joy speakers together."""
    labels_of = {"a": "joy", "b": "joy", "c": "sad", "d": "sad", "e": "anger", "f": "anger"}
    manifest = _single_label_manifest(labels_of)
    groups = stratified_speaker_groups(manifest, 2)
    counts = [manifest[manifest["speaker"].isin(g)]["label"].value_counts().to_dict() for g in groups]
    totals = manifest["label"].value_counts().to_dict()
    assert label_share_spread(counts, totals) == pytest.approx(_best_spread(manifest, 2)) == 0
    assert all(set(c) == {"joy", "sad", "anger"} for c in counts)
    assert sorted(s for g in groups for s in g) == sorted(labels_of)
    in_order = [["a", "b", "c"], ["d", "e", "f"]]
    naive = [manifest[manifest["speaker"].isin(g)]["label"].value_counts().to_dict() for g in in_order]
    assert label_share_spread(naive, totals) > 0


def test_stratified_groups_are_never_empty_and_shrink_to_the_speakers():
    manifest = _single_label_manifest({"s1": "joy", "s2": "joy", "s3": "joy", "s10": "sad"}, n=5)
    assert sorted(len(g) for g in stratified_speaker_groups(manifest, 4)) == [1, 1, 1, 1]
    groups = stratified_speaker_groups(manifest, 9)
    assert len(groups) == 4 and all(g == sorted(g, key=natural_key) for g in groups)


def test_label_map_merges_labels_and_labels_restricts_them(calls):
    path, rows, _ = calls
    map_file = path.parent / "map.json"
    map_file.write_text(json.dumps({"calm": "neutral"}))
    from data_contracts.corpora.table import read_label_map

    merged = run_table_ingest(
        str(path), "calls", label_map=read_label_map(str(map_file)), workers=1, progress=False
    )
    assert merged.report["labels"] == ["anger", "joy", "neutral", "sadness"]
    calm = merged.manifest[merged.manifest["label_raw"] == "calm"]
    assert len(calm) == 16 and set(calm["label"]) == {"neutral"}
    kept = run_table_ingest(str(path), "calls", labels=["joy", "anger"], workers=1, progress=False)
    assert kept.report["labels"] == ["anger", "joy"]
    unknown = kept.quarantine[kept.quarantine["reason_code"] == "unknown_label"]
    assert len(unknown) == sum(r["label"] not in ("joy", "anger") for r in rows)
    assert all("is not one of --labels ['anger', 'joy']" in reason for reason in unknown["reason"])


def test_a_split_column_is_used_instead_of_speaker_folds(calls):
    path, _, _ = calls
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    split_of = {"ana": "test", "ben": "valid"}
    table["split"] = table["speaker"].map(lambda s: split_of.get(s, "train"))
    table.to_csv(path, index=False)
    result = run_table_ingest(str(path), "calls", workers=1, progress=False)
    assert sorted(result.folds["fold"].unique()) == [0]
    roles = dict(zip(result.folds["speaker"], result.folds["role"]))
    assert roles == {s: split_of.get(s, "train") for s in result.manifest["speaker"].unique()}
    table.loc[table.index[0], "split"] = "valid"  # ana now has rows in two splits
    table.to_csv(path, index=False)
    with pytest.raises(IngestError, match="several splits .*ana: test, valid"):
        run_table_ingest(str(path), "calls", workers=1, progress=False)


def _tiny_table(tmp_path: Path, shared: Path, speakers: int, header: str = "path,label,speaker") -> Path:
    lines = [header]
    for a in range(1, speakers + 1):
        for emotion in ("03", "04"):
            name = f"Actor_{a:02d}/03-01-{emotion}-01-01-01-{a:02d}.flac"
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared / name, tmp_path / name)
            lines.append(f"{name},{RENAMED[emotion]},s{a}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "t.csv"


def test_refusals_name_why(shared_ravdess, tmp_path):
    two = _tiny_table(tmp_path, shared_ravdess, 2)
    with pytest.raises(IngestError, match=r"2 speaker\(s\) .*s1, s2.*at least 3.*split column"):
        run_table_ingest(str(two), "calls", workers=1, progress=False)
    (tmp_path / "t.csv").write_text("path,label\nActor_01/x.flac,joy\n")
    with pytest.raises(IngestError, match="no column 'speaker'"):
        run_table_ingest(str(two), "calls", workers=1, progress=False)
    (tmp_path / "t.csv").write_text("path,label,label,speaker\nActor_01/x.flac,joy,joy,s1\n")
    with pytest.raises(IngestError, match="names column 'label' twice"):
        run_table_ingest(str(two), "calls", workers=1, progress=False)
    for name, why in (("ravdess", "reserved for the official corpus"), ("Calls!", "expected a slug")):
        with pytest.raises(IngestError, match=why):
            run_table_ingest(str(two), name, workers=1, progress=False)
    (tmp_path / "t.csv").write_text("path,label,speaker\nActor_01/03-01-03-01-01-01-01.flac,joy,\n")
    with pytest.raises(IngestError, match="no row names a speaker"):
        run_table_ingest(str(two), "calls", workers=1, progress=False)
    with pytest.raises(UnknownCorpusError, match="unknown dataset 'Bad Name'"):
        resolve_dataset("Bad Name")
    assert resolve_dataset("ravdess").kind == "corpus" and resolve_dataset("calls").is_table


def test_cli_table_and_folders_write_what_train_reads_back_in_a_fresh_process(
    shared_ravdess, tmp_path, capsys
):
    from ser_model.cli import main

    table = _tiny_table(tmp_path, shared_ravdess, 4)
    out = tmp_path / "out"
    argv = [
        "ingest",
        "table",
        str(table),
        "--name",
        "calls",
        "--out",
        str(out),
        "--no-progress",
        "--workers",
        "1",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    assert "classes: joy, sadness" in capsys.readouterr().out
    del SPECS["calls"]  # what a fresh process knows: read_ingest_outputs registers it from the report
    again = read_ingest_outputs(out)
    assert SPECS["calls"].labels == ("joy", "sadness") and len(again.manifest) == 8
    assert again.folds["fold"].nunique() == 4
    pattern = r"-(?P<speaker>\d\d)\.flac$"
    for row in pd.read_csv(table).itertuples():
        target = tmp_path / "byfolder" / row.label / row.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / row.path, target)
    built = folders_table(str(tmp_path / "byfolder"), pattern)
    assert sorted(built.frame["speaker"].unique()) == ["01", "02", "03", "04"]
    assert set(built.frame["label"]) == {"joy", "sadness"}
    argv = [
        "ingest",
        "folders",
        str(tmp_path / "byfolder"),
        "--name",
        "calls-2",
        "--out",
        str(tmp_path / "o2"),
    ]
    assert main([*argv, "--no-progress", f"--speaker-pattern={pattern}"]) == 0
    assert main([*argv, "--no-progress"]) == 2
    assert "no row names a speaker" in capsys.readouterr().err


@pytest.mark.slow
def test_ser_train_on_a_table_dataset_learns_its_labels_and_predict_answers_with_them(
    calls, tmp_path, capsys
):
    """Issue 34's first Done-when: ingest the table, `ser train --manifest DIR --fold 0` (the
    pipeline-check preset) in a process that registers the dataset from the report, `ser predict`
    names the table's classes."""
    from ser_model.cli import main

    path, _, _ = calls
    out = tmp_path / "ingested"
    assert main(["ingest", "table", str(path), "--name", "calls", "--out", str(out), "--no-progress"]) == 0
    del SPECS["calls"]
    model = tmp_path / "fold0"
    argv = ["train", "--manifest", str(out), "--fold", "0", "--preset", "pipeline-check", "--out", str(model)]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((model / "best" / "labels.json").read_text()) == sorted(RENAMED.values())
    capsys.readouterr()
    clip = path.parent / pd.read_csv(path)["path"].iloc[1]
    assert main(["predict", "--model", str(model / "best"), str(clip)]) == 0
    answer = capsys.readouterr().out
    assert any(label in answer for label in ("joy", "sadness", "anger")) and "happy" not in answer
