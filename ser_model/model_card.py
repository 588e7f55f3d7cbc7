"""MODEL_CARD.md: what a trained model is, on what data, how well, how far to trust it, and under
which terms, generated from what the run recorded (never typed by hand).

`data_record` is what a fit records of its data in result.json (``data``: corpus, manifest
fingerprint, licence, speakers and utterances per class of each split) beside ``code_version``
(`ser_stack.provenance.code_version`); `model_card` writes the card from a result.json record,
the model's config.json and, for a release or a registered version, the results of the folds
(their test figures, the mean calibration and the threshold table pooled over them) and the recipe
(preset and overrides). The fit writes it into the model folder (`write_model_card`); the train
flow sets it as the registered version's description.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from data_contracts.corpora import SPECS
from data_contracts.corpora.base import USER_DATA_LICENCE
from data_contracts.fingerprint import manifest_fingerprint
from ser_model.calibration import (
    calibration_error_floor,
    calibration_means,
    fold_results_beside,
    threshold_table,
)
from ser_model.launch import BEST_FOLDER, RELEASE_FOLD, fold_folder_name, read_result
from ser_stack.files import write_atomically
from ser_stack.names import GIT_COMMIT_TAG, GIT_DIRTY_TAG
from ser_stack.provenance import code_version
from ser_stack.settings import REPO_ROOT

if TYPE_CHECKING:
    from ser_model.config import SERConfig

__all__ = [
    "MODEL_CARD_FILE",
    "data_record",
    "fit_provenance",
    "PROVENANCE_KEYS",
    "model_card",
    "write_model_card",
    "write_fit_card",
]

MODEL_CARD_FILE = "MODEL_CARD.md"
NON_COMMERCIAL = "NC"
"""The Creative Commons element of a licence that forbids commercial use (CC BY-NC-SA 4.0)."""
BUILT_IN_LANGUAGE = "English"
"""The language of the four built-in corpora (CORPORA.md: RAVDESS, IEMOCAP, MSP-IMPROV, SAVEE)."""


def corpus_licence(corpus: str | None) -> str:
    """The licence of a corpus from its spec (`CorpusSpec.licence`); a dataset without a spec is the user's."""
    spec = SPECS.get(corpus or "")
    return spec.licence if spec is not None else USER_DATA_LICENCE


def data_record(
    manifest: pd.DataFrame, splits: Mapping[str, pd.DataFrame], corpus: str | None
) -> dict[str, Any]:
    """result.json's ``data``: the corpus, its licence, the fingerprint of the whole manifest, and per
    split its speakers and utterances per class (``label`` and ``speaker`` columns)."""
    return {
        "corpus": corpus,
        "licence": corpus_licence(corpus),
        "fingerprint": manifest_fingerprint(manifest),
        "utterances": len(manifest),
        "splits": {
            name: {
                "speakers": sorted(rows["speaker"].astype(str).unique().tolist()),
                "utterances_per_class": {
                    str(k): int(v) for k, v in rows["label"].value_counts().sort_index().items()
                },
            }
            for name, rows in splits.items()
            if len(rows)
        },
    }


PROVENANCE_KEYS = ("data", "code_version")
"""The fields of result.json that `fit_provenance` writes."""


def fit_provenance(manifest: pd.DataFrame, splits: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """What a fit's result.json records of where its model comes from: ``data`` (`data_record` of
    the manifest's corpus) and the ``code_version`` that trained it."""
    corpus = str(manifest["corpus"].iloc[0]) if "corpus" in manifest and len(manifest) else None
    return {"data": data_record(manifest, splits, corpus), "code_version": code_version(REPO_ROOT)}


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table."""
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else ("—" if v is None else str(v))  # noqa: E731
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows),
    ]


def _data_section(data: Mapping[str, Any]) -> list[str]:
    splits = data.get("splits", {})
    classes = sorted({c for s in splits.values() for c in s["utterances_per_class"]})
    lines = [
        "## Data",
        f"- dataset: {data.get('corpus') or 'not recorded'}; manifest fingerprint `{data.get('fingerprint', 'not recorded')}` "
        f"({data.get('utterances', '?')} utterances)",
    ]
    lines += [
        f"- {name} speakers ({len(s['speakers'])}): {', '.join(s['speakers'])}" for name, s in splits.items()
    ]
    lines += ["", "Utterances per class:", ""]
    lines += _table(
        ["class", *splits],
        [[c, *(s["utterances_per_class"].get(c, 0) for s in splits.values())] for c in classes],
    )
    return lines


def _scores_section(result: Mapping[str, Any]) -> list[str]:
    split = "test" if result.get("test") else "valid"
    scores = result.get(split) or {}
    lines = ["## Protocol and selection", f"- {result.get('selection_rule', 'not recorded')}", ""]
    if not scores:
        return lines + ["No held-out speakers scored this model (see the folds below)."]
    lines += [
        f"## Scores on the {split} speakers (n={scores.get('n')})",
        f"WA {scores['WA']:.4f}, UA {scores['UA']:.4f}, macro-F1 {scores['macro_f1']:.4f}.",
        "",
        "Per-class recall:",
        "",
        *_table(["class", "recall"], [[c, r] for c, r in scores["per_class_recall"].items()]),
        "",
        "Confusion (rows: true class, columns: predicted):",
        "",
        *_table(
            ["", *scores["labels"]], [[c, *row] for c, row in zip(scores["labels"], scores["confusion"])]
        ),
    ]
    return lines


def _folds_section(folds: Mapping[int, Mapping[str, Any]]) -> list[str]:
    tested = {k: r for k, r in sorted(folds.items()) if r.get("test")}
    if not tested:
        return []
    ua = [r["test"]["UA"] for r in tested.values()]
    rows = [
        [k, r["test"]["WA"], r["test"]["UA"], r["test"]["macro_f1"], ", ".join(r["speakers"]["test"])]
        for k, r in tested.items()
    ]
    return [
        f"## Cross-validation: {len(tested)} folds on test speakers (UA mean {np.mean(ua):.4f} ± {np.std(ua):.4f})",
        "",
        *_table(["fold", "WA", "UA", "macro-F1", "test speakers"], rows),
    ]


def _temperature_source(calibration: Mapping[str, Any]) -> str:
    """Where the temperature comes from: the release's ``source``, a fold's ``fitted_on``, or none."""
    if calibration.get("source"):
        return str(calibration["source"])
    if calibration.get("fitted_on"):
        return f"fitted on the {calibration['fitted_on']}"
    return "uncalibrated (T = 1)"


def _calibration_section(result: Mapping[str, Any], folds: Mapping[int, Mapping[str, Any]]) -> list[str]:
    calibration = result.get("calibration") or {}
    lines = [
        "## Calibration",
        f"- temperature T = {calibration.get('temperature', 1.0):.4f}: {_temperature_source(calibration)}",
    ]
    measured = [r["calibration"] for _, r in sorted(folds.items()) if "ECE_after" in r.get("calibration", {})]
    own = [calibration] if "ECE_after" in calibration else []
    for title, blocks in (
        ("this model, on its test speakers", own),
        (f"mean over {len(measured)} folds, on their test speakers", measured),
    ):
        if blocks:
            means = calibration_means(blocks)
            lines += ["", f"{title} (ECE: 15 equal-width bins):", ""]
            pairs = [("ECE", "ECE"), ("Brier", "brier"), ("NLL", "NLL")]
            lines += _table(
                ["figure", "before", "after"],
                [[n, means[f"{k}_before"], means[f"{k}_after"]] for n, k in pairs],
            )
            floors = [
                calibration_error_floor(b["reliability_after"]) for b in blocks if "reliability_after" in b
            ]
            if floors:
                lines += [
                    "",
                    f"ECE's floor at this sample size (what a perfectly calibrated model reads): "
                    f"{sum(floors) / len(floors):.4f}",
                ]
    coverages = [b["coverage"] for b in (measured or own)]
    if coverages:
        lines += [
            "",
            "## Confidence thresholds",
            "The smallest --min-confidence P at which the kept answers reach a target accuracy, "
            'pooled over the test speakers above; answers below P are labelled "uncertain".',
            "",
        ]
        rows = [
            [r["target_accuracy"], r["min_confidence"], r["accuracy"], r["kept_share"]]
            for r in threshold_table(coverages)
        ]
        lines += _table(["target accuracy", "min_confidence P", "accuracy kept", "share kept"], rows)
    return lines


def _start_line(init: Mapping[str, Any] | None) -> str:
    """Where the weights started: from scratch, or the model of result.json's ``init``
    (ser_model/warm_start.py) with the parts copied and whether the head was new."""
    if not init:
        return "- started from scratch (random initialisation)"
    head = "copied" if init.get("head") == "copied" else f"new ({init.get('head_reason')})"
    return f"- started from `{init.get('source')}`: copied {', '.join(init.get('copied', []))}; head {head}"


def _recipe_section(
    config: Mapping[str, Any],
    recipe: Mapping[str, Any] | None,
    code: Mapping[str, str],
    init: Mapping[str, Any] | None = None,
) -> list[str]:
    model, train = config.get("model", {}), config.get("train", {})
    lines = ["## Recipe", _start_line(init)]
    if recipe:
        lines.append(
            f"- preset `{recipe.get('preset')}`, overrides `{json.dumps(recipe.get('overrides') or {})}`"
        )
    lines += [
        f"- backbone `{model.get('backbone')}`, {train.get('epochs')} epochs, lr {train.get('lr')}, batch {train.get('batch_size')}, "
        f"seed {train.get('seed')}; every value in config.json beside this card",
        f"- code version: git commit `{code.get(GIT_COMMIT_TAG, 'not recorded')}` (uncommitted changes: {code.get(GIT_DIRTY_TAG, 'not recorded')})",
    ]
    return lines


def _use_section(data: Mapping[str, Any]) -> list[str]:
    licence = data.get("licence", USER_DATA_LICENCE)
    language = (
        BUILT_IN_LANGUAGE
        if data.get("corpus") in SPECS and licence != USER_DATA_LICENCE
        else "not recorded (a user dataset)"
    )
    n_speakers = sum(len(s["speakers"]) for s in data.get("splits", {}).values())
    lines = [
        "## Intended use",
        "Research and prototyping of speech emotion recognition on speech like the training data: one speaker per "
        "input, the classes listed above. Act on an answer only above a confidence threshold chosen from the table, "
        "and keep a person in the loop for decisions about people.",
        "",
        "## Known limits",
        f"- figures are speaker-independent but come from {n_speakers} speakers in all: expect other speakers, microphones "
        "and rooms to score lower",
        "- acted (or elicited) speech: spontaneous emotion is subtler and rarer",
        f"- languages seen: {language}",
        "- the temperature is fitted on few validation speakers; the release model takes the folds' median",
        "",
        "## Licence of the training data",
        f"- {licence}",
    ]
    if re.search(rf"\b{NON_COMMERCIAL}\b", licence):
        lines.append(
            "- **non-commercial**: models trained on this data inherit its non-commercial terms; do not use this model commercially"
        )
    return lines


def model_card(
    result: Mapping[str, Any],
    config: Mapping[str, Any],
    folds: Mapping[int, Mapping[str, Any]] | None = None,
    recipe: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> str:
    """The card (module docstring) of the model of ``result`` (its result.json) and ``config`` (its
    config.json); ``folds``: {k: result.json} of the folds it is judged by (a release's); ``recipe``:
    {"preset", "overrides"}."""
    folds = folds or {}
    data = result.get("data") or {}
    name = title or f"{data.get('corpus') or config.get('corpus') or 'SER'} model"
    lines = [f"# Model card: {name}", "", f"Classes: {', '.join(config.get('labels', []))}.", ""]
    for section in (
        _data_section(data),
        _scores_section(result),
        _folds_section(folds),
        _calibration_section(result, folds),
        _recipe_section(config, recipe, result.get("code_version") or {}, result.get("init")),
        _use_section(data),
    ):
        if section:
            lines += [*section, ""]
    return "\n".join(lines)


def write_model_card(
    folder: str | os.PathLike, result: Mapping[str, Any], config: Mapping[str, Any], **kwargs: Any
) -> Path:
    """``folder/MODEL_CARD.md`` from `model_card` (``kwargs``: its folds, recipe, title)."""
    path = Path(folder) / MODEL_CARD_FILE
    write_atomically(path, model_card(result, config, **kwargs))
    return path


def write_fit_card(out_dir: str | os.PathLike, config: SERConfig, fold: int) -> Path:
    """The card of a fit's model folder (``out_dir/best``) from the result.json it just wrote in
    ``out_dir``; a release's card also gives the folds beside it (their figures, the threshold table)."""
    out_dir = Path(out_dir)
    return write_model_card(
        out_dir / BEST_FOLDER,
        read_result(out_dir),
        config.to_dict(),
        folds=fold_results_beside(out_dir) if fold == RELEASE_FOLD else None,
        title=f"{config.corpus or 'SER'} {fold_folder_name(fold)}",
    )
