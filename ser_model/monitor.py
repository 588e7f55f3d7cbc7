"""The champion watched on new data: score it on the utterances it never trained on, and measure how
those differ from what it trained on. No tracking server here: ``flows/monitor.py`` logs the result
to MLflow and Prefect, ``ser monitor`` prints it.

    watch_champion(model, manifest, root, reference, reference_folds, reference_root) → MonitorResult

* New rows: rows of the manifest whose audio sha256 is not in the reference manifest (the one the
  champion was trained on), so a renamed or moved copy of a file it has seen is not new
  (:func:`unseen_rows`).
* Score: WA, UA, macro-F1, per-class recall and the confusion matrix of the champion on the new rows
  (``ser_model.metrics.classification_metrics``), beside its own cross-validated fold-mean UA.
* Drift (``data_contracts.drift``): new rows against the reference rows on duration, loudness,
  original sample rate, channels, class and speaker; and the champion's predicted classes on the
  new rows against its predictions on its own validation rows (the release model's validation
  speakers, ``training_splits(..., RELEASE_FOLD)["valid"]``; a champion trained on every speaker,
  ``TrainConfig.release_holdout`` False, has none, and this comparison is left out). Loudness decodes the audio, so each side
  reads at most :data:`LOUDNESS_SAMPLE` files (a seeded random sample).
* Confidence (:data:`CONFIDENCE_FEATURE`): the champion's calibrated confidence, max softmax(z / T)
  with the temperature of its model folder (``ser_model.calibration``), on the new rows against
  the same on its validation rows; a champion without validation rows is compared with the
  calibrated validation confidences its folder recorded (``reference_confidence``: the folds'), and
  without those the comparison is left out. A falling confidence on new data is a warning before
  labels arrive.
* Flag: the champion is *degraded* when its UA on the new rows falls more than ``margin`` below its
  fold mean (:attr:`MonitorResult.degraded`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from data_contracts.drift import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    counts_sample,
    file_loudness,
    ks_statistic,
    total_variation,
)
from ser_model.launch import RELEASE_FOLD
from ser_model.metrics import DEFAULT_UA_MARGIN, HEADLINE_METRICS, classification_metrics

LOUDNESS_SAMPLE = 1000
"""Files decoded per side to measure loudness (all of them when there are fewer)."""
PREDICTED_FEATURE = "predicted_class"
"""The drift feature of the champion's own predictions (new rows against its validation rows)."""
CONFIDENCE_FEATURE = "calibrated_confidence"
"""The drift feature of the champion's calibrated confidence (new rows against validation rows)."""
FEATURES = (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES, PREDICTED_FEATURE, CONFIDENCE_FEATURE)
"""Every drift feature, in report order; the statistic of each is ``drift_statistic``'s."""


def is_numeric(feature: str) -> bool:
    """Whether a drift feature is a number per row (KS statistic) rather than a category (total variation)."""
    return feature in NUMERIC_FEATURES or feature == CONFIDENCE_FEATURE


def unseen_rows(manifest: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``manifest`` whose audio content (``sha256``) is not in ``reference``: a renamed copy
    of a reference file has the same hash, so it is not new."""
    return manifest.loc[~manifest["sha256"].isin(set(reference["sha256"]))]


def drift_statistic(feature: str, reference: Any, new: Any) -> float:
    """The feature's drift number: KS statistic for a numeric feature, total variation otherwise."""
    if is_numeric(feature):
        return ks_statistic(reference, new)
    return total_variation(reference, new)


@dataclass(frozen=True)
class MonitorResult:
    """What the monitor found: the champion's scores on the new rows (None when there are none),
    the drift number of each feature and the two samples behind it (for figures)."""

    labels: tuple[str, ...]
    new_rows: int
    seen_rows: int
    metrics: dict[str, Any] | None
    champion_ua_mean: float | None
    margin: float
    drift: dict[str, float] = field(default_factory=dict)
    samples: dict[str, tuple[list, list]] = field(default_factory=dict)

    @property
    def ua_gap(self) -> float | None:
        """Champion fold-mean UA minus its UA on the new rows (positive: worse on new data)."""
        if self.metrics is None or self.champion_ua_mean is None:
            return None
        return self.champion_ua_mean - self.metrics["UA"]

    @property
    def degraded(self) -> bool:
        """True when the UA on new rows is more than ``margin`` below the fold mean."""
        return self.ua_gap is not None and self.ua_gap > self.margin

    def flat_metrics(self) -> dict[str, float]:
        """Numbers to log: ``new_rows``, ``seen_rows``, ``UA``/``WA``/``macro_f1``, ``recall.<class>``,
        ``champion_UA_mean``, ``UA_gap``, ``degraded`` (0/1) and ``drift.<feature>``."""
        out: dict[str, float] = {"new_rows": float(self.new_rows), "seen_rows": float(self.seen_rows)}
        if self.metrics is not None:
            out.update({m: float(self.metrics[m]) for m in HEADLINE_METRICS})
            out.update(
                {
                    f"recall.{label}": float(value)
                    for label, value in self.metrics["per_class_recall"].items()
                    if value is not None
                }
            )
        if self.champion_ua_mean is not None:
            out["champion_UA_mean"] = float(self.champion_ua_mean)
        if self.ua_gap is not None:
            out["UA_gap"] = float(self.ua_gap)
            out["degraded"] = float(self.degraded)
        out.update({f"drift.{name}": value for name, value in self.drift.items()})
        return out

    def verdict(self) -> str:
        """One sentence: the champion's UA on new rows against its fold mean, and whether it is flagged."""
        if self.metrics is None:
            return f"no new rows: all {self.seen_rows} utterances were in the champion's training manifest"
        score = f"UA {self.metrics['UA']:.4f} on {self.new_rows} new rows"
        if self.champion_ua_mean is None:
            return f"{score}; the champion's fold-mean UA is not known, so nothing is flagged"
        relation = "more than" if self.degraded else "not more than"
        return (
            f"{score} vs fold-mean UA {self.champion_ua_mean:.4f} (gap {self.ua_gap:+.4f}): "
            f"{relation} the margin {self.margin:.4f} below its fold mean"
        )

    def report_lines(self) -> list[str]:
        """The short report ``ser monitor`` prints and the flow publishes."""
        lines = [("DEGRADED: " if self.degraded else "") + self.verdict()]
        if self.metrics is not None:
            lines.append(
                f"WA {self.metrics['WA']:.4f}  macro-F1 {self.metrics['macro_f1']:.4f}  recall "
                + " ".join(
                    f"{label}={value:.2f}"
                    for label, value in self.metrics["per_class_recall"].items()
                    if value is not None
                )
            )
        for name, value in self.drift.items():
            statistic = "KS" if is_numeric(name) else "TV"
            lines.append(f"drift {name}: {statistic} {value:.4f}")
        return lines


def loudness_sample(rows: pd.DataFrame, root: str | os.PathLike, seed: int = 0) -> list[float]:
    """RMS dBFS of at most :data:`LOUDNESS_SAMPLE` of the rows' files (a seeded random choice)."""
    if len(rows) > LOUDNESS_SAMPLE:
        rows = rows.sample(n=LOUDNESS_SAMPLE, random_state=seed)
    return file_loudness(root, rows["path"].tolist()).tolist()


def predicted_counts(metrics: dict[str, Any]) -> list[int]:
    """Utterances predicted as each class: the confusion matrix's column sums."""
    return np.asarray(metrics["confusion"], dtype=np.int64).sum(axis=0).tolist()


def calibrated_confidence(logits: np.ndarray, temperature: float) -> list[float]:
    """The top calibrated probability max_c softmax(z / T)_c of each row of ``logits`` (N, C)."""
    from ser_model.calibration import scaled_probabilities

    return scaled_probabilities(logits, temperature).max(axis=1).tolist()


def watch_champion(
    model: Any,
    manifest: pd.DataFrame,
    root: str | os.PathLike,
    reference: pd.DataFrame,
    reference_folds: pd.DataFrame,
    reference_root: str | os.PathLike,
    champion_ua_mean: float | None = None,
    margin: float = DEFAULT_UA_MARGIN,
    batch_size: int = 16,
    calibration: dict[str, Any] | None = None,
) -> MonitorResult:
    """Score ``model`` (a ``SERModel``, the champion) on the rows of ``manifest`` (audio under
    ``root``) that are not in ``reference`` (the manifest it trained on, audio under
    ``reference_root``, folds ``reference_folds``), and measure drift (see the module doc).
    ``calibration``: its model folder's (`ser_model.calibration.read_calibration`; None: T = 1 and
    no recorded reference confidence)."""
    from ser_model.evaluation import rows_logits
    from ser_model.train import training_splits

    if margin < 0:
        raise ValueError(f"monitor margin {margin}: expected >= 0")
    labels = tuple(model.labels)
    calibration = calibration or {}
    temperature = float(calibration.get("temperature", 1.0))
    new = unseen_rows(manifest, reference)
    base = dict(
        labels=labels,
        new_rows=len(new),
        seen_rows=len(manifest) - len(new),
        champion_ua_mean=champion_ua_mean,
        margin=margin,
    )
    if new.empty:
        return MonitorResult(metrics=None, **base)

    def scored(rows: pd.DataFrame, audio_root: str | os.PathLike) -> tuple[dict[str, Any], list[float]]:
        logits, y = rows_logits(model, rows, audio_root, batch_size=batch_size)
        metrics = classification_metrics(y, logits.argmax(axis=1), len(labels), labels)
        return metrics, calibrated_confidence(logits, temperature)

    metrics, confidence = scored(new, root)
    samples: dict[str, tuple[list, list]] = {
        "duration_s": (reference["duration_s"].tolist(), new["duration_s"].tolist()),
        "loudness_dbfs": (loudness_sample(reference, reference_root), loudness_sample(new, root)),
        **{name: (reference[name].tolist(), new[name].tolist()) for name in CATEGORICAL_FEATURES},
    }
    holdout = model.config.train.release_holdout  # False: it trained on every speaker, none held out
    valid = (
        training_splits(reference, reference_folds, RELEASE_FOLD, holdout=holdout)["valid"]
        if len(reference_folds)
        else None
    )
    reference_confidence = list(calibration.get("reference_confidence", []))
    if valid is not None and not valid.empty:
        on_valid, reference_confidence = scored(valid, reference_root)
        samples[PREDICTED_FEATURE] = (
            counts_sample(predicted_counts(on_valid), labels),
            counts_sample(predicted_counts(metrics), labels),
        )
    if reference_confidence:
        samples[CONFIDENCE_FEATURE] = (reference_confidence, confidence)
    drift = {name: drift_statistic(name, *samples[name]) for name in FEATURES if name in samples}
    return MonitorResult(metrics=metrics, drift=drift, samples=samples, **base)
