"""Promotion: the champion moves on a paired gain over the folds both versions evaluated on the
same test speakers; a fuller evaluation of the same data replaces a partial one when not worse;
new data is compared on what is comparable and says so; nothing comparable keeps the champion
and says why; every decision is written on the version; one promotion at a time."""

from __future__ import annotations

import contextvars
import json
import threading
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from data_contracts.labels import LABELS
from flows.promote import (
    ALREADY,
    FIRST,
    FULLER,
    NOT_COMPARABLE,
    PAIRED,
    UA_TAG,
    FoldScore,
    VersionScore,
    current_champion,
    decide_promotion,
    fold_score_tags,
    promote_version,
    version_score,
)
from ser_stack.names import (
    CHALLENGER,
    CHAMPION,
    CORPUS_TAG,
    FINGERPRINT_TAG,
    FOLD_SCORES_TAG,
    GIT_COMMIT_TAG,
    PARENT_RUN_TAG,
    PRESET_TAG,
    PROMOTE_LIMIT,
    PROTOCOL_TAG,
    SELECTION_TAG,
)

PROTOCOL = "ravdess: speaker-independent, 5 folds, evaluated folds 0,1, selection on validation speakers"
SPEAKERS = {k: [f"Actor_{4 * k + i:02d}" for i in range(1, 5)] for k in range(6)}
"""RAVDESS's test actors per fold: consecutive groups of four."""
DATA_A, DATA_B = "a" * 64, "b" * 64


def score(
    version: str, uas: dict[int, float], data: str = DATA_A, labels=LABELS["ravdess"], speakers=SPEAKERS
) -> VersionScore:
    folds = {k: FoldScore(ua, None if speakers is None else tuple(speakers[k])) for k, ua in uas.items()}
    return VersionScore(version, folds, data, tuple(labels))


def decide(candidate: VersionScore, champion: VersionScore | None, margin: float = 0.0):
    return decide_promotion("ravdess", candidate, champion, margin)


def add_version(
    client: MlflowClient, name: str, uas: dict[int, float], data: str = DATA_A, protocol: str = PROTOCOL
) -> str:
    """Register a version carrying the tags the train flow writes (no model files needed)."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    mean = sum(uas.values()) / len(uas)
    tags = {UA_TAG: f"{mean:.6f}", PROTOCOL_TAG: protocol, FINGERPRINT_TAG: data}
    tags.update(fold_score_tags(uas, SPEAKERS, LABELS[name.removeprefix("ser-")]))
    return client.create_model_version(
        name, source="s3://ser-mlflow/promote-tests/no-model", tags=tags
    ).version


def reference_champion(scores: list[tuple[str, float]], margin: float) -> str:
    """Sequential rule applied by hand: each version in turn replaces the champion if it beats it by > margin."""
    champion, best = None, None
    for version, ua in scores:
        if champion is None or ua - best > margin:
            champion, best = version, ua
    return champion


@pytest.mark.parametrize(
    ("new", "old", "margin", "expected"),
    [
        (0.61, 0.60, 0.0, True),
        (0.60, 0.60, 0.0, False),
        (0.59, 0.60, 0.0, False),
        (0.605, 0.60, 0.01, False),
        (0.62, 0.60, 0.01, True),
    ],
)
def test_on_the_same_folds_the_gain_must_exceed_the_margin(new, old, margin, expected):
    decision = decide(score("2", {0: new, 1: new}), score("1", {0: old, 1: old}), margin)
    assert (decision.promoted, decision.rule, decision.compared_folds) == (expected, PAIRED, (0, 1))
    assert (
        f"{new:.4f}" in decision.reason and f"{old:.4f}" in decision.reason and "same data" in decision.reason
    )


def test_the_first_version_becomes_champion_and_a_champion_is_not_compared_with_itself():
    assert decide(score("1", {0: 0.1}), None).rule == FIRST and decide(score("1", {0: 0.1}), None).promoted
    again = decide(score("1", {0: 0.5}), score("1", {0: 0.5}))
    assert (again.promoted, again.rule) == (False, ALREADY)


def test_the_comparison_is_paired_not_a_mean_over_different_folds():
    """The champion's mean includes a hard fold the candidate never ran: its own mean (0.55) is
    above the champion's (0.48), yet on the two folds both ran it is worse on each."""
    champion = score("1", {0: 0.60, 1: 0.60, 2: 0.50, 3: 0.20, 4: 0.50})
    candidate = score("2", {0: 0.56, 1: 0.54})
    assert candidate.ua_mean > champion.ua_mean
    decision = decide(candidate, champion)
    assert not decision.promoted and decision.compared_folds == (0, 1)
    assert decision.gain == pytest.approx(-0.05)


@pytest.mark.parametrize(("fold0", "expected"), [(0.40, True), (0.41, True), (0.39, False)])
def test_a_fuller_evaluation_of_the_same_data_replaces_a_partial_one_when_not_worse(fold0, expected):
    """The demo's champion ran fold 0 only; a full-protocol run of the same data that is not
    worse on fold 0 replaces it, even with a margin (it is the better-measured model)."""
    demo = score("1", {0: 0.40})
    full = score("2", {0: fold0, 1: 0.35, 2: 0.30, 3: 0.45, 4: 0.33})
    decision = decide(full, demo, margin=0.05)
    assert (decision.promoted, decision.rule, decision.compared_folds) == (expected, FULLER, (0,))
    assert "fuller evaluation of the same data" in decision.reason and "folds 0,1,2,3,4" in decision.reason


def test_a_partial_run_does_not_count_as_fuller():
    full = score("1", {k: 0.40 for k in range(5)})
    decision = decide(score("2", {0: 0.40}), full)
    assert (decision.promoted, decision.rule) == (False, PAIRED)


def test_new_data_is_compared_on_the_folds_with_the_same_test_speakers_and_says_the_data_differ():
    """New actors 21-24 add a sixth fold and change nothing of folds 0-4's test actors, except
    that this champion's fold 1 was recorded with other speakers: only fold 0 is comparable."""
    champion = score(
        "1", {0: 0.40, 1: 0.90}, data=DATA_A, speakers={0: SPEAKERS[0], 1: ["Actor_05", "Actor_06"]}
    )
    candidate = score("2", {0: 0.45, 1: 0.10, 5: 0.50}, data=DATA_B)
    decision = decide(candidate, champion)
    assert (decision.promoted, decision.rule, decision.compared_folds, decision.same_data) == (
        True,
        PAIRED,
        (0,),
        False,
    )
    assert (
        "data differ" in decision.reason and DATA_B[:12] in decision.reason and DATA_A[:12] in decision.reason
    )


def test_a_fuller_run_on_new_data_still_needs_a_gain_above_the_margin():
    decision = decide(
        score("2", {0: 0.40, 1: 0.40}, data=DATA_B), score("1", {0: 0.40}, data=DATA_A), margin=0.01
    )
    assert (decision.promoted, decision.rule) == (False, PAIRED)


@pytest.mark.parametrize(
    ("candidate", "champion", "says"),
    [
        (score("2", {1: 0.9}), score("1", {0: 0.1}), "no fold was evaluated by both"),
        (
            score("2", {0: 0.9}, data=DATA_B, speakers=None),
            score("1", {0: 0.1}),
            "no fold was evaluated by both",
        ),
        (
            score("2", {0: 0.9}, labels=("angry", "happy", "neutral", "sad")),
            score("1", {0: 0.1}),
            "label sets differ",
        ),
    ],
    ids=["disjoint-folds", "new-data-speakers-unknown", "other-labels"],
)
def test_when_nothing_is_comparable_the_champion_is_kept_and_the_reason_says_what_to_do(
    candidate, champion, says
):
    decision = decide(candidate, champion)
    assert (decision.promoted, decision.rule, decision.compared_folds, decision.gain) == (
        False,
        NOT_COMPARABLE,
        (),
        None,
    )
    assert says in decision.reason
    assert "set_registered_model_alias('ser-ravdess', 'champion', '2')" in decision.reason


def test_versions_without_recorded_speakers_compare_by_fold_on_the_same_data():
    decision = decide(score("2", {0: 0.5, 1: 0.5}, speakers=None), score("1", {0: 0.4}, speakers=None))
    assert (decision.promoted, decision.rule, decision.compared_folds) == (True, FULLER, (0,))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.integers(0, 5), st.floats(0, 1), min_size=1),
    st.dictionaries(st.integers(0, 5), st.floats(0, 1), min_size=1),
    st.sampled_from([0.0, 0.01, 0.05]),
)
def test_the_decision_matches_a_reference_on_the_same_data(new, old, margin):
    """Same data and speakers: compare on the shared folds, by the mean per-fold difference;
    a strict superset of folds needs >= 0, anything else > margin; no shared fold keeps the champion."""
    decision = decide(score("2", new), score("1", old), margin)
    shared = sorted(set(new) & set(old))
    if not shared:
        assert not decision.promoted and decision.rule == NOT_COMPARABLE
        return
    gain = sum(new[k] - old[k] for k in shared) / len(shared)
    fuller = set(new) > set(old)
    assert decision.gain == pytest.approx(gain)
    assert decision.promoted is (gain >= 0 if fuller else gain > margin)


def test_negative_margin_is_rejected():
    with pytest.raises(ValueError, match="margin"):
        decide(score("2", {0: 0.5}), None, -0.1)


def test_fold_score_tags_read_back_as_the_scores_they_record(local_mlflow):
    version = add_version(local_mlflow, "ser-ravdess", {0: 0.41, 3: 0.37}, data=DATA_B)
    read = version_score(local_mlflow, "ser-ravdess", version)
    assert read == VersionScore(
        str(version),
        {0: FoldScore(0.41, tuple(SPEAKERS[0])), 3: FoldScore(0.37, tuple(SPEAKERS[3]))},
        DATA_B,
        LABELS["ravdess"],
        PROTOCOL,
    )


def test_a_malformed_fold_scores_tag_is_named(local_mlflow):
    version = add_version(local_mlflow, "ser-ravdess", {0: 0.4})
    local_mlflow.set_model_version_tag("ser-ravdess", version, "ser.fold_scores", json.dumps({"0": 0.4}))
    with pytest.raises(ValueError, match=f"version {version}: tag ser.fold_scores"):
        version_score(local_mlflow, "ser-ravdess", version)


def test_promotion_sequence_matches_the_rule_and_records_each_decision(local_mlflow):
    scores = [0.40, 0.55, 0.50, 0.551, 0.70]
    versions = []
    for ua in scores:
        version = add_version(local_mlflow, "ser-ravdess", {0: ua, 1: ua})
        versions.append(version)
        decision = promote_version(local_mlflow, "ravdess", version, margin=0.005)
        stored = local_mlflow.get_model_version("ser-ravdess", version)
        assert stored.tags["ser.promotion.decision"] == ("promoted" if decision.promoted else "kept")
        assert stored.tags["ser.promotion.rule"] == decision.rule
        assert decision.reason in stored.description
        assert local_mlflow.get_model_version_by_alias("ser-ravdess", CHALLENGER).version == version
    expected = reference_champion(list(zip(versions, scores)), margin=0.005)
    assert local_mlflow.get_model_version_by_alias("ser-ravdess", CHAMPION).version == expected
    assert current_champion(local_mlflow, "ser-ravdess").ua_mean == pytest.approx(0.70)


def assert_registry_says_why(client: MlflowClient, name: str, version: str, rule: str, compared: str) -> None:
    stored = client.get_model_version(name, version)
    assert stored.tags["ser.promotion.rule"] == rule
    assert stored.tags["ser.promotion.compared_folds"] == compared
    assert stored.tags["ser.promotion.reason"] in stored.description
    assert "| fold | test speakers | candidate UA | champion UA | paired difference |" in stored.description


def test_a_fold_0_demo_champion_is_replaced_by_a_better_full_protocol_run(local_mlflow):
    demo = add_version(local_mlflow, "ser-ravdess", {0: 0.30})
    promote_version(local_mlflow, "ravdess", demo)
    full = add_version(local_mlflow, "ser-ravdess", {0: 0.36, 1: 0.33, 2: 0.31, 3: 0.40, 4: 0.29})
    decision = promote_version(local_mlflow, "ravdess", full)
    assert (
        decision.promoted and local_mlflow.get_model_version_by_alias("ser-ravdess", CHAMPION).version == full
    )
    assert_registry_says_why(local_mlflow, "ser-ravdess", full, FULLER, "0")
    assert (
        local_mlflow.get_model_version("ser-ravdess", full).tags["ser.promotion.paired_gain"] == "+0.060000"
    )


def test_a_champion_registered_before_fold_scores_is_read_from_its_parent_run(local_mlflow, experiment_id):
    """A version from before ``ser.fold_scores`` (mean UA, protocol, fingerprint and parent run
    only) is scored from the parent run's fold_<k>.UA metrics and compared on the same data."""
    parent = local_mlflow.create_run(experiment_id).info.run_id
    local_mlflow.log_metric(parent, "fold_0.UA", 0.30)
    local_mlflow.log_metric(parent, "UA_mean", 0.30)
    local_mlflow.create_registered_model("ser-ravdess")
    tags = {
        UA_TAG: "0.300000",
        PROTOCOL_TAG: "ravdess: ... evaluated folds 0 ...",
        FINGERPRINT_TAG: DATA_A,
        PARENT_RUN_TAG: parent,
    }
    old = local_mlflow.create_model_version(
        "ser-ravdess", source="s3://ser-mlflow/promote-tests/no-model", tags=tags
    ).version
    local_mlflow.set_registered_model_alias("ser-ravdess", CHAMPION, old)
    assert version_score(local_mlflow, "ser-ravdess", old).folds == {0: FoldScore(0.30, None)}
    full = add_version(local_mlflow, "ser-ravdess", {k: 0.31 for k in range(5)})
    assert promote_version(local_mlflow, "ravdess", full).rule == FULLER
    assert local_mlflow.get_model_version_by_alias("ser-ravdess", CHAMPION).version == full


def test_a_version_without_scores_is_refused_with_the_missing_tag(local_mlflow):
    local_mlflow.create_registered_model("ser-savee")
    version = local_mlflow.create_model_version(
        "ser-savee", source="s3://ser-mlflow/promote-tests/no-model"
    ).version
    with pytest.raises(ValueError, match="ser.fold_scores"):
        promote_version(local_mlflow, "savee", version)


@pytest.mark.integration
def test_the_demo_champion_is_replaced_on_the_live_stack_and_the_registry_says_why(stack, monkeypatch):
    """Issue 11: a fold-0 champion (what the demo makes) is replaced by a better full-protocol
    run of the same data through the promote flow on the live stack; then a run on new data is
    compared on the folds it shares and the registry records that the data differ."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.promote import promote

    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(stack.tracking_uri)
    name = "ser-msp-improv"
    if (
        client.search_registered_models(filter_string=f"name = '{name}'")
        and CHAMPION in client.get_registered_model(name).aliases
    ):
        client.delete_registered_model_alias(name, CHAMPION)
    data, new_data = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        demo = add_version(client, name, {0: 0.30}, data=data)
        assert promote("msp-improv", demo)["promoted"] is True
        full = add_version(client, name, {k: 0.30 + 0.01 * k for k in range(6)}, data=data)
        result = promote("msp-improv", full)
        assert result["promoted"] is True and result["rule"] == FULLER
        assert client.get_model_version_by_alias(name, CHAMPION).version == full
        assert_registry_says_why(client, name, full, FULLER, "0")
        worse_new = add_version(client, name, {0: 0.20, 1: 0.25}, data=new_data)
        assert promote("msp-improv", worse_new)["promoted"] is False
    assert client.get_model_version_by_alias(name, CHAMPION).version == full
    stored = client.get_model_version(name, worse_new)
    assert stored.tags["ser.promotion.data"] == "different" and "data differ" in stored.description
    assert_registry_says_why(client, name, worse_new, PAIRED, "0,1")


@pytest.mark.integration
def test_two_promotions_at_once_leave_exactly_one_consistent_champion(stack, monkeypatch):
    """Two promote flows race on the live stack; the global concurrency limit serialises them,
    so the champion is the better version whatever order they ran in."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.promote import promote

    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(stack.tracking_uri)
    corpus = "savee"
    name = f"ser-{corpus}"
    suffix = uuid.uuid4().hex[:8]
    data = suffix * 8
    if (
        client.search_registered_models(filter_string=f"name = '{name}'")
        and CHAMPION in client.get_registered_model(name).aliases
    ):
        client.delete_registered_model_alias(name, CHAMPION)
    base = add_version(client, name, {0: 0.30}, data=data)
    promote_version(client, corpus, base)
    better, worse = (
        add_version(client, name, {0: 0.60}, data=data),
        add_version(client, name, {0: 0.50}, data=data),
    )
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def run(version: str) -> None:
        try:
            results[version] = promote(corpus, version, margin=0.0)
        except BaseException as err:  # surfaced below
            errors.append(err)

    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        # threads do not inherit context variables (where Prefect keeps its settings): copy them
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(run, v)) for v in (worse, better)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
        with get_client(sync_client=True) as prefect:
            assert prefect.read_global_concurrency_limit_by_name(PROMOTE_LIMIT).limit == 1
    assert not errors, errors
    assert client.get_model_version_by_alias(name, CHAMPION).version == better
    assert results[better]["promoted"] is True
    # whichever ran second saw the first one's outcome: the decisions agree with one serial order
    worse_saw = results[worse]["champion_before"]["version"]
    assert worse_saw in (base, better)
    assert results[worse]["promoted"] is (worse_saw == base)


def test_register_release_writes_what_promotion_reads_and_registers_once(local_mlflow, experiment_id):
    """The release version carries the parent run's tags that describe the data and the code,
    each evaluated fold's UA with the fold table's test speakers, and the fold summary; promotion
    reads it back; a second call (a rerun of the flow) registers nothing new."""
    import pandas as pd

    from flows.promote import RUN_TAGS_ON_VERSION, register_release
    from ser_model.metrics import fold_summary

    run_tags = {CORPUS_TAG: "ravdess", FINGERPRINT_TAG: DATA_A, PROTOCOL_TAG: PROTOCOL}
    run_tags |= {SELECTION_TAG: "best validation UA", GIT_COMMIT_TAG: "abc123", PRESET_TAG: "x"}
    parent = local_mlflow.create_run(experiment_id, tags=run_tags).info.run_id
    rows = [
        {"fold": k, "role": "test" if k == fold_of(s) else "train", "speaker": s}
        for k in (0, 1, 2)
        for s in sorted({s for ss in SPEAKERS.values() for s in ss})[:12]
    ]
    fold_table = pd.DataFrame(rows).sample(frac=1.0, random_state=0)
    uas = {0: 0.52, 1: 0.61}
    scores = {k: {"WA": ua + 0.01, "UA": ua, "macro_f1": ua - 0.01} for k, ua in uas.items()}
    summary = fold_summary(scores)
    labels = LABELS["ravdess"]

    version, new = register_release(
        local_mlflow, parent, "s3://ser-mlflow/promote-tests/no-model", uas, fold_table, summary, labels
    )
    assert new
    tags = local_mlflow.get_model_version("ser-ravdess", version).tags
    assert {k: tags[k] for k in RUN_TAGS_ON_VERSION} == {k: run_tags[k] for k in RUN_TAGS_ON_VERSION}
    assert "ser.preset" not in tags and tags[PARENT_RUN_TAG] == parent
    assert json.loads(tags[FOLD_SCORES_TAG]) == {
        str(k): {"UA": uas[k], "test_speakers": sorted(SPEAKERS[k])} for k in uas
    }, "fold 2 was not evaluated, and each fold names its own test speakers"
    assert float(tags[UA_TAG]) == pytest.approx((0.52 + 0.61) / 2)
    assert float(tags["ser.UA_std"]) == pytest.approx(abs(0.61 - 0.52) / 2**0.5, abs=1e-6)
    read = version_score(local_mlflow, "ser-ravdess", version)
    assert read.folds == {k: FoldScore(uas[k], tuple(sorted(SPEAKERS[k]))) for k in uas}
    assert read.fingerprint == DATA_A and read.labels == tuple(labels)

    assert register_release(local_mlflow, parent, "s3://elsewhere", uas, fold_table, summary, labels) == (
        version,
        False,
    )
    assert [str(v.version) for v in local_mlflow.search_model_versions("name = 'ser-ravdess'")] == [version]


def fold_of(speaker: str) -> int:
    """The fold whose test actors include ``speaker`` (SPEAKERS: consecutive groups of four)."""
    return next(k for k, speakers in SPEAKERS.items() if speaker in speakers)
