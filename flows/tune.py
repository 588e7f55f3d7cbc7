"""The tune flow: an Optuna study of one corpus, each trial its own flow run on the work pool,
tracked in MLflow; the best trial becomes a preset file.

    tune (parent)   manifest version → study in the stack's storage (``SER_TUNE_STORAGE``, default
                    ``<state>/optuna.db``) → MLflow parent run (``ser.run_kind=tune``) → one
                    ``tune-trial`` run per trial still to do → preset file of the best trial (a local
                    file under ``<state>/presets/`` and an artifact of the parent run), figures
    tune-trial      manifest from S3 (audio staged when the root is s3://) → one Optuna trial
                    (``ser_model.tuning.TuningObjective``: the tuning folds on their validation
                    speakers) → its MLflow child run with parameters, per-epoch curves and state

Trial runs wait in the pool's ``folds`` queue, like the folds of a train run, so a cluster runs
them side by side (``SER_FOLD_CONCURRENCY``), or run inline as subflows with ``SER_FOLD_RUNS=inline``.
The study, not the flow, holds the progress: running the same tune again (same corpus, manifest and
study name) reopens it and only runs the trials still missing. A trial whose process was killed goes
silent; once its heartbeat is ``heartbeat_grace_s`` old, the next round marks it failed and queues it
again with the same parameters, and the retry resumes each fold from its last checkpoint.

:class:`MlflowStudyTracker` is also what ``ser tune`` logs with (flows/cli.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from data_contracts.corpora import check_corpus
from flows import tracking as t
from flows.fold_runs import fold_job_variables, fold_runs_mode, wait_until_final
from flows.mlflow_ui import run_url
from flows.provenance import code_version, package_versions
from flows.roots import local_audio_root, manifest_root
from flows.storage import load_manifest_version, resolve_version
from ser_model.config import SERConfig
from ser_model.launch import fold_folder_name
from ser_model.presets import DEFAULT_PRESET, experiment_config, split_preset, write_preset_file
from ser_model.tuning import (
    DONE_STATES,
    GRACE_PERIOD_S,
    ParamSpec,
    TuningObjective,
    best_preset,
    decode_choice,
    enqueue_base,
    fail_stale_trials,
    load_search_space,
    open_study,
    original_trial_number,
    study_summary,
    worker_seed,
)
from ser_stack import names as n
from ser_stack.settings import REPO_ROOT, StackSettings

TRIAL_DEPLOYMENT = "tune-trial/tune-trial"
PRESET_ARTIFACT = "preset"
DEFAULT_TUNE_FOLDS = [0, 1]


def tune_key(corpus: str, fingerprint: str, study_name: str) -> str:
    """The parent run's key: a rerun of the same study on the same manifest reopens that run."""
    return hashlib.sha256(json.dumps([corpus, fingerprint, study_name]).encode()).hexdigest()[:16]


def space_dict(space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """A parsed space back to its JSON object (a flow parameter, an MLflow param)."""
    return {key: p.to_dict() for key, p in space.items()}


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
        *,
        corpus: str,
        study: optuna.Study,
        base_config: SERConfig,
        space: Mapping[str, ParamSpec],
        tune_folds: list[int],
        trials: int,
        root: str,
        fingerprint: str,
        preset: str = DEFAULT_PRESET,
        tracking_uri: str = "",
    ) -> MlflowStudyTracker:
        """Open the parent run of ``study`` (the existing one with the same key, or a new one)."""
        experiment_id = t.get_or_create_experiment(client, n.experiment_name(corpus))
        key = tune_key(corpus, fingerprint, study.study_name)
        parent = t.find_run(client, experiment_id, {n.TUNE_KEY_TAG: key})
        if parent is not None:
            client.update_run(parent, status="RUNNING")
        else:
            tags = {
                n.RUN_KIND_TAG: n.RUN_KIND_TUNE,
                n.TUNE_KEY_TAG: key,
                n.CORPUS_TAG: corpus,
                n.FINGERPRINT_TAG: fingerprint,
                n.STUDY_TAG: study.study_name,
                n.PRESET_TAG: preset,
                **code_version(REPO_ROOT),
                **package_versions(),
            }
            parent = client.create_run(experiment_id, tags=tags, run_name=f"tune-{corpus}").info.run_id
            params = {
                **{f"base.{k}": v for k, v in t.flatten_params(base_config.to_dict()).items()},
                "space": json.dumps(space_dict(space), sort_keys=True)[: t.MLFLOW_PARAM_VALUE_LIMIT],
                "tune_folds": json.dumps(tune_folds),
                "trials": str(trials),
                "root": root,
                "objective": "mean best validation UA over the tuning folds (test speakers never scored)",
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


def mlflow_tracker_factory(tracking_uri: str | None = None):
    """The `ser tune` tracker factory (ser_model.cli.TunerTrackerFactory): MLflow at ``tracking_uri``
    (default: ``MLFLOW_TRACKING_URI``, else MLflow's own default)."""

    def factory(**kwargs: Any) -> MlflowStudyTracker:
        import mlflow

        uri = tracking_uri or mlflow.get_tracking_uri()
        tracker = MlflowStudyTracker.start(MlflowClient(uri), tracking_uri=uri, **kwargs)
        print(f"MLflow tune run {tracker.parent_run_id} at {uri}")
        return tracker

    return factory


# ------------------------------------------------------------------------------------------- flows


@contextmanager
def forward_logs(name: str, target: logging.Logger | logging.LoggerAdapter) -> Iterator[None]:
    """Records of logger ``name`` (INFO and up) also go to ``target`` (a Prefect run logger) while inside."""

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            target.log(record.levelno, "%s", record.getMessage())

    handler, source = Forward(logging.INFO), logging.getLogger(name)
    previous = source.level
    source.addHandler(handler)
    source.setLevel(min(previous or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        source.removeHandler(handler)
        source.setLevel(previous)


@flow(name="tune-trial", flow_run_name="{corpus}-{study_name}")
def tune_trial(
    corpus: str,
    fingerprint: str,
    study_name: str,
    config: dict[str, Any],
    space: dict[str, Any],
    tune_folds: list[int],
    root: str,
    experiment_id: str,
    parent_run_id: str,
    heartbeat_grace_s: float = GRACE_PERIOD_S,
    seed: int = 0,
) -> int:
    """One trial of a study (or the retry of a killed one): returns its trial number."""
    logger = get_run_logger()
    settings = StackSettings.from_env()
    base = SERConfig.from_dict(config)
    parsed = load_search_space(space, base)
    manifest, fold_table, _ = load_manifest_version(corpus, fingerprint)
    root = local_audio_root(manifest, root, fingerprint, settings.state_dir)
    study = open_study(
        study_name, settings.tune_storage, seed=worker_seed(seed), grace_period_s=heartbeat_grace_s
    )
    tracker = MlflowStudyTracker(
        MlflowClient(settings.tracking_uri), experiment_id, parent_run_id, settings.tracking_uri
    )
    out_root = settings.state_dir / "tune" / corpus / study_name
    objective = TuningObjective(
        base,
        parsed,
        manifest,
        fold_table,
        tune_folds,
        root,
        out_root,
        on_trial_start=tracker.trial_started,
        on_epoch=tracker.epoch,
        feature_cache_dir=settings.state_dir / "feature-cache",
    )
    with forward_logs("ser_model", logger):  # fit's per-epoch lines and "resumed from ..." in the run's log
        study.optimize(objective, n_trials=1, callbacks=[tracker.trial_finished])
    number = objective.last_trial_number
    trial = study.trials[number]
    logger.info(
        "trial %d: %s value %s params %s", number, trial.state.name, trial.value, json.dumps(trial.params)
    )
    return number


def _run_trials(n: int, parameters: dict[str, Any]) -> list[str]:
    """Start ``n`` trial runs (pool or inline, like the folds of a train run) and wait; the names of
    those that did not complete."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    failed = []
    if fold_runs_mode() == "inline":
        for _ in range(n):
            try:
                tune_trial(**parameters)
            except Exception as err:  # noqa: BLE001 - the round goes on; the study counts what finished
                logger.error("trial run failed: %s", err)
                failed.append(f"{type(err).__name__}: {err}")
        return failed
    variables = fold_job_variables(parameters["corpus"], 0)
    variables["name"] = n.trial_flow_run_name(parameters["corpus"])
    runs = [
        run_deployment(TRIAL_DEPLOYMENT, parameters=parameters, timeout=0, job_variables=variables)
        for _ in range(n)
    ]
    with get_client(sync_client=True) as api:
        for run in runs:
            final = wait_until_final(api, run.id)
            logger.info("trial run %s %s", final.name, final.state.name)
            if not final.state.is_completed():
                failed.append(f"{final.name}: {final.state.name} {final.state.message or ''}".strip())
    return failed


@flow(name="tune")
def tune(
    corpus: str,
    manifest_version: str = "latest",
    preset: str = DEFAULT_PRESET,
    space: str | dict[str, Any] | None = None,
    trials: int = 20,
    epochs: int | None = None,
    folds: list[int] | None = None,
    overrides: dict[str, Any] | None = None,
    study: str | None = None,
    root: str | None = None,
    seed: int = 0,
    heartbeat_grace_s: float = GRACE_PERIOD_S,
) -> dict[str, Any]:
    """Tune ``corpus``: ``trials`` finished trials of a study (name default ``ser-<corpus>-tune``)
    over ``space`` (a shipped space's name, a JSON object, or None for the preset's), each trial
    training ``folds`` (default 0, 1) for ``epochs`` (default the preset's) and judged on their
    validation speakers. Writes the best trial as a preset file; returns its path and the summary."""
    logger = get_run_logger()
    check_corpus(corpus)
    if trials < 1:
        raise ValueError(f"trials={trials}: expected at least 1")
    settings = StackSettings.from_env()
    fingerprint = resolve_version(corpus, manifest_version)
    manifest, fold_table, report = load_manifest_version(corpus, fingerprint)
    root = manifest_root(corpus, fingerprint, report, root)
    fixed = {**({"train.epochs": epochs} if epochs is not None else {}), **(overrides or {})}
    base = experiment_config(corpus, preset, overrides=fixed)
    extends, own = split_preset(preset)
    parsed = load_search_space(space or extends, base)
    tune_folds = sorted(set(folds or DEFAULT_TUNE_FOLDS))
    name = study or n.study_name(corpus)
    optuna_study = open_study(name, settings.tune_storage, seed=seed, grace_period_s=heartbeat_grace_s)
    enqueue_base(optuna_study, parsed, base)
    client = MlflowClient(settings.tracking_uri)
    tracker = MlflowStudyTracker.start(
        client,
        corpus=corpus,
        study=optuna_study,
        base_config=base,
        space=parsed,
        tune_folds=tune_folds,
        trials=trials,
        root=root,
        fingerprint=fingerprint,
        preset=preset,
        tracking_uri=settings.tracking_uri,
    )
    logger.info(
        "study %s in %s; MLflow tune run %s: %s",
        name,
        settings.tune_storage,
        tracker.parent_run_id,
        run_url(settings.tracking_uri, tracker.experiment_id, tracker.parent_run_id),
    )
    parameters = {
        "corpus": corpus,
        "fingerprint": fingerprint,
        "study_name": name,
        "config": base.to_dict(),
        "space": space_dict(parsed),
        "tune_folds": tune_folds,
        "root": root,
        "experiment_id": tracker.experiment_id,
        "parent_run_id": tracker.parent_run_id,
        "heartbeat_grace_s": heartbeat_grace_s,
        "seed": seed,
    }
    done = lambda: sum(tr.state in DONE_STATES for tr in optuna_study.trials)  # noqa: E731
    failures: list[str] = []
    while done() < trials:
        before = done()
        stale = [tr.number for tr in optuna_study.trials if tr.state == optuna.trial.TrialState.RUNNING]
        if stale:  # a killed run's trial: wait until its heartbeat is old enough, then queue it again
            logger.info(
                "trial(s) %s still marked running; retrying them once silent for %.0f s",
                stale,
                heartbeat_grace_s,
            )
            time.sleep(heartbeat_grace_s + 1)
            fail_stale_trials(optuna_study)
            tracker.close_failed(optuna_study)
        missing = trials - done()
        logger.info("study %s: %d of %d trials done; starting %d trial run(s)", name, before, trials, missing)
        failures = _run_trials(missing, parameters)
        if done() == before and failures:
            raise RuntimeError(f"no trial of study {name} finished in this round: {'; '.join(failures)}")
    preset_path = write_preset_file(
        settings.state_dir / "presets" / f"{name}-best.json",
        best_preset(optuna_study, extends, {**own, **fixed}, corpus=corpus),
    )
    summary = tracker.finish(optuna_study, preset_path)
    create_markdown_artifact(
        study_markdown(corpus, summary, preset_path),
        key=f"tune-{corpus}",
        description=f"tuning study of {corpus}",
    )
    logger.info(
        "best trial %s: mean valid UA %.4f; preset file %s",
        summary.get("best_trial"),
        summary.get("best_value", float("nan")),
        preset_path,
    )
    return {
        "study": name,
        "parent_run_id": tracker.parent_run_id,
        "preset_file": str(preset_path),
        "summary": summary,
    }


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
