"""Checkpoint selection on held-out speakers, and the selected checkpoint's one final test.

Fold k validates on its validation speakers every `TrainConfig.valid_every` epochs and at the last;
the epoch with the best validation score (`TrainConfig.select_metric`, UA by default; a later epoch
must beat it, not tie it) is kept as the `best` folder (the averaged weights with `ema_decay`). That
checkpoint is scored once on the fold's test speakers, which are never used for selection; the last
epoch's test metrics are reported beside it, never used to select. The release model has no test
speakers; without holdout (`TrainConfig.release_holdout` False) nothing is selected: it ships its
last epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ser_model.checkpoint import write_folder_atomically
from ser_model.config import SERConfig
from ser_model.evaluation import evaluate_split
from ser_model.fit_result import FitResult
from ser_model.metrics import HEADLINE_METRICS, last_epoch_rule, selection_rule
from ser_model.resume import TrainingState, load_weights
from ser_model.runtime import Runtime, barrier
from ser_model.training_data import FoldData, split_speakers

__all__ = ["score_split", "validate_and_select", "score_selected_checkpoint"]


def score_split(
    name: str, state: TrainingState, data: FoldData, config: SERConfig, runtime: Runtime
) -> dict[str, Any]:
    """The metrics of split ``name`` under the model's current weights (`evaluate_split`); ``{}``
    when that split is not scored."""
    if name not in data.eval_sets:
        return {}
    return evaluate_split(
        state.model, data.eval_sets[name], config.train.eval_batch_size, runtime, data.row_stats.get(name)
    )


def validate_and_select(
    state: TrainingState,
    record: dict[str, Any],
    data: FoldData,
    config: SERConfig,
    runtime: Runtime,
    best_dir: Path,
    holdout: bool,
) -> None:
    """Select the epoch just trained when it beats the best validation score so far (validated every
    ``valid_every`` epochs and at the last), or, without holdout, when it is the last: its (averaged)
    weights become ``best_dir``. The validation's headline metrics join ``record``."""
    tc = config.train
    if not holdout:
        if state.epoch == tc.epochs:  # the release on every speaker ships its last epoch
            state.best_epoch = state.epoch
            if runtime.is_main:
                with state.averaged():
                    write_folder_atomically(best_dir, state.model.save_pretrained)
        return
    if state.epoch % tc.valid_every != 0 and state.epoch != tc.epochs:
        return
    with state.averaged():
        valid = score_split("valid", state, data, config, runtime)
        record["valid"] = {key: valid[key] for key in HEADLINE_METRICS}
        score = valid[tc.select_metric]
        if score > state.best_score:
            state.best_score, state.best_epoch = score, state.epoch
            if runtime.is_main:
                write_folder_atomically(best_dir, state.model.save_pretrained)


def score_selected_checkpoint(
    state: TrainingState,
    data: FoldData,
    config: SERConfig,
    runtime: Runtime,
    out_dir: Path,
    best_dir: Path,
    holdout: bool,
) -> tuple[FitResult, dict[str, Any]]:
    """The selected checkpoint scored on the validation and test speakers, and the last epoch's
    test metrics beside it (reported, never used to select)."""
    tc = config.train
    if state.best_epoch == 0:
        raise RuntimeError(
            f"{out_dir}: no epoch was validated (epochs={tc.epochs}, valid_every={tc.valid_every})"
        )
    barrier(runtime)
    test_last_epoch: dict[str, Any] = {}
    last_selected = state.best_epoch == tc.epochs  # then the selected epoch's test metrics are the last's
    if "test" in data.eval_sets and not last_selected:
        with state.averaged():
            test_last_epoch = score_split("test", state, data, config, runtime)
    load_weights(state.model, best_dir)
    valid = score_split("valid", state, data, config, runtime)
    test = score_split("test", state, data, config, runtime)
    if last_selected:
        test_last_epoch = test
    speakers = split_speakers(data.splits)
    rule = selection_rule(tc.select_metric, speakers) if holdout else last_epoch_rule(tc.epochs)
    uses_test_stats = "test" in data.row_stats
    result = FitResult(
        out_dir, best_dir, state.best_epoch, valid, test, rule, speakers, state.history, uses_test_stats
    )
    return result, test_last_epoch
