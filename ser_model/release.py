"""The release model as an ensemble of seeds (`TrainConfig.release_seeds` M > 1).

Each member m is a release on every speaker (``release_holdout`` False) with seed
``member_seeds(seed, M)[m]``, trained by `ser_model.train.fit` in ``out_dir/member-<m>`` (a
finished member is not trained again, a stopped one resumes). Then ``out_dir/best`` is their
ensemble (`ser_model.ensemble.SEREnsemble`, the mean class probability), ``metrics.jsonl`` their
epochs one member after the other (``member`` in each record) and ``result.json`` the ensemble's
record with each member's seed, folder and epoch.

The ensemble is calibrated as the ensemble: the temperature (the median of the fold results beside
``out_dir``, `ser_model.calibration.release_temperature`) divides the log of its mean probability;
the members' own folders are not calibrated. Its result.json takes the members' ``data`` and
``code_version`` (they trained on the same speakers by the same code) and its folder gets a model card.

With `TrainConfig.release_distil` the release ships one model instead: after the members, a student
of seed ``seed`` (the seed of member 0, as a fold's student of seeds 0 and 1 in the accuracy grid) trains
in ``out_dir/student`` on every speaker against the members' ensemble (`ser_model.distil`: its p̄ of
every utterance, computed once, and the labels) for the same fixed schedule, and ``out_dir/best`` is the
student (a single `SERModel` folder), calibrated as above. ``metrics.jsonl`` holds the members' epochs
then the student's (``member`` M, ``student`` true); ``result.json`` names the members (seeds, folders,
epochs) and, under ``distillation``, α, τ, how p̄ was computed, the teachers' seeds and the student's folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from ser_model.calibration import (
    fold_results_beside,
    model_folder_calibration,
    release_temperature,
    write_calibration,
)
from ser_model.checkpoint import write_folder_atomically
from ser_model.config import SERConfig
from ser_model.distil import Teacher, distillation_record, require_student_recipe
from ser_model.ensemble import SEREnsemble
from ser_model.fit_result import FitResult, call_hook, write_history, write_result
from ser_model.launch import BEST_FOLDER, RELEASE_FOLD, read_result
from ser_model.metrics import ensemble_rule, last_epoch_rule
from ser_model.model import SERModel
from ser_model.model_card import PROVENANCE_KEYS, write_fit_card
from ser_model.runtime import barrier, init_runtime

__all__ = ["member_seeds", "fit_release_ensemble", "STUDENT_FOLDER"]

STUDENT_FOLDER = "student"
"""Where a distilled release (`TrainConfig.release_distil`) trains its student, beside ``member-<m>``."""


def member_seeds(seed: int, members: int) -> list[int]:
    """The seeds of an ensemble release's members: seed·M … seed·M + M − 1 for M = ``members``, so
    that the releases of two base seeds share no member (``TrainConfig.release_seeds``)."""
    return [seed * members + m for m in range(members)]


def member_record(record: dict[str, Any], member: int, epochs: int, student: bool = False) -> dict[str, Any]:
    """An epoch record of ensemble member ``member`` (of ``epochs`` epochs each) as the ensemble's:
    epoch e is member·epochs + e, and the record says which member it is (the student, after the M
    members: ``member`` M and ``student`` true)."""
    return {
        **record,
        "epoch": member * epochs + record["epoch"],
        "member": member,
        **({"student": True} if student else {}),
    }


class MemberCallbacks:
    """The callbacks of an ensemble release, seen from member ``member`` of models of ``epochs``
    epochs each: its epochs numbered after the earlier members' (member m's epoch e is m·epochs + e,
    the record saying ``member``); its checkpoints passed on; its own end not (the ensemble's is)."""

    def __init__(self, callbacks: Sequence[Any], member: int, epochs: int, student: bool = False):
        self.callbacks, self.member, self.epochs, self.student = callbacks, member, epochs, student

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        shifted = member_record(record, self.member, self.epochs, self.student)
        call_hook(self.callbacks, "on_epoch_end", shifted["epoch"], shifted)

    def on_checkpoint(self, path: Path) -> None:
        call_hook(self.callbacks, "on_checkpoint", path)


def fit_release_ensemble(
    fit: Callable[..., FitResult],
    config: SERConfig,
    manifest: pd.DataFrame,
    folds: pd.DataFrame,
    audio_root: str | os.PathLike,
    out_dir: Path,
    callbacks: Sequence[Any],
    resume: bool,
    feature_cache_dir: str | os.PathLike | None,
) -> FitResult:
    """Train the members with ``fit`` (`ser_model.train.fit`, one seed each) and write their
    ensemble, or their student with ``release_distil`` (module docstring)."""
    tc = config.train
    if tc.release_distil:  # refused before any member trains
        require_student_recipe(config, "TrainConfig.release_distil")
    runtime = init_runtime(config)
    train = partial(  # feature_cache_dir None: fit's default, out_dir/feature-cache for every member
        fit,
        manifest=manifest,
        folds=folds,
        fold=RELEASE_FOLD,
        audio_root=audio_root,
        resume=resume,
        feature_cache_dir=feature_cache_dir,
    )
    one_model = {"train.release_seeds": 1, "train.release_distil": False}
    seeds = member_seeds(tc.seed, tc.release_seeds)
    results = [
        train(
            config.with_overrides({**one_model, "train.seed": seed}),
            out_dir=out_dir / f"member-{m}",
            callbacks=[MemberCallbacks(callbacks, m, tc.epochs)],
        )
        for m, seed in enumerate(seeds)
    ]
    history = [member_record(record, m, tc.epochs) for m, r in enumerate(results) for record in r.history]
    rule = ensemble_rule(seeds, tc.epochs)
    members_record = [
        {"seed": seed, "folder": f"member-{m}", "selected_epoch": r.selected_epoch}
        for m, (seed, r) in enumerate(zip(seeds, results))
    ]
    shipped = SEREnsemble([SERModel.from_pretrained(r.best_dir) for r in results], config)
    distilled: dict[str, Any] = {}
    if tc.release_distil:
        teacher = Teacher(shipped, {"teacher": rule, "members": members_record, "folder": STUDENT_FOLDER})
        student = train(
            config.with_overrides(one_model),
            out_dir=out_dir / STUDENT_FOLDER,
            callbacks=[MemberCallbacks(callbacks, len(seeds), tc.epochs, student=True)],
            teacher=teacher,
        )
        history += [member_record(record, len(seeds), tc.epochs, student=True) for record in student.history]
        rule = f"one student (seed {tc.seed}, the {last_epoch_rule(tc.epochs)}) distilled from the {rule}"
        shipped, distilled = SERModel.from_pretrained(student.best_dir), distillation_record(teacher, tc)
    best_dir = out_dir / BEST_FOLDER
    calibration = release_temperature(fold_results_beside(out_dir))
    result = FitResult(
        out_dir, best_dir, tc.epochs, {}, {}, rule, results[0].speakers, history, calibration=calibration
    )
    if runtime.is_main:
        write_folder_atomically(best_dir, shipped.save_pretrained)
        write_calibration(best_dir, model_folder_calibration(calibration))
        write_history(out_dir, history)
        provenance = {k: v for k, v in read_result(results[0].out_dir).items() if k in PROVENANCE_KEYS}
        write_result(result, RELEASE_FOLD, tc, {}, members=members_record, **distilled, **provenance)
        write_fit_card(out_dir, config, RELEASE_FOLD)
        call_hook(callbacks, "on_fit_end", result)
    barrier(runtime)
    return result
