"""Promotion: a new registered version becomes ``challenger``; it replaces ``champion`` when it
is better on what the two were both evaluated on. The rule, in order:

1. no champion yet: the version becomes champion;
2. the version already is the champion: nothing moves;
3. different label sets: not comparable (the models answer with different classes); champion kept;
4. comparable folds: a fold both versions evaluated, with the same test speakers (for a version
   registered before test speakers were recorded, the same data fingerprint stands in for them:
   the fold protocol is a function of the manifest). None: not comparable, champion kept, and
   the reason names the folds to train for a comparison (or how to move the alias by hand);
5. paired gain = mean over the comparable folds of (candidate UA − champion UA), each fold scored
   on the same test speakers by both, so speaker difficulty cancels out;
6. a fuller evaluation of the same data (same fingerprint, a strict superset of the champion's
   folds) replaces a partial one when it is not worse on the shared folds (gain >= 0): the demo's
   fold-0 champion gives way to a full-protocol run;
7. otherwise (same folds, fewer folds, or new data) the candidate is promoted when gain > margin.
   When the data fingerprints differ, the decision says so: the scores are on the folds whose
   test speakers both runs held out, not on the same utterances.

Promotions run one at a time: the whole read-compare-move sequence holds the Prefect global
concurrency limit ``ser-promote`` (one slot, created if missing, acquired strictly so a missing
limit is an error rather than no lock). Every decision, with its numbers, is written to the
model version (tags ``ser.promotion.*`` and, after its model card, the description: a per-fold table and the reason)
and to a Prefect markdown artifact. When the train flow watched the champion on the new data first
(flows/monitor.py), the decision quotes that score (tag ``ser.promotion.champion_on_new_data``).

The numbers a decision uses are tags the train flow writes on each version (`fold_score_tags`):
``ser.fold_scores`` (per evaluated fold, the test-speaker UA and those speakers), ``ser.labels``
and ``ser.data_fingerprint``; ``ser.UA_mean`` and ``ser.protocol`` are shown, not compared.
Versions registered before ``ser.fold_scores`` existed are read from their parent run's
``fold_<k>.UA`` metrics (``ser.parent_run_id``), with the corpus's standard labels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.concurrency.sync import concurrency

from data_contracts.datasets import resolve_dataset
from data_contracts.labels import LABELS
from flows.limits import ensure_limit
from flows.registry import create_model_version, version_description
from ser_model.metrics import fold_of_metric_name, summary_name
from ser_stack.names import (
    CHALLENGER,
    CHAMPION,
    CORPUS_TAG,
    FINGERPRINT_TAG,
    FOLD_SCORES_TAG,
    GIT_COMMIT_TAG,
    LABELS_TAG,
    MONITOR_QUOTE_TAG,
    PARENT_RUN_TAG,
    PROMOTE_LIMIT,
    PROTOCOL_TAG,
    REGISTERED_VERSION_TAG,
    SELECTION_TAG,
    promotion_tag,
    registered_model_name,
    summary_tag,
)
from ser_stack.settings import StackSettings

log = logging.getLogger(__name__)

RUN_TAGS_ON_VERSION = (CORPUS_TAG, FINGERPRINT_TAG, PROTOCOL_TAG, SELECTION_TAG, GIT_COMMIT_TAG)
"""Tags of a training's parent run that its registered version carries too."""
UA_TAG = summary_tag(summary_name("UA", "mean"))
"""The fold-mean test UA a registered version carries, read by promotion."""

FIRST, ALREADY, NOT_COMPARABLE, FULLER, PAIRED = (
    "first_champion",
    "already_champion",
    "not_comparable",
    "fuller_evaluation",
    "paired_gain",
)
"""The rule that decided (tag ``ser.promotion.rule``), one per case of the module doc."""
PROMOTION_HEADING = "# Promotion of "
"""How the decision starts in a version's description, after the model card (a new decision replaces it)."""


@dataclass(frozen=True)
class FoldScore:
    """One evaluated fold: test-speaker UA, and those speakers (None when not recorded)."""

    ua: float
    test_speakers: tuple[str, ...] | None


@dataclass(frozen=True)
class VersionScore:
    """What promotion compares: a registered version's per-fold UA, data and label set."""

    version: str
    folds: dict[int, FoldScore]
    fingerprint: str
    labels: tuple[str, ...]
    protocol: str = ""

    @property
    def ua_mean(self) -> float:
        return sum(f.ua for f in self.folds.values()) / len(self.folds)


@dataclass(frozen=True)
class PromotionDecision:
    """One promotion decision: the two versions' scores, the rule that decided, its reason, and
    the comparable folds with the paired gain over them (empty / None when nothing was compared)."""

    corpus: str
    candidate: VersionScore
    champion_before: VersionScore | None
    margin: float
    promoted: bool
    rule: str
    reason: str
    compared_folds: tuple[int, ...] = ()
    gain: float | None = None
    same_data: bool | None = None

    @property
    def champion_after(self) -> str | None:
        if self.promoted:
            return self.candidate.version
        return None if self.champion_before is None else self.champion_before.version


def fold_score_tags(
    ua_by_fold: dict[int, float], test_speakers: dict[int, list[str]], labels: tuple[str, ...]
) -> dict[str, str]:
    """The version tags promotion reads (`read_fold_scores` is the inverse): per evaluated fold
    its test-speaker UA and those speakers, and the label set."""
    scores = {
        str(k): {"UA": round(float(ua), 6), "test_speakers": sorted(test_speakers[k])}
        for k, ua in sorted(ua_by_fold.items())
    }
    return {FOLD_SCORES_TAG: json.dumps(scores, sort_keys=True), LABELS_TAG: json.dumps(list(labels))}


def read_fold_scores(text: str, where: str) -> dict[int, FoldScore]:
    """Parse a ``ser.fold_scores`` tag; ValueError naming ``where`` when it is malformed."""
    try:
        raw = json.loads(text)
        folds = {int(k): FoldScore(float(v["UA"]), tuple(v["test_speakers"])) for k, v in raw.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(
            f"{where}: tag {FOLD_SCORES_TAG} is not a JSON object of fold -> {{'UA': number, 'test_speakers': [...]}}: {text[:200]!r}"
        ) from err
    if not folds:
        raise ValueError(f"{where}: tag {FOLD_SCORES_TAG} lists no evaluated fold")
    return folds


def comparable_folds(candidate: VersionScore, champion: VersionScore) -> list[int]:
    """Folds both evaluated on the same test speakers (the same fingerprint stands in for
    speakers a version did not record: on the same manifest, fold k has the same speakers)."""
    same_data = candidate.fingerprint == champion.fingerprint

    def same_speakers(mine: FoldScore, theirs: FoldScore) -> bool:
        if mine.test_speakers is None or theirs.test_speakers is None:
            return same_data
        return mine.test_speakers == theirs.test_speakers

    return [
        k
        for k in sorted(set(candidate.folds) & set(champion.folds))
        if same_speakers(candidate.folds[k], champion.folds[k])
    ]


def _folds_text(score: VersionScore) -> str:
    return "; ".join(
        f"fold {k} ({', '.join(f.test_speakers) if f.test_speakers is not None else 'speakers not recorded'})"
        for k, f in sorted(score.folds.items())
    )


def _fold_list(folds) -> str:
    return ",".join(map(str, sorted(folds)))


def decide_promotion(
    corpus: str, candidate: VersionScore, champion: VersionScore | None, margin: float
) -> PromotionDecision:
    """The promotion rule of the module doc, a pure function of the two versions' scores. The
    decision's reason states the rule, the folds and numbers compared, and which data they came from."""
    if margin < 0:
        raise ValueError(f"promotion margin {margin}: expected >= 0")

    def decided(
        promoted: bool, rule: str, reason: str, folds=(), gain: float | None = None
    ) -> PromotionDecision:
        same_data = None if champion is None else candidate.fingerprint == champion.fingerprint
        return PromotionDecision(
            corpus, candidate, champion, margin, promoted, rule, reason, tuple(folds), gain, same_data
        )

    v = f"version {candidate.version}"
    if champion is None:
        return decided(
            True,
            FIRST,
            f"promoted: no champion yet; {v} (mean UA {candidate.ua_mean:.4f} on folds {_fold_list(candidate.folds)}) becomes champion",
        )
    c = f"champion version {champion.version}"
    by_hand = f"MlflowClient().set_registered_model_alias('{registered_model_name(corpus)}', '{CHAMPION}', '{candidate.version}')"
    if champion.version == candidate.version:
        return decided(False, ALREADY, f"kept: {v} already is the champion")
    if candidate.labels != champion.labels:
        return decided(
            False,
            NOT_COMPARABLE,
            (
                f"kept: not comparable, the label sets differ ({v}: {list(candidate.labels)}; {c}: {list(champion.labels)}), "
                f"so the models answer with different classes; the champion is kept when nothing is comparable. "
                f"If the new label set is intended, move the alias by hand: {by_hand}"
            ),
        )
    same_data = candidate.fingerprint == champion.fingerprint
    data = (
        f"same data (manifest {candidate.fingerprint[:12]})"
        if same_data
        else f"data differ ({v} trained on manifest {candidate.fingerprint[:12]}, {c} on {champion.fingerprint[:12]}), "
        f"so compared on the folds whose test speakers both held out"
    )
    folds = comparable_folds(candidate, champion)
    if not folds:
        return decided(
            False,
            NOT_COMPARABLE,
            (
                f"kept: not comparable, no fold was evaluated by both on the same test speakers ({data}; "
                f"{v}: {_folds_text(candidate)}; {c}: {_folds_text(champion)}); the champion is kept when nothing is comparable. "
                f"Train {v}'s configuration on fold(s) {_fold_list(champion.folds)} to compare, or move the alias by hand: {by_hand}"
            ),
        )
    gain = sum(candidate.folds[k].ua - champion.folds[k].ua for k in folds) / len(folds)
    mine = sum(candidate.folds[k].ua for k in folds) / len(folds)
    theirs = sum(champion.folds[k].ua for k in folds) / len(folds)
    numbers = f"on fold(s) {_fold_list(folds)}, {data}: {v} UA {mine:.4f} vs {c} UA {theirs:.4f}, paired gain {gain:+.4f}"
    if same_data and set(candidate.folds) > set(champion.folds):
        promoted = gain >= 0
        outcome = (
            "not worse on the shared folds, so it replaces the partial evaluation"
            if promoted
            else "worse on the shared folds"
        )
        return decided(
            promoted,
            FULLER,
            (
                f"{'promoted' if promoted else 'kept'}: {v} is a fuller evaluation of the same data (folds "
                f"{_fold_list(candidate.folds)}; {c}: folds {_fold_list(champion.folds)}); {numbers} "
                f"{'>=' if promoted else '<'} 0: {outcome}"
            ),
            folds,
            gain,
        )
    promoted = gain > margin
    return decided(
        promoted,
        PAIRED,
        f"{'promoted' if promoted else 'kept'}: {numbers} {'>' if promoted else '<='} margin {margin:.4f}",
        folds,
        gain,
    )


def legacy_fold_scores(client: MlflowClient, tags: dict[str, str]) -> dict[int, FoldScore] | None:
    """Per-fold UA of a version registered before ``ser.fold_scores``: its parent run's
    ``fold_<k>.UA`` metrics (test speakers not recorded); None when there is no parent run tag."""
    if PARENT_RUN_TAG not in tags:
        return None
    metrics = client.get_run(tags[PARENT_RUN_TAG]).data.metrics
    folds = {
        fold: FoldScore(float(value), None)
        for key, value in metrics.items()
        if (fold := fold_of_metric_name(key, "UA")) is not None
    }
    return folds or None


def version_score(client: MlflowClient, name: str, version: str) -> VersionScore:
    """The per-fold scores, data fingerprint and labels of a registered version, with a clear
    error when its tags cannot tell them."""
    model_version = client.get_model_version(name, str(version))
    tags = model_version.tags
    where = f"model {name} version {version}"
    if FOLD_SCORES_TAG in tags:
        folds = read_fold_scores(tags[FOLD_SCORES_TAG], where)
    else:
        folds = legacy_fold_scores(client, tags)
    if folds is None or FINGERPRINT_TAG not in tags:
        missing = [t for t in (FOLD_SCORES_TAG, FINGERPRINT_TAG) if t not in tags]
        raise ValueError(
            f"{where} lacks tag(s) {missing}; the train flow writes {FOLD_SCORES_TAG}, {FINGERPRINT_TAG} and {UA_TAG} on "
            f"every version it registers (older versions: {UA_TAG} with {PARENT_RUN_TAG}, whose fold_<k>.UA metrics are read)"
        )
    corpus = name.removeprefix("ser-")
    labels = tuple(json.loads(tags[LABELS_TAG])) if LABELS_TAG in tags else LABELS.get(corpus, ())
    return VersionScore(str(version), folds, tags[FINGERPRINT_TAG], labels, tags.get(PROTOCOL_TAG, ""))


def current_champion(client: MlflowClient, name: str) -> VersionScore | None:
    """The version behind alias ``champion``, or None when the alias is not set."""
    try:
        model_version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return version_score(client, name, model_version.version)


def fold_table_markdown(
    candidate: VersionScore, champion: VersionScore | None, compared: tuple[int, ...]
) -> str:
    """Per fold: test speakers, both UAs, the paired difference where the fold was compared."""
    folds = sorted(set(candidate.folds) | set(champion.folds if champion else ()))
    rows = []
    for k in folds:
        mine = candidate.folds.get(k)
        theirs = champion.folds.get(k) if champion else None
        speakers = next(
            (f.test_speakers for f in (mine, theirs) if f is not None and f.test_speakers is not None), None
        )
        cells = [
            str(k),
            ", ".join(speakers) if speakers else "not recorded",
            f"{mine.ua:.4f}" if mine else "-",
            f"{theirs.ua:.4f}" if theirs else "-",
            f"{mine.ua - theirs.ua:+.4f}" if k in compared else "not compared",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    header = (
        "| fold | test speakers | candidate UA | champion UA | paired difference |\n|---|---|---|---|---|"
    )
    return header + "\n" + "\n".join(rows)


def decision_markdown(decision: PromotionDecision) -> str:
    champion = decision.champion_before
    rows = [
        ("candidate version", decision.candidate.version),
        (
            "candidate mean UA",
            f"{decision.candidate.ua_mean:.4f} on folds {_fold_list(decision.candidate.folds)}",
        ),
        ("candidate data", decision.candidate.fingerprint),
        ("protocol", decision.candidate.protocol or "not recorded"),
        (
            "champion before",
            "none"
            if champion is None
            else f"version {champion.version}, mean UA {champion.ua_mean:.4f} on folds {_fold_list(champion.folds)}",
        ),
        ("champion data", "none" if champion is None else champion.fingerprint),
        ("rule", decision.rule),
        ("margin", f"{decision.margin:.4f}"),
        ("decision", "promoted to champion" if decision.promoted else "champion kept"),
        ("champion after", decision.champion_after or "none"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    per_fold = fold_table_markdown(decision.candidate, champion, decision.compared_folds)
    return (
        f"{PROMOTION_HEADING}ser-{decision.corpus} version {decision.candidate.version}\n\n| | |\n|---|---|\n{table}\n\n"
        f"{per_fold}\n\n{decision.reason}\n"
    )


def promote_version(
    client: MlflowClient, corpus: str, version: str, margin: float = 0.0, monitor_quote: str | None = None
) -> PromotionDecision:
    """The registry part of a promotion (call it holding the ``ser-promote`` limit): set
    ``challenger``, compare with ``champion``, move ``champion`` when the rule says so, and
    record the decision on the version. ``monitor_quote`` (the monitor's sentence on how the
    champion did on the new data, flows/monitor.py) is quoted beside the decision."""
    name = registered_model_name(resolve_dataset(corpus).name)
    candidate = version_score(client, name, version)
    client.set_registered_model_alias(name, CHALLENGER, candidate.version)
    champion = current_champion(client, name)
    decision = decide_promotion(corpus, candidate, champion, margin)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, candidate.version)
    record = {
        promotion_tag("decision"): "promoted" if decision.promoted else "kept",
        promotion_tag("rule"): decision.rule,
        promotion_tag("reason"): decision.reason,
        promotion_tag("compared_folds"): _fold_list(decision.compared_folds) or "none",
        promotion_tag("paired_gain"): "none" if decision.gain is None else f"{decision.gain:+.6f}",
        promotion_tag("data"): "none"
        if decision.same_data is None
        else ("same" if decision.same_data else "different"),
        promotion_tag("champion_before"): "none" if champion is None else champion.version,
        promotion_tag("champion_before_UA"): "none" if champion is None else f"{champion.ua_mean:.6f}",
        promotion_tag("margin"): f"{margin:.6f}",
    }
    if monitor_quote is not None:
        record[MONITOR_QUOTE_TAG] = monitor_quote
    for key, value in record.items():
        client.set_model_version_tag(name, candidate.version, key, value)
    card = client.get_model_version(name, candidate.version).description or ""
    decided = decision_markdown(decision) + monitor_markdown(monitor_quote)
    client.update_model_version(
        name, candidate.version, description=version_description(card.split(PROMOTION_HEADING)[0], decided)
    )
    return decision


def monitor_markdown(monitor_quote: str | None) -> str:
    """The decision's paragraph on the champion's score on the new data (empty when not watched)."""
    return "" if monitor_quote is None else f"\nChampion on the new data: {monitor_quote}\n"


@flow(name="promote")
def promote(corpus: str, version: str, margin: float = 0.0, monitor_quote: str | None = None) -> dict:
    """Promote ``ser-<corpus>`` version ``version`` (see module doc), quoting ``monitor_quote``
    (the champion on the new data) beside the decision; returns the decision."""
    logger = get_run_logger()
    ensure_limit(PROMOTE_LIMIT, 1)
    client = MlflowClient(StackSettings.from_env().tracking_uri)
    with concurrency(PROMOTE_LIMIT, occupy=1, strict=True):
        decision = promote_version(client, corpus, str(version), margin, monitor_quote)
    logger.info("ser-%s version %s: %s", corpus, version, decision.reason)
    if monitor_quote is not None:
        logger.info("champion on the new data: %s", monitor_quote)
    what = f"promotion decision for ser-{corpus} version {version}"
    create_markdown_artifact(
        decision_markdown(decision) + monitor_markdown(monitor_quote),
        key=f"promote-{corpus}",
        description=what,
    )
    return {**asdict(decision), "champion_after": decision.champion_after, "monitor": monitor_quote}


def protocol_name(corpus: str, n_folds: int, folds: list[int]) -> str:
    """What a mean UA was measured on, for people reading the registry; promotion compares the
    per-fold scores instead (:func:`decide_promotion`)."""
    return f"{corpus}: speaker-independent, {n_folds} folds, evaluated folds {','.join(map(str, folds))}, selection on validation speakers"


def fold_test_speakers(fold_table: pd.DataFrame, folds: Iterable[int]) -> dict[int, list[str]]:
    """The test speakers of each of ``folds`` in a fold table (``fold``, ``role``, ``speaker``)."""
    test = fold_table[fold_table["role"] == "test"]
    return {k: test.loc[test["fold"] == k, "speaker"].tolist() for k in folds}


def register_release(
    client: MlflowClient,
    parent_id: str,
    model_uri: str,
    ua_by_fold: dict[int, float],
    fold_table: pd.DataFrame,
    summary: dict[str, float],
    labels: tuple[str, ...],
    card: str = "",
    release_tags: dict[str, str] | None = None,
) -> tuple[str, bool]:
    """(version, newly registered): the release model of a training's parent run registered as
    ``ser-<corpus>``, once: a rerun finds the version in the parent's
    :data:`REGISTERED_VERSION_TAG`. The version carries the parent's :data:`RUN_TAGS_ON_VERSION`,
    the parent run id, the tags promotion reads (:func:`fold_score_tags`: per evaluated fold its
    test-speaker UA and those speakers, the labels), the fold summary's scores and ``release_tags``
    (the threshold table, flows/release.py); its description is the model ``card``."""
    run_tags = client.get_run(parent_id).data.tags
    if REGISTERED_VERSION_TAG in run_tags:
        return run_tags[REGISTERED_VERSION_TAG], False
    name = registered_model_name(resolve_dataset(run_tags[CORPUS_TAG]).name)
    scores = {
        summary_tag(key): f"{summary[key]:.6f}"
        for key in (summary_name("UA", "std"), summary_name("WA", "mean"), summary_name("macro_f1", "mean"))
    }
    tags = {
        **{key: run_tags[key] for key in RUN_TAGS_ON_VERSION},
        **fold_score_tags(ua_by_fold, fold_test_speakers(fold_table, ua_by_fold), labels),
        **scores,
        UA_TAG: f"{summary[summary_name('UA', 'mean')]:.6f}",
        PARENT_RUN_TAG: parent_id,
        **(release_tags or {}),
    }
    version = create_model_version(client, name, model_uri, tags, description=card)
    client.set_tag(parent_id, REGISTERED_VERSION_TAG, version)
    return version, True
