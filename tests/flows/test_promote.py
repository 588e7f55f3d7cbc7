"""Promotion: the champion moves only on a real gain, on the same protocol, one promotion at a time."""

from __future__ import annotations

import contextvars
import threading
import uuid

import pytest
from mlflow.tracking import MlflowClient

from flows.promote import (
    CHALLENGER,
    CHAMPION,
    PROTOCOL_TAG,
    UA_TAG,
    VersionScore,
    current_champion,
    decide_promotion,
    promote_version,
)

PROTOCOL = "ravdess: speaker-independent, 5 folds, evaluated folds 0,1, selection on validation speakers"


def add_version(client: MlflowClient, name: str, ua: float, protocol: str = PROTOCOL) -> str:
    """Register a version carrying the tags the train flow writes (no model files needed)."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    return client.create_model_version(name, source="s3://ser-mlflow/promote-tests/no-model", tags={UA_TAG: f"{ua:.6f}", PROTOCOL_TAG: protocol}).version


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
        (0.60, None, 0.0, True),
        (0.61, 0.60, 0.0, True),
        (0.60, 0.60, 0.0, False),
        (0.59, 0.60, 0.0, False),
        (0.605, 0.60, 0.01, False),
        (0.62, 0.60, 0.01, True),
    ],
)
def test_decision_needs_a_gain_above_the_margin(new, old, margin, expected):
    champion = None if old is None else VersionScore("1", old, PROTOCOL)
    promoted, reason = decide_promotion(VersionScore("2", new, PROTOCOL), champion, margin)
    assert promoted is expected
    assert f"{new:.4f}" in reason


def test_a_champion_on_another_protocol_is_never_replaced():
    promoted, reason = decide_promotion(VersionScore("2", 0.99, "other protocol"), VersionScore("1", 0.1, PROTOCOL), 0.0)
    assert not promoted
    assert "not comparable" in reason and "other protocol" in reason


def test_negative_margin_is_rejected():
    with pytest.raises(ValueError, match="margin"):
        decide_promotion(VersionScore("2", 0.5, PROTOCOL), None, -0.1)


def test_promotion_sequence_matches_the_rule_and_records_each_decision(local_mlflow):
    scores = [0.40, 0.55, 0.50, 0.551, 0.70]
    versions = []
    for ua in scores:
        version = add_version(local_mlflow, "ser-ravdess", ua)
        versions.append(version)
        decision = promote_version(local_mlflow, "ravdess", version, margin=0.005)
        stored = local_mlflow.get_model_version("ser-ravdess", version)
        assert stored.tags["ser.promotion.decision"] == ("promoted" if decision.promoted else "kept")
        assert decision.reason in stored.description
        assert local_mlflow.get_model_version_by_alias("ser-ravdess", CHALLENGER).version == version
    expected = reference_champion(list(zip(versions, scores)), margin=0.005)
    assert local_mlflow.get_model_version_by_alias("ser-ravdess", CHAMPION).version == expected
    assert current_champion(local_mlflow, "ser-ravdess").ua_mean == pytest.approx(0.70)


def test_a_version_without_scores_is_refused_with_the_missing_tag(local_mlflow):
    local_mlflow.create_registered_model("ser-savee")
    version = local_mlflow.create_model_version("ser-savee", source="s3://ser-mlflow/promote-tests/no-model").version
    with pytest.raises(ValueError, match=UA_TAG):
        promote_version(local_mlflow, "savee", version)


@pytest.mark.integration
def test_two_promotions_at_once_leave_exactly_one_consistent_champion(stack, monkeypatch):
    """Two promote flows race on the live stack; the global concurrency limit serialises them,
    so the champion is the better version whatever order they ran in."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.promote import PROMOTE_LIMIT, promote

    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(stack.tracking_uri)
    corpus = "savee"
    name = f"ser-{corpus}"
    suffix = uuid.uuid4().hex[:8]
    protocol = f"{PROTOCOL} test-{suffix}"
    if client.search_registered_models(filter_string=f"name = '{name}'") and CHAMPION in client.get_registered_model(name).aliases:
        client.delete_registered_model_alias(name, CHAMPION)
    base = add_version(client, name, 0.30, protocol)
    promote_version(client, corpus, base)
    better, worse = add_version(client, name, 0.60, protocol), add_version(client, name, 0.50, protocol)
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def run(version: str) -> None:
        try:
            results[version] = promote(corpus, version, margin=0.0)
        except BaseException as err:  # surfaced below
            errors.append(err)

    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        # threads do not inherit context variables (where Prefect keeps its settings): copy them
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(run, v)) for v in (worse, better)]
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
