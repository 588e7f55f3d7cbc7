"""Issue 12 item 5: one CorpusSpec per corpus, one registry.

Every registered spec is complete and agrees with what its parser produces; a spec refuses
incomplete or inconsistent values; and a corpus registered at run time (a toy corpus with its
own parse function, in a temporary folder) is ingested and folded by the unchanged pipeline,
its folds equal to a reference implementation of its FoldProtocol written here.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from data_contracts.audio import AUDIO_CHECKS
from data_contracts.corpora import OFFICIAL_CORPORA, SPECS, check_corpus, parse_corpus, spec
from data_contracts.corpora.base import (
    GROUPINGS,
    VALIDATIONS,
    AudioChecks,
    Candidate,
    CorpusSpec,
    FoldProtocol,
    ParseResult,
    audio_paths,
    no_audio_found,
)
from data_contracts.errors import UnknownCorpusError
from data_contracts.folds import make_folds
from data_contracts.ingest import run_ingest
from data_contracts.labels import CORPORA, LABELS
from data_contracts.source import Listing, LocalSource, SourceFile
from tests.contracts.conftest import BUILDERS
from tests.fixtures.corpora import write_tone


@pytest.mark.parametrize("name", list(SPECS))
def test_registered_spec_is_complete_and_consistent(name):
    corpus = SPECS[name]
    assert isinstance(corpus, CorpusSpec) and corpus.name == name and spec(name) is corpus
    assert sys.modules[corpus.parse.__module__].SPEC is corpus, (
        "the spec's parser lives in the module that exports it"
    )
    assert isinstance(corpus.labels, tuple) and len(corpus.labels) >= 2
    assert len(set(corpus.labels)) == len(corpus.labels), f"{name}: a class is named twice in {corpus.labels}"
    protocol = corpus.folds
    assert protocol.grouping in GROUPINGS and protocol.validation in VALIDATIONS
    assert protocol.min_groups >= VALIDATIONS[protocol.validation]
    assert (protocol.block_size is not None) == (protocol.grouping == "speaker_blocks")
    checks = corpus.audio_checks
    assert checks.sample_rates and all(8000 <= rate <= 96000 for rate in checks.sample_rates)
    assert 1 <= checks.max_channels <= 2 and 0 <= checks.min_duration_s < 1 < checks.max_duration_s
    assert (
        0 < checks.silence_peak < 0.01 and 0.9 < checks.clip_level <= 1 and checks.max_clipped_fraction < 0.5
    )
    assert callable(corpus.parse) and list(inspect.signature(corpus.parse).parameters) == [
        "listing",
        "source",
    ]
    for topic in ("layout", "label map", "fold protocol"):
        assert topic in corpus.doc.lower(), f"{name}: the module docstring does not document its {topic}"


def test_derived_names_read_the_registry():
    assert tuple(CORPORA) == tuple(SPECS) and list(CORPORA) == list(SPECS)
    assert dict(LABELS) == {name: s.labels for name, s in SPECS.items()}
    assert dict(AUDIO_CHECKS) == {name: s.audio_checks for name, s in SPECS.items()}


@pytest.fixture
def official_registry(monkeypatch):
    """SPECS with the four official corpora only, for this test: table datasets that other tests of
    this process registered (data_contracts.corpora.register) are set aside and put back after."""
    for name in [n for n in SPECS if n not in OFFICIAL_CORPORA]:
        monkeypatch.delitem(SPECS, name)


def test_every_registered_corpus_has_a_fixture(official_registry):
    assert set(BUILDERS) == set(SPECS), (
        "each registered corpus needs a fixture builder in tests/contracts/conftest.py"
    )


def test_spec_classes_are_exactly_those_its_parser_gives(any_corpus):
    """The fixtures cycle through every label code of their corpus, so the parser's labels cover
    the spec's classes, and name no other."""
    name, root, _ = any_corpus
    parsed = parse_corpus(name, LocalSource(root))
    assert {c.label for c in parsed.candidates} == set(SPECS[name].labels)


def test_unknown_corpus_names_the_known_ones(tmp_path, official_registry):
    for check in (spec, check_corpus):
        with pytest.raises(
            UnknownCorpusError,
            match=r"^unknown corpus 'crema-d'; expected one of iemocap, msp-improv, ravdess, savee$",
        ):
            check("crema-d")
    (tmp_path / "a.wav").write_bytes(b"")
    with pytest.raises(UnknownCorpusError, match="unknown corpus 'crema-d'"):
        parse_corpus("crema-d", LocalSource(tmp_path))
    with pytest.raises(UnknownCorpusError, match="unknown corpus None"):
        check_corpus(None)
    assert [check_corpus(name) for name in CORPORA] == list(SPECS)


def _parse_nothing(listing, source):
    return ParseResult("x")


GOOD = dict(
    name="x",
    labels=("a", "b"),
    folds=FoldProtocol("speaker", "next_group", 3),
    audio_checks=AudioChecks(),
    parse=_parse_nothing,
    doc="Layout, label map, fold protocol.",
)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"name": ""}, "CorpusSpec.name"),
        ({"name": "Savee"}, "lower-case"),
        ({"labels": ()}, "non-empty tuple"),
        ({"labels": ["a", "b"]}, "non-empty tuple"),
        ({"labels": ("a", "")}, "non-empty tuple"),
        ({"labels": ("a", "b", "a")}, "name a class twice"),
        ({"folds": ("speaker", "next_group", 3)}, "must be a FoldProtocol"),
        ({"audio_checks": {"sample_rates": {16000}}}, "must be AudioChecks"),
        ({"parse": "savee.parse"}, "parse must be a function"),
        ({"doc": " "}, "doc must say"),
    ],
)
def test_spec_refuses_incomplete_values(change, message):
    CorpusSpec(**GOOD)
    with pytest.raises(ValueError, match=message):
        CorpusSpec(**{**GOOD, **change})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(grouping="actor", validation="next_group", min_groups=3), "grouping: got 'actor'"),
        (dict(grouping="speaker", validation="random", min_groups=3), "validation: got 'random'"),
        (
            dict(grouping="speaker", validation="next_group", min_groups=2),
            "min_groups: got 2, expected an int >= 3",
        ),
        (
            dict(grouping="session", validation="gender_balanced", min_groups=1),
            "min_groups: got 1, expected an int >= 2",
        ),
        (dict(grouping="speaker_blocks", validation="gender_balanced", min_groups=2), "block_size: got None"),
        (
            dict(grouping="speaker_blocks", validation="gender_balanced", min_groups=2, block_size=0),
            "block_size: got 0",
        ),
        (
            dict(grouping="session", validation="next_group", min_groups=3, block_size=4),
            "only speaker_blocks",
        ),
    ],
)
def test_fold_protocol_refuses_what_folds_cannot_build(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FoldProtocol(**kwargs)


@given(
    names=st.lists(
        st.sampled_from(
            [
                "a/x.wav",
                "a/x.FLAC",
                "a/._x.wav",
                ".DS_Store",
                "b/Thumbs.db",
                "notes.txt",
                "b/labels.txt",
                "c/y.mp3",
            ]
        ),
        max_size=12,
    ).map(lambda names: sorted(set(names))),
    label_files=st.sets(st.sampled_from(["b/labels.txt", "a/._x.wav", "notes.txt"])),
)
def test_audio_paths_yields_audio_and_counts_every_other_file(names, label_files):
    listing = Listing(tuple(SourceFile(n, 1, "v") for n in names), ())
    result = ParseResult("x")
    yielded = list(audio_paths(listing, result, label_files.__contains__))
    assert yielded == [n for n in names if n.lower().endswith((".wav", ".flac")) and "/._" not in f"/{n}"]

    def category(name: str) -> str:
        base = name.rsplit("/", 1)[-1]
        return (
            "os_metadata"
            if base.startswith("._") or base in (".DS_Store", "Thumbs.db", "desktop.ini")
            else "not_audio"
        )

    expected = Counter("label_file" if n in label_files else category(n) for n in names if n not in yielded)
    assert result.out_of_scope == expected and sum(expected.values()) + len(yielded) == len(names)


# A toy corpus: session<s>/<F|M><NN>/<label>_<n>.wav, labels in the file name.
TOY = "toy"
TOY_LABELS = ("calm", "tense", "bright")
TOY_LAYOUT = "session<s>/<F|M><NN>/<label>_<n>.wav"
_TOY_PATH = re.compile(r"^(session\d+)/(([FM])\d\d)/([a-z]+)_(\d+)\.wav$")


def parse_toy(listing, source) -> ParseResult:
    """The toy corpus's parser, written against base.py only, as a new corpus module would be."""
    result = ParseResult(TOY)
    for path in audio_paths(listing, result):
        match = _TOY_PATH.match(path)
        if match is None:
            result.quarantine_file(path, "bad_name", f"{path}: audio file outside the layout {TOY_LAYOUT}")
            continue
        session, speaker, gender, label, number = match.groups()
        utt_id = f"{speaker}_{label}_{number}"
        if label not in TOY_LABELS:
            result.quarantine_file(path, "unknown_label", f"{path}: label {label!r}", utt_id)
            continue
        result.candidates.append(Candidate(utt_id, TOY, path, speaker, session, gender, label, label))
    if not result.candidates and not result.quarantine:
        raise no_audio_found(source, listing, "toy", TOY_LAYOUT)
    return result


@st.composite
def fold_protocols(draw) -> FoldProtocol:
    # label_stratified (table datasets) groups by labels, not by layout: tests/contracts/test_table_ingest.py
    grouping = draw(st.sampled_from([g for g in GROUPINGS if g != "label_stratified"]))
    validation = draw(st.sampled_from(sorted(VALIDATIONS)))
    block_size = draw(st.integers(1, 3)) if grouping == "speaker_blocks" else None
    return FoldProtocol(grouping, validation, draw(st.integers(VALIDATIONS[validation], 4)), block_size)


speaker_sets = st.lists(
    st.tuples(
        st.integers(1, 3),
        st.sampled_from("FM"),
        st.lists(st.sampled_from(TOY_LABELS), min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=6,
)


def reference_folds(
    speakers: dict[str, tuple[str, str]], protocol: FoldProtocol
) -> set[tuple[int, str, str]] | None:
    """(fold, speaker, role) rows of `protocol` as FoldProtocol's docstring states it, or None
    when it does not fit (too few groups, or a fold left without a training speaker). Speaker
    and session names here sort the same lexically and naturally."""
    names = sorted(speakers)
    if protocol.grouping == "speaker":
        groups = [[s] for s in names]
    elif protocol.grouping == "session":
        groups = [
            [s for s in names if speakers[s][0] == session]
            for session in sorted({v[0] for v in speakers.values()})
        ]
    else:
        groups = [names[i : i + protocol.block_size] for i in range(0, len(names), protocol.block_size)]
    if len(groups) < protocol.min_groups:
        return None
    rows = set()
    for k, test in enumerate(groups):
        rest = [s for s in names if s not in test]
        if protocol.validation == "next_group":
            valid = groups[(k + 1) % len(groups)]
        else:
            pools = [[s for s in rest if speakers[s][1] == sex] for sex in "MF"]
            valid = [pool[k % len(pool)] for pool in pools if pool]
        train = [s for s in rest if s not in valid]
        if not train:
            return None
        rows |= (
            {(k, s, "test") for s in test}
            | {(k, s, "valid") for s in valid}
            | {(k, s, "train") for s in train}
        )
    return rows


# Each example writes audio and runs a whole ingest: shrinking a failure would take minutes, and
# the drawn example (at most six speakers) is small enough to read unshrunk.
@settings(max_examples=25, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(speaker_list=speaker_sets, protocol=fold_protocols(), allow_8k=st.booleans())
def test_a_corpus_registered_at_run_time_is_ingested_and_folded(speaker_list, protocol, allow_8k):
    toy = CorpusSpec(
        name=TOY,
        labels=TOY_LABELS,
        folds=protocol,
        audio_checks=AudioChecks(sample_rates=frozenset({16000, 8000} if allow_8k else {16000})),
        parse=parse_toy,
        doc="Toy corpus. Layout: " + TOY_LAYOUT + "; label map: the file name; fold protocol: drawn.",
    )
    speakers = {f"{gender}{i:02d}": (f"session{s}", gender) for i, (s, gender, _) in enumerate(speaker_list)}
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        root = Path(folder)
        rows = []
        for (name, (session, gender)), (_, _, labels) in zip(speakers.items(), speaker_list):
            for n, label in enumerate(labels):
                path = f"{session}/{name}/{label}_{n}.wav"
                write_tone(root / path, key=path)
                rows.append(
                    dict(
                        utt_id=f"{name}_{label}_{n}",
                        path=path,
                        speaker=name,
                        session=session,
                        gender=gender,
                        label=label,
                    )
                )
        first, (session, gender) = next(iter(speakers.items()))
        low_rate = f"{session}/{first}/calm_99.wav"
        write_tone(root / low_rate, key=low_rate, sample_rate=8000)
        if allow_8k:
            rows.append(
                dict(
                    utt_id=f"{first}_calm_99",
                    path=low_rate,
                    speaker=first,
                    session=session,
                    gender=gender,
                    label="calm",
                )
            )
        write_tone(root / "stray.wav")
        write_tone(root / f"{session}/{first}/angry_1.wav")
        (root / "README.txt").write_text("toy corpus\n")
        (root / session / ".DS_Store").write_bytes(b"\0")

        patch.setitem(SPECS, TOY, toy)
        assert TOY in CORPORA and LABELS[TOY] == TOY_LABELS and AUDIO_CHECKS[TOY] == toy.audio_checks
        result = run_ingest(TOY, root, workers=1, progress=False)

    manifest = result.manifest
    got = (
        manifest[["utt_id", "path", "speaker", "session", "gender", "label"]]
        .sort_values("path")
        .to_dict("records")
    )
    assert got == sorted(rows, key=lambda r: r["path"])
    assert (manifest["corpus"] == TOY).all() and (manifest["label_raw"] == manifest["label"]).all()
    quarantined = dict(zip(result.quarantine["path"], result.quarantine["reason_code"]))
    assert quarantined == {
        "stray.wav": "bad_name",
        f"{session}/{first}/angry_1.wav": "unknown_label",
        **({} if allow_8k else {low_rate: "sample_rate"}),
    }
    assert result.report["out_of_scope"] == {"not_audio": 1, "os_metadata": 1}
    assert list(result.report["classes"]) == list(TOY_LABELS)

    expected = reference_folds(speakers, protocol)
    if expected is None:
        assert result.folds.empty and manifest["fold"].isna().all() and result.report["no_fold_protocol"]
    else:
        assert set(map(tuple, result.folds[["fold", "speaker", "role"]].itertuples(index=False))) == expected
        test_fold = {s: k for k, s, role in expected if role == "test"}
        assert manifest["fold"].tolist() == manifest["speaker"].map(test_fold).tolist()
        assert result.report["no_fold_protocol"] is None
    assert TOY not in SPECS and TOY not in CORPORA, "the registration was undone"


def test_the_reference_folds_follow_the_protocol_they_are_given():
    """make_folds on a registered corpus equals the reference for that corpus's protocol, and
    not for another protocol: the comparison above can fail."""
    speakers = {f"M{i:02d}": (f"session{i // 2}", "M") for i in range(6)}
    manifest = pd.DataFrame(
        [dict(corpus="savee", speaker=s, session=v[0], gender=v[1]) for s, v in speakers.items()]
    )
    folds = set(map(tuple, make_folds(manifest)[["fold", "speaker", "role"]].itertuples(index=False)))
    assert folds == reference_folds(speakers, SPECS["savee"].folds)
    assert folds != reference_folds(speakers, dataclasses.replace(SPECS["savee"].folds, grouping="session"))
