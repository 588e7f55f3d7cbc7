"""What a fit hands back and leaves in its folder: the `FitResult`, `result.json`, the epochs'
`metrics.jsonl`, and the callbacks that hear of them (on rank 0 only).

A callback is any object with some of ``on_epoch_end(epoch, record)``, ``on_checkpoint(path)`` and
``on_fit_end(result)``; a hook it lacks is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ser_model.config import TrainConfig
from ser_model.launch import METRICS_FILE, RESULT_FILE
from ser_stack.files import write_atomically

__all__ = ["FitResult", "write_result", "write_history", "call_hook"]


@dataclass(frozen=True)
class FitResult:
    """What `fit` produced: the selected epoch (1-based), its validation and test metrics
    (`{}` for the release fold), per-epoch history and the folders written.
    ``test_last_epoch`` (in ``result.json``): the test metrics of the last epoch's weights, beside
    the selected epoch's; a record for choosing how the release model ends (on all speakers for a
    fixed number of epochs, or selected on held-out ones), never used to select.
    ``uses_test_speaker_statistics``: the test speakers were normalised with the log-mel statistics
    of their own (unlabelled) test utterances (``model.fbank_norm = "speaker"``, ``ser_model.speaker_norm``).
    ``calibration``: the temperature of the model folder and, for a fold, its figures on the test
    speakers (`ser_model.calibration.calibration_record`); ``{}`` for a tuning trial."""

    out_dir: Path
    best_dir: Path
    selected_epoch: int
    valid: dict[str, Any]
    test: dict[str, Any]
    selection_rule: str
    speakers: dict[str, list[str]]
    history: list[dict[str, Any]] = field(repr=False)
    uses_test_speaker_statistics: bool = False
    calibration: dict[str, Any] = field(default_factory=dict, repr=False)


def write_result(
    result: FitResult, fold: int, tc: TrainConfig, test_last_epoch: dict[str, Any], **extra: Any
) -> None:
    """``result.json`` of a fit: the selected epoch, the rule, the speakers, the validation and
    test metrics and the last epoch's test metrics, the calibration, and ``extra`` fields."""
    payload = {
        "fold": fold,
        "selected_epoch": result.selected_epoch,
        "select_metric": tc.select_metric,
        "selection_rule": result.selection_rule,
        "speakers": result.speakers,
        "valid": result.valid,
        "test": result.test,
        "test_last_epoch": test_last_epoch,
        "epochs": tc.epochs,
        "uses_test_speaker_statistics": result.uses_test_speaker_statistics,
        **({"calibration": result.calibration} if result.calibration else {}),
        **extra,
    }
    write_atomically(result.out_dir / RESULT_FILE, json.dumps(payload, indent=2) + "\n")


def write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one JSON object per epoch record, rewritten whole."""
    write_atomically(out_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))


def call_hook(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    """Call ``hook(*args)`` on every callback that has it."""
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)
