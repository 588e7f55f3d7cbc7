"""A tuning study in MLflow: a parent run (``ser.run_kind=tune``) and a child run per trial,
the best trial's preset file and Optuna's figures on the parent; and the study's summary as the
tune run's Prefect artifact. ``ser tune`` (flows/cli.py) and the tune flow (flows/tune.py) both
log with :class:`MlflowStudyTracker`, a ``ser_model.tuning.driver.StudyTracker``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from flows import tracking as t
from flows.provenance import package_versions
from ser_model.config import SERConfig
from ser_model.launch import fold_folder_name
from ser_model.tuning.driver import OBJECTIVE, StudyDriver, study_summary
from ser_model.tuning.space import decode_choice, space_dict
from ser_model.tuning.study import original_trial_number
from ser_stack import names as n
from ser_stack.provenance import code_version
from ser_stack.settings import REPO_ROOT

PRESET_ARTIFACT = "preset"
"""The parent run's artifact folder of the best trial's preset file."""


def tune_key(corpus: str, fingerprint: str, study_name: str) -> str:
    """The parent run's key: a rerun of the same study on the same manifest reopens that run."""
    return hashlib.sha256(json.dumps([corpus, fingerprint, study_name]).encode()).hexdigest()[:16]


class MlflowStudyTracker:
    """A study in MLflow: one parent run (``ser.run_kind=tune``), one child run per trial with its
    parameters, its per-epoch validation curves (``fold<k>.valid.UA`` …, step = epoch), its state
    (``ser.trial_state``: COMPLETE, PRUNED, FAIL) and value (``objective``); at the end the study's
    summary, the best value, the preset file and Optuna's figures on the parent. Any process may
    log a trial: child runs are found by their trial number under the parent."""

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str, tracking_uri: str = ""):
        self.client, self.experiment_id, self.parent_run_id, self.tracking_uri = (
            client,
            experiment_id,
            parent_run_id,
            tracking_uri,
        )
        self._children: dict[int, str] = {}

    @classmethod
    def start(
        cls,
        client: MlflowClient,
        driver: StudyDriver,
        *,
        root: str,
        fingerprint: str,
        tracking_uri: str = "",
    ) -> MlflowStudyTracker:
        """Open the parent run of the driver's study on the manifest ``fingerprint`` (the existing
        one with the same key, or a new one with the study's settings as parameters)."""
        settings, recipe = driver.settings, driver.recipe
        experiment_id = t.get_or_create_experiment(client, n.experiment_name(settings.corpus))
        key = tune_key(settings.corpus, fingerprint, settings.name)
        parent = t.find_run(client, experiment_id, {n.TUNE_KEY_TAG: key})
        if parent is not None:
            client.update_run(parent, status="RUNNING")
        else:
            tags = {
                n.RUN_KIND_TAG: n.RUN_KIND_TUNE,
                n.TUNE_KEY_TAG: key,
                n.CORPUS_TAG: settings.corpus,
                n.FINGERPRINT_TAG: fingerprint,
                n.STUDY_TAG: settings.name,
                n.PRESET_TAG: settings.preset,
                **code_version(REPO_ROOT),
                **package_versions(),
            }
            parent = client.create_run(
                experiment_id, tags=tags, run_name=n.job_name(n.TUNE, settings.corpus)
            ).info.run_id
            params = {
                **{f"base.{k}": v for k, v in t.flatten_params(recipe.base.to_dict()).items()},
                "space": json.dumps(space_dict(recipe.space), sort_keys=True)[: t.MLFLOW_PARAM_VALUE_LIMIT],
                "tune_folds": json.dumps(list(settings.folds)),
                "trials": str(settings.trials),
                "root": root,
                "objective": OBJECTIVE,
            }
            t.log_batch(client, parent, params=params)
        return cls(client, experiment_id, parent, tracking_uri)

    def child(self, trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> str:
        """The trial's child run id (created on first use)."""
        number = trial.number
        if number not in self._children:
            run_id = t.find_run(
                self.client,
                self.experiment_id,
                {t.PARENT_RUN_ID_TAG: self.parent_run_id, n.TRIAL_TAG: str(number)},
            )
            if run_id is None:
                original = original_trial_number(trial)
                tags = {
                    t.PARENT_RUN_ID_TAG: self.parent_run_id,
                    n.RUN_KIND_TAG: n.RUN_KIND_TRIAL,
                    n.TRIAL_TAG: str(number),
                }
                if original != number:
                    tags[n.RETRIED_FROM_TAG] = str(original)
                run_id = self.client.create_run(
                    self.experiment_id, tags=tags, run_name=f"trial-{number}"
                ).info.run_id
            self._children[number] = run_id
        return self._children[number]

    def trial_started(self, trial: optuna.Trial, config: SERConfig) -> None:
        run_id = self.child(trial)
        t.log_batch(
            self.client,
            run_id,
            params={k: json.dumps(decode_choice(v)) for k, v in trial.params.items()},
            tags={n.TRIAL_STATE_TAG: "RUNNING"},
        )

    def epoch(self, trial: optuna.Trial, fold: int, epoch: int, record: Mapping[str, Any]) -> None:
        """Per-epoch curves of the trial's fold, e.g. ``fold0.valid.UA`` and ``fold0.train.loss`` at step = epoch."""
        prefix = fold_folder_name(fold).replace("-", "")
        metrics = t.epoch_metrics(
            [{k: v for k, v in record.items() if k in ("epoch", "train", "valid", "lr")}]
        )
        renamed = [
            Metric(key=f"{prefix}.{m.key}", value=m.value, timestamp=m.timestamp, step=m.step)
            for m in metrics
        ]
        t.log_batch(self.client, self.child(trial), metrics=renamed)

    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: the child run's state, value and end."""
        run_id = self.child(trial)
        tags = {
            n.TRIAL_STATE_TAG: trial.state.name,
            **{n.TRIAL_ATTR_TAG_PREFIX + k: str(v) for k, v in trial.user_attrs.items()},
        }
        metrics = [optuna_metric("last_step", float(trial.last_step or 0), int(time.time() * 1000), 0)]
        if trial.value is not None:
            metrics.append(optuna_metric("objective", trial.value, int(time.time() * 1000), 0))
        t.log_batch(self.client, run_id, metrics=metrics, tags=tags)
        status = "FAILED" if trial.state == optuna.trial.TrialState.FAIL else "FINISHED"
        self.client.set_terminated(run_id, status)

    def close_failed(self, study: optuna.Study) -> None:
        """End the child runs of trials that failed without reporting it (a killed process: Optuna
        marked them failed from their stale heartbeat), so no trial run stays RUNNING in MLflow."""
        for trial in study.trials:
            if trial.state != optuna.trial.TrialState.FAIL:
                continue
            run = self.client.get_run(self.child(trial))
            if run.info.status == "RUNNING":
                self.trial_finished(study, trial)

    def finish(self, study: optuna.Study, preset_path: Path | None) -> dict[str, Any]:
        """The study's summary on the parent run: best value and trial, counts by state, the
        preset file, the optimisation history and parameter importances as figures."""
        self.close_failed(study)
        summary = study_summary(study)
        metrics = [
            optuna_metric(f"trials_{state.lower()}", float(n), int(time.time() * 1000), 0)
            for state, n in summary["states"].items()
        ]
        if "best_value" in summary:
            metrics.append(optuna_metric("best_valid_UA", summary["best_value"], int(time.time() * 1000), 0))
        tags = {n.BEST_TRIAL_TAG: str(summary.get("best_trial", "none"))}
        t.log_batch(self.client, self.parent_run_id, metrics=metrics, tags=tags)
        self.client.log_text(
            self.parent_run_id,
            json.dumps(summary, indent=2, default=str),
            "study/summary.json",
        )
        if preset_path is not None:
            self.client.log_artifact(self.parent_run_id, str(preset_path), PRESET_ARTIFACT)
        import matplotlib.pyplot as plt  # after study_figures chose the Agg backend

        for name, figure in study_figures(study).items():
            try:
                self.client.log_figure(self.parent_run_id, figure, f"study/{name}.png")
            finally:
                plt.close(figure)  # optuna draws with pyplot, which keeps every figure until closed
        self.client.set_terminated(self.parent_run_id, "FINISHED")
        return summary


def optuna_metric(key: str, value: float, timestamp_ms: int, step: int) -> Metric:
    return Metric(key, float(value), timestamp_ms, step)


def study_figures(study: optuna.Study) -> dict[str, Any]:
    """Optuna's optimisation history, and the parameter importances once two trials have finished."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")  # figures become PNG files, never windows, also where a display is set
    from optuna.visualization import matplotlib as ovm

    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        finished = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
        if finished:
            figures["optimization_history"] = ovm.plot_optimization_history(study).figure
        if len(finished) >= 2 and len({json.dumps(tr.params, sort_keys=True) for tr in finished}) >= 2:
            figures["param_importances"] = ovm.plot_param_importances(study).figure
    for fig in figures.values():
        fig.set_size_inches(8, 5)
        fig.tight_layout()
    return figures


def study_markdown(corpus: str, summary: Mapping[str, Any], preset_path: Path) -> str:
    """The tune run's Prefect artifact: counts, best trial and each trial's state and value."""
    lines = [
        f"# Tuning study {summary['study']} ({corpus})",
        "",
        f"Trials by state: {json.dumps(summary['states'])}. Best trial {summary.get('best_trial')}: mean validation UA "
        f"{100 * summary.get('best_value', float('nan')):.2f} % (test speakers never scored).",
        "",
        f"Preset file: `{preset_path}` (train with `preset` = that path).",
        "",
        "| trial | state | value | parameters |",
        "|---|---|---|---|",
    ]
    for tr in summary["per_trial"]:
        value = "" if tr["value"] is None else f"{100 * tr['value']:.2f}"
        lines.append(f"| {tr['number']} | {tr['state']} | {value} | `{json.dumps(tr['params'])}` |")
    return "\n".join(lines) + "\n"
