"""A stored study: where it lives, how it samples and prunes, and how a killed trial is retried.

Storage. The study lives in an Optuna RDB storage (SQLite file or a database server), with
heartbeats: a trial whose process was killed goes stale after the grace period
(``StudySettings.grace_period_s``) and is queued again with the same parameters
(``RetryHeartbeatStaleTrialCallback``); the retried trial trains in its original trial's folder
(:func:`original_trial_number`), so `fit` resumes each fold from its last checkpoint.

Sampling and pruning. A TPE sampler with the constant liar (a running trial counts as a poor one,
so parallel workers spread out), seeded per process (:func:`worker_seed`); a median pruner that
compares trials at the same pruning step (:func:`pruning_step`: percent of a fold's schedule, so
trials of different lengths meet at the same steps).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna

from ser_model.tuning.settings import StudySettings

HEARTBEAT_INTERVAL_S = 30
"""How often a running trial writes its heartbeat to the storage."""
MAX_RETRIES = 2
"""How many times a stale trial is queued again with the same parameters."""
STEPS_PER_FOLD = 100
"""Pruning steps per tuning fold: a fold's epochs report at their percent of its schedule."""


def pruning_step(fold_index: int, epoch: int, epochs: int) -> int:
    """Pruning step of ``epoch`` (1-based) of the ``fold_index``-th tuning fold: percent of the schedule."""
    return fold_index * STEPS_PER_FOLD + round(STEPS_PER_FOLD * epoch / epochs)


def worker_seed(seed: int) -> int:
    """The sampler seed of one process of a study: ``seed`` mixed with the process id. Processes
    that share a study must not share a sampler seed, or their random start-up trials repeat each
    other's parameters (seen: two workers training the same trial side by side)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, os.getpid()]).generate_state(1)[0])


def open_study(
    name: str,
    storage_url: str,
    *,
    seed: int = StudySettings.seed,
    startup_trials: int = 5,
    grace_period_s: float = StudySettings.grace_period_s,
) -> optuna.Study:
    """Create or load study ``name`` (maximising validation UA) in an RDB storage with heartbeats
    (a trial silent for ``grace_period_s`` is taken as killed and retried with its parameters);
    TPE sampler seeded by ``seed`` (pass :func:`worker_seed` when several processes share the
    study), median pruner (neither acts before ``startup_trials`` trials have finished)."""
    heartbeat = max(1, min(HEARTBEAT_INTERVAL_S, int(grace_period_s // 3)))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=STEPS_PER_FOLD // 2)
    # Several processes that open one new storage at once race to create its tables (seen: 18 of
    # 40 processes failed, 4 at a time on a fresh SQLite file); the lock lets one create them.
    with storage_init_lock(storage_url), warnings.catch_warnings():
        # heartbeats, retries and the constant liar are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant liar: a running trial counts as a poor one, so parallel workers spread out
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, constant_liar=True)
        storage = optuna.storages.RDBStorage(
            storage_url,
            heartbeat_interval=heartbeat,
            grace_period=max(int(grace_period_s), heartbeat + 1),
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRIES
            ),
        )
        try:  # a study that exists is loaded: creating it again fails an INSERT the database logs as an ERROR
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:  # not there yet: created under the lock, so no other process races the INSERT
            return optuna.create_study(
                study_name=name, storage=storage, direction="maximize", sampler=sampler, pruner=pruner
            )


@contextlib.contextmanager
def storage_init_lock(storage_url: str) -> Iterator[None]:
    """Hold a lock, shared by every process that opens ``storage_url``, while one of them creates
    the storage's tables and the study. SQLite: an exclusive ``flock`` on ``<database>.lock``
    beside the file; PostgreSQL: a session advisory lock; other databases: no lock (Optuna's own
    table creation then stays racy for processes that start at the same instant)."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(storage_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or not Path(database).parent.is_dir():
            yield  # in memory: one process; a missing folder: RDBStorage reports it
            return
        import fcntl

        with open(f"{database}.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif url.get_backend_name() == "postgresql":
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _INIT_LOCK_KEY})
                try:
                    yield
                finally:
                    connection.execute(
                        sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _INIT_LOCK_KEY}
                    )
        finally:
            engine.dispose()
    else:
        yield


_INIT_LOCK_KEY = 0x5E2_07A1
"""PostgreSQL advisory lock key of :func:`storage_init_lock` (any constant the other clients of
the database do not use)."""


def original_trial_number(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> int:
    """The number of the trial whose parameters this one repeats (a retry of a killed trial), else its own."""
    frozen = (
        trial
        if isinstance(trial, optuna.trial.FrozenTrial)
        else trial.study.get_trials(deepcopy=False)[trial.number]
    )
    retried = retried_from(frozen)
    return frozen.number if retried is None else retried


def fail_stale_trials(study: optuna.Study) -> None:
    """Mark the study's silent running trials failed and queue their retries (Optuna does this
    itself before each trial; the study driver calls it between rounds of trials run elsewhere)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def retried_from(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the killed trial this one retries, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
