"""Promotion: a new registered version becomes ``challenger``; it replaces ``champion`` only
when its cross-validated UA beats the champion's on the same protocol by more than a margin.

Promotions run one at a time: the whole read-compare-move sequence holds the Prefect global
concurrency limit ``ser-promote`` (one slot, created if missing, acquired strictly so a missing
limit is an error rather than no lock). Every decision, with its numbers, is written to the
model version (tags and description) and to a Prefect markdown artifact.

The numbers a decision uses are tags the train flow writes on each version:
``ser.UA_mean`` (mean over the evaluated folds of the test-speaker UA) and ``ser.protocol``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

from data_contracts.labels import CORPORA
from flows.tracking import call_with_retry

log = logging.getLogger(__name__)

PROMOTE_LIMIT = "ser-promote"
CHAMPION = "champion"
CHALLENGER = "challenger"
UA_TAG = "ser.UA_mean"
PROTOCOL_TAG = "ser.protocol"


def registered_model_name(corpus: str) -> str:
    """Registry name of a corpus's models: ``ser-<corpus>``."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {', '.join(CORPORA)}")
    return f"ser-{corpus}"


@dataclass(frozen=True)
class VersionScore:
    """What promotion compares: a registered version's mean UA on its protocol."""

    version: str
    ua_mean: float
    protocol: str


@dataclass(frozen=True)
class PromotionDecision:
    corpus: str
    candidate: VersionScore
    champion_before: VersionScore | None
    margin: float
    promoted: bool
    reason: str

    @property
    def champion_after(self) -> str | None:
        if self.promoted:
            return self.candidate.version
        return None if self.champion_before is None else self.champion_before.version


def decide_promotion(candidate: VersionScore, champion: VersionScore | None, margin: float) -> tuple[bool, str]:
    """Promote when there is no champion, or when both share a protocol and
    ``UA_candidate − UA_champion > margin``; the reason states the numbers."""
    if margin < 0:
        raise ValueError(f"promotion margin {margin}: expected >= 0")
    if champion is None:
        return True, f"no champion yet; version {candidate.version} (UA {candidate.ua_mean:.4f}) becomes champion"
    if champion.version == candidate.version:
        return False, f"version {candidate.version} already is the champion"
    if champion.protocol != candidate.protocol:
        return False, (
            f"not comparable: version {candidate.version} was evaluated on protocol {candidate.protocol!r}, "
            f"champion version {champion.version} on {champion.protocol!r}; champion kept"
        )
    gain = candidate.ua_mean - champion.ua_mean
    versus = f"UA {candidate.ua_mean:.4f} vs champion version {champion.version} (UA {champion.ua_mean:.4f})"
    if gain > margin:
        return True, f"{versus}: gain {gain:+.4f} > margin {margin:.4f}; promoted"
    return False, f"{versus}: gain {gain:+.4f} <= margin {margin:.4f}; champion kept"


def version_score(client: MlflowClient, name: str, version: str) -> VersionScore:
    """The mean UA and protocol tags of a registered version, with a clear error when absent."""
    model_version = call_with_retry(client.get_model_version, name, str(version))
    tags = model_version.tags
    missing = [t for t in (UA_TAG, PROTOCOL_TAG) if t not in tags]
    if missing:
        raise ValueError(
            f"model {name} version {version} lacks tag(s) {missing}; "
            f"the train flow writes {UA_TAG} and {PROTOCOL_TAG} on every version it registers"
        )
    return VersionScore(version=str(version), ua_mean=float(tags[UA_TAG]), protocol=tags[PROTOCOL_TAG])


def current_champion(client: MlflowClient, name: str) -> VersionScore | None:
    """The version behind alias ``champion``, or None when the alias is not set."""
    try:
        model_version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return version_score(client, name, model_version.version)


def decision_markdown(decision: PromotionDecision) -> str:
    champion = decision.champion_before
    rows = [
        ("candidate version", decision.candidate.version),
        ("candidate mean UA", f"{decision.candidate.ua_mean:.4f}"),
        ("protocol", decision.candidate.protocol),
        ("champion before", "none" if champion is None else f"version {champion.version}, UA {champion.ua_mean:.4f}"),
        ("margin", f"{decision.margin:.4f}"),
        ("decision", "promoted to champion" if decision.promoted else "champion kept"),
        ("champion after", decision.champion_after or "none"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"# Promotion of ser-{decision.corpus} version {decision.candidate.version}\n\n| | |\n|---|---|\n{table}\n\n{decision.reason}\n"


def ensure_promote_limit() -> None:
    """Create the one-slot global concurrency limit ``ser-promote`` if it does not exist."""
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(PROMOTE_LIMIT, 1)
        except ObjectAlreadyExists:
            pass


def promote_version(client: MlflowClient, corpus: str, version: str, margin: float = 0.0) -> PromotionDecision:
    """The registry part of a promotion (call it holding the ``ser-promote`` limit): set
    ``challenger``, compare with ``champion``, move ``champion`` when the rule says so, and
    record the decision on the version."""
    name = registered_model_name(corpus)
    candidate = version_score(client, name, version)
    call_with_retry(client.set_registered_model_alias, name, CHALLENGER, candidate.version)
    champion = current_champion(client, name)
    promoted, reason = decide_promotion(candidate, champion, margin)
    if promoted:
        call_with_retry(client.set_registered_model_alias, name, CHAMPION, candidate.version)
    decision = PromotionDecision(corpus, candidate, champion, margin, promoted, reason)
    record = {
        "ser.promotion.decision": "promoted" if promoted else "kept",
        "ser.promotion.reason": reason,
        "ser.promotion.champion_before": "none" if champion is None else champion.version,
        "ser.promotion.champion_before_UA": "none" if champion is None else f"{champion.ua_mean:.6f}",
        "ser.promotion.margin": f"{margin:.6f}",
    }
    for key, value in record.items():
        call_with_retry(client.set_model_version_tag, name, candidate.version, key, value)
    call_with_retry(client.update_model_version, name, candidate.version, description=decision_markdown(decision))
    return decision


@flow(name="promote")
def promote(corpus: str, version: str, margin: float = 0.0) -> dict:
    """Promote ``ser-<corpus>`` version ``version`` (see module doc); returns the decision."""
    logger = get_run_logger()
    ensure_promote_limit()
    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI"))
    with concurrency(PROMOTE_LIMIT, occupy=1, strict=True):
        decision = promote_version(client, corpus, str(version), margin)
    logger.info("ser-%s version %s: %s", corpus, version, decision.reason)
    what = f"promotion decision for ser-{corpus} version {version}"
    create_markdown_artifact(decision_markdown(decision), key=f"promote-{corpus}", description=what)
    return {**asdict(decision), "champion_after": decision.champion_after}
