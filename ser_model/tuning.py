"""Hyper-parameter tuning: an Optuna study over a search space declared as data, judged on
validation speakers only.

    space = search_space("cpu-fbank")                   # or load_search_space("my-space.json")
    objective = TuningObjective(base, space, manifest, folds, tune_folds=[0, 1], audio_root=..., out_root=...)
    study = open_study("ser-ravdess-tune", storage_url, seed=0)
    study.optimize(objective, n_trials=20)
    write_preset_file("best.json", best_preset(study, "cpu-fbank", base_overrides={...}))  # ser_model.presets

Protocol. A trial trains each of ``tune_folds`` on that fold's training speakers and scores every
epoch on the fold's validation speakers (drawn from its training speakers by the corpus's fold
protocol); its objective is the mean over the folds of the best validation UA (the same rule that
selects a fold's checkpoint). The fold's test speakers are never scored during a study: `fit` runs
with ``score_test=False``. The folds are trained one after another and every epoch is reported to
the pruner at step ``fold_index · 100 + round(100 · epoch / epochs)`` (percent of the schedule, so
trials of different lengths meet at the same steps) with the fold's best validation UA so far; the
median pruner stops a trial that is below the median of earlier trials at the same step.

Storage. The study lives in an Optuna RDB storage (SQLite file or a database server), with
heartbeats: a trial whose process was killed goes stale after ``GRACE_PERIOD_S`` and is queued
again with the same parameters (``RetryHeartbeatStaleTrialCallback``); the retried trial trains in
its original trial's folder, so `fit` resumes each fold from its last checkpoint.

A search space is a JSON object ``{config key: spec}`` with spec one of

    {"type": "float", "low": 3e-4, "high": 3e-3, "log": true}
    {"type": "int", "low": 10, "high": 40, "step": 5}
    {"type": "categorical", "choices": [true, false]}
    {"type": "categorical", "choices": [[], [0.9, 1.0, 1.1]]}
    {"type": "float", "low": 0.0, "high": 1.0, "when": {"eam.enabled": true}}

(a list choice is a list value, e.g. ``train.speed_factors``; Optuna records it as its JSON text,
:func:`encode_choice`, and the preset file gets the list back), and every key must be a
``SERConfig.with_overrides`` key. ``when`` makes a dimension conditional: it is sampled only in
trials whose values of the named categorical dimensions are the given ones, and is absent
from the other trials' parameters (their config keeps the base value), so a knob that acts only
when a component is on is neither searched nor credited in the importances where it is off.
Spaces that ship with the project are in :data:`SEARCH_SPACES`, one per preset (beside
ser_model/presets.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from ser_model.config import SERConfig
from ser_model.config_validation import ConfigError
from ser_model.presets import PRESET_FILE_FORMAT, PRESET_FILE_VERSION

__all__ = [
    "SEARCH_SPACES",
    "ParamSpec",
    "search_space",
    "load_search_space",
    "parse_search_space",
    "suggest_overrides",
    "open_study",
    "TuningObjective",
    "pruning_step",
    "best_preset",
    "study_summary",
]

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 30
"""How often a running trial writes its heartbeat to the storage."""
GRACE_PERIOD_S = 120
"""A running trial without a heartbeat for this long is stale (its process died) and is retried."""
MAX_RETRIES = 2
"""How many times a stale trial is queued again with the same parameters."""
STEPS_PER_FOLD = 100
"""Pruning steps per tuning fold: a fold's epochs report at their percent of its schedule."""
DONE_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
"""Trials that count towards a study's number of trials (a failed or killed one does not)."""

SEARCH_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    # The method's knobs and the optimiser's, around the cpu-fbank recipe: EAM (how often, how loud
    # the partner, when a segment counts as silent), each of MLL's extra terms and its weight,
    # regularisation, the learning rate. The preset's base (EAM and the three terms off) is inside
    # the space, and so is the paper's method; a component's knobs are sampled only in trials that
    # turn it on ("when").
    "cpu-fbank": {
        "train.lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
        "eam.enabled": {"type": "categorical", "choices": [False, True]},
        "eam.mix_prob": {"type": "float", "low": 0.0, "high": 1.0, "when": {"eam.enabled": True}},
        "eam.snr_db_low": {"type": "float", "low": -5.0, "high": 5.0, "when": {"eam.enabled": True}},
        "eam.degenerate_db": {"type": "float", "low": -40.0, "high": -10.0, "when": {"eam.enabled": True}},
        "loss.focal": {"type": "categorical", "choices": [False, True]},
        "loss.w_focal": {"type": "float", "low": 0.1, "high": 2.0, "when": {"loss.focal": True}},
        "loss.center": {"type": "categorical", "choices": [False, True]},
        "loss.w_center": {
            "type": "float",
            "low": 1e-3,
            "high": 0.1,
            "log": True,
            "when": {"loss.center": True},
        },
        "loss.supcon": {"type": "categorical", "choices": [False, True]},
        "loss.w_supcon": {
            "type": "float",
            "low": 0.01,
            "high": 1.0,
            "log": True,
            "when": {"loss.supcon": True},
        },
        "model.fbank_dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "train.ema_decay": {"type": "categorical", "choices": [None, 0.98, 0.995]},
        "train.speed_factors": {"type": "categorical", "choices": [[], [0.9, 1.0, 1.1]]},
    },
    # The paper's recipe on a GPU: the learning rates, EAM and the loss weights.
    "paper-wavlm": {
        "train.lr": {"type": "float", "low": 3e-5, "high": 3e-4, "log": True},
        "eam.mix_prob": {"type": "float", "low": 0.0, "high": 1.0},
        "eam.snr_db_low": {"type": "float", "low": -5.0, "high": 5.0},
        "loss.w_focal": {"type": "float", "low": 0.0, "high": 2.0},
        "loss.w_center": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
        "loss.w_supcon": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
    },
}


class TuningError(ConfigError):
    """A search space, a study or a preset file is not usable; the message says what and where."""


@dataclass(frozen=True)
class ParamSpec:
    """One dimension of a search space (module docstring)."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, Any], ...] = ()
    """(key, value) pairs of categorical dimensions of the space: sampled only where all of them hold."""

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether this dimension is sampled given the values of the dimensions before it."""
        return all(key in values and values[key] == value for key, value in self.when)

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this dimension (recorded by Optuna under the config key)."""
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return decode_choice(trial.suggest_categorical(self.key, [encode_choice(c) for c in self.choices]))

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            spec: dict[str, Any] = {"type": self.type, "choices": list(self.choices)}
        else:
            spec = {"type": self.type, "low": self.low, "high": self.high}
            if self.log:
                spec["log"] = True
            if self.step is not None:
                spec["step"] = self.step
        if self.when:
            spec["when"] = dict(self.when)
        return spec


def encode_choice(value: Any) -> Any:
    """A categorical choice as Optuna stores it: a list (or tuple) as its JSON text, others as they are
    (Optuna's choices are None, bool, int, float or str)."""
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else value


def decode_choice(value: Any) -> Any:
    """The inverse of :func:`encode_choice`: the JSON text of a list back to the list."""
    return json.loads(value) if isinstance(value, str) and value.startswith("[") else value


def _param(key: str, spec: Any, where: str) -> ParamSpec:
    at = f"{where}: {key!r}"
    if not isinstance(spec, Mapping):
        raise TuningError(
            f'{at}: expected an object like {{"type": "float", "low": 0.0, "high": 1.0}}, got {spec!r}'
        )
    kind = spec.get("type")
    allowed = {
        "float": {"type", "low", "high", "log", "step", "when"},
        "int": {"type", "low", "high", "log", "step", "when"},
        "categorical": {"type", "choices", "when"},
    }
    if kind not in allowed:
        raise TuningError(f"{at}: type {kind!r}, expected one of {sorted(allowed)}")
    unknown = sorted(set(spec) - allowed[kind])
    if unknown:
        raise TuningError(
            f"{at}: unknown field(s) {unknown} for type {kind!r}; expected {sorted(allowed[kind])}"
        )
    when: tuple[tuple[str, Any], ...] = ()  # absent: unconditional
    if "when" in spec:
        condition = spec["when"]
        if not isinstance(condition, Mapping) or not condition:
            raise TuningError(
                f'{at}: "when" must be a non-empty object {{categorical key: value}}, got {condition!r}'
            )
        when = tuple(condition.items())
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise TuningError(f"{at}: 'choices' must be a non-empty list, got {choices!r}")
        return ParamSpec(key, kind, choices=tuple(choices), when=when)
    low, high = spec.get("low"), spec.get("high")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not low < high:
        raise TuningError(f"{at}: expected numbers low < high, got low={low!r} high={high!r}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise TuningError(f"{at}: an int dimension needs whole low and high, got {low!r}, {high!r}")
    log_scale = bool(spec.get("log", False))
    if log_scale and low <= 0:
        raise TuningError(f"{at}: a log-scale dimension needs low > 0, got {low!r}")
    step = spec.get("step")
    if step is not None and (log_scale or not isinstance(step, (int, float)) or step <= 0):
        raise TuningError(
            f"{at}: step must be a positive number and cannot be combined with log, got {step!r}"
        )
    return ParamSpec(key, kind, float(low), float(high), log_scale, step, when=when)


def parse_search_space(
    data: Any, base: SERConfig | None = None, where: str = "search space"
) -> dict[str, ParamSpec]:
    """A search space's JSON object → {key: ParamSpec}; with ``base``, every key must be an override
    key of that config, and the space's corner values must give valid configs (each dimension at its
    low and at its high end, the others at the base's values). Raises TuningError naming the key."""
    if not isinstance(data, Mapping) or not data:
        raise TuningError(
            f"{where}: expected a non-empty JSON object {{config key: spec}}, got {type(data).__name__}"
        )
    space = {key: _param(key, spec, where) for key, spec in data.items()}
    space = _order_by_conditions(space, where)
    if base is not None:
        valid = set(base.override_keys())
        unknown = sorted(set(space) - valid)
        if unknown:
            raise TuningError(
                f"{where}: {unknown} are not config keys; expected keys like {sorted(valid)[:6]} ..."
            )
        for p in space.values():
            for value in p.choices if p.type == "categorical" else (p.low, p.high):
                try:
                    base.with_overrides({**dict(p.when), p.key: int(value) if p.type == "int" else value})
                except ConfigError as err:
                    raise TuningError(f"{where}: {p.key}={value!r} makes an invalid config: {err}") from err
    return space


def _order_by_conditions(space: Mapping[str, ParamSpec], where: str) -> dict[str, ParamSpec]:
    """The space with every conditional dimension after the dimensions its ``when`` names (otherwise
    in the given order), so that a condition is known when its dimension is reached. Each ``when``
    must name a categorical dimension of the space with one of its choices; cycles are refused."""
    for key, p in space.items():
        for on, value in p.when:
            other = space.get(on)
            if other is None or other.type != "categorical" or on == key:
                raise TuningError(
                    f"{where}: {key!r} is conditional on {on!r}, which must be another categorical "
                    f"dimension of the space; its categorical dimensions: "
                    f"{sorted(k for k, q in space.items() if q.type == 'categorical' and k != key)}"
                )
            if value not in other.choices:
                raise TuningError(
                    f"{where}: {key!r} is conditional on {on}={value!r}, not one of its choices {list(other.choices)}"
                )
    ordered: dict[str, ParamSpec] = {}
    while len(ordered) < len(space):
        ready = [k for k, p in space.items() if k not in ordered and all(on in ordered for on, _ in p.when)]
        if not ready:
            raise TuningError(
                f"{where}: the conditions of {sorted(set(space) - set(ordered))} depend on each other in a cycle"
            )
        ordered[ready[0]] = space[ready[0]]  # one at a time: the given order wherever the conditions allow
    return ordered


def search_space(name: str) -> dict[str, ParamSpec]:
    """The search space shipped for preset ``name`` (:data:`SEARCH_SPACES`)."""
    if name not in SEARCH_SPACES:
        raise TuningError(
            f"search space: got {name!r}, expected one of {sorted(SEARCH_SPACES)} or a JSON file"
        )
    return parse_search_space(SEARCH_SPACES[name], where=f"SEARCH_SPACES[{name!r}]")


def load_search_space(
    source: str | os.PathLike | Mapping[str, Any], base: SERConfig | None = None
) -> dict[str, ParamSpec]:
    """A space by name (:data:`SEARCH_SPACES`), from a JSON file, or from an already parsed object."""
    if isinstance(source, Mapping):
        return parse_search_space(source, base)
    text = str(source)
    if text in SEARCH_SPACES:
        return parse_search_space(SEARCH_SPACES[text], base, where=f"search space {text!r}")
    path = Path(text)
    if not path.is_file():
        raise TuningError(
            f"search space {text!r}: neither a shipped space ({sorted(SEARCH_SPACES)}) nor a JSON file"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise TuningError(f"{path}: cannot read the search space as JSON ({err})") from err
    return parse_search_space(data, base, where=str(path))


def suggest_overrides(trial: optuna.Trial, space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """{config key: value} of this trial, one suggestion per active dimension, in the space's order
    (a conditional dimension whose ``when`` does not hold is left out: the config keeps its base value)."""
    values: dict[str, Any] = {}
    for key, p in space.items():
        if p.active(values):
            values[key] = p.suggest(trial)
    return values


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
    seed: int = 0,
    startup_trials: int = 5,
    grace_period_s: float = GRACE_PERIOD_S,
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


def config_value(config: SERConfig, key: str) -> Any:
    """The value of override key ``key`` ("train.lr") in ``config``."""
    value = config.value(key)
    return list(value) if isinstance(value, tuple) else value


def enqueue_base(
    study: optuna.Study, space: Mapping[str, ParamSpec], base: SERConfig
) -> dict[str, Any] | None:
    """Queue the base recipe's own values as the study's first trial (when the study is empty and
    every value lies inside the space), so the best trial is never one the hand-set recipe beats
    on the same objective. Returns the queued parameters, or None."""
    if study.trials:
        return None
    params: dict[str, Any] = {}
    for key, p in space.items():  # the dimensions the base's own values make active, in order
        if p.active(params):
            params[key] = config_value(base, key)
    for key, value in params.items():
        p = space[key]
        inside = (
            value in p.choices
            if p.type == "categorical"
            else isinstance(value, (int, float)) and p.low <= value <= p.high
        )
        if not inside:
            log.info(
                "base value %s=%r lies outside the space; the study starts from the sampler alone", key, value
            )
            return None
    study.enqueue_trial(
        {
            key: encode_choice(value) if space[key].type == "categorical" else value
            for key, value in params.items()
        },
        user_attrs={"enqueued": "base recipe"},
    )
    return params


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
    itself before each trial; the tune flow calls it between rounds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def retried_from(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the killed trial this one retries, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def pruning_step(fold_index: int, epoch: int, epochs: int) -> int:
    """Pruning step of ``epoch`` (1-based) of the ``fold_index``-th tuning fold: percent of the schedule."""
    return fold_index * STEPS_PER_FOLD + round(STEPS_PER_FOLD * epoch / epochs)


class _PruningCallback:
    """`fit` callback: report the fold's best validation UA so far; raise TrialPruned when the pruner says so."""

    def __init__(
        self,
        trial: optuna.Trial,
        fold: int,
        fold_index: int,
        epochs: int,
        metric: str,
        on_epoch: Callable[..., None] | None,
    ):
        self.trial, self.fold, self.fold_index, self.epochs, self.metric = (
            trial,
            fold,
            fold_index,
            epochs,
            metric,
        )
        self.best = -math.inf
        self.on_epoch = on_epoch

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        if self.on_epoch is not None:
            self.on_epoch(self.trial, self.fold, epoch, record)
        if "valid" not in record:
            return
        self.best = max(self.best, float(record["valid"][self.metric]))
        self.trial.report(self.best, pruning_step(self.fold_index, epoch, self.epochs))
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"fold {self.fold} epoch {epoch}: best valid {self.metric} {self.best:.4f} below the median"
            )


class TuningObjective:
    """The study's objective (module docstring): mean best validation UA over ``tune_folds``.

    base: the config every trial starts from (preset + fixed overrides); space: the dimensions;
    out_root: trial folders ``trial-<n>/fold-<k>`` (a retried trial reuses its original's folder,
    so each fold resumes from its last checkpoint). ``on_epoch(trial, fold, epoch, record)``
    and ``on_trial_start(trial, config)`` let a tracker follow the trial (MLflow in flows/tune.py).
    """

    def __init__(
        self,
        base: SERConfig,
        space: Mapping[str, ParamSpec],
        manifest: Any,
        folds: Any,
        tune_folds: Sequence[int],
        audio_root: str | os.PathLike,
        out_root: str | os.PathLike,
        *,
        on_trial_start: Callable[[optuna.Trial, SERConfig], None] | None = None,
        on_epoch: Callable[[optuna.Trial, int, int, dict[str, Any]], None] | None = None,
        feature_cache_dir: str | os.PathLike | None = None,
    ):
        if len(tune_folds) < 1:
            raise TuningError(
                "tune folds: expected at least one fold (2 or more judge a trial on more speakers)"
            )
        available = sorted(int(k) for k in folds["fold"].unique())
        unknown = sorted(set(tune_folds) - set(available))
        if unknown:
            raise TuningError(f"tune folds {unknown} are not in the fold table; available folds: {available}")
        self.base, self.space = base, dict(space)
        self.manifest, self.folds, self.tune_folds = manifest, folds, [int(k) for k in tune_folds]
        self.audio_root, self.out_root = audio_root, Path(out_root)
        self.on_trial_start, self.on_epoch = on_trial_start, on_epoch
        self.feature_cache_dir = feature_cache_dir
        self.last_trial_number: int | None = None

    def config(self, trial: optuna.Trial) -> SERConfig:
        """The trial's config: the base with the trial's suggestions; an invalid combination prunes the trial."""
        overrides = suggest_overrides(trial, self.space)
        try:
            return self.base.with_overrides(overrides)
        except ConfigError as err:
            trial.set_user_attr("invalid_config", str(err))
            raise optuna.TrialPruned(f"invalid combination: {err}") from err

    def trial_folder(self, trial: optuna.Trial) -> Path:
        return self.out_root / f"trial-{original_trial_number(trial)}"

    def __call__(self, trial: optuna.Trial) -> float:
        from ser_model.launch import fold_folder_name
        from ser_model.train import fit

        self.last_trial_number = trial.number
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())  # which process trains it (to watch it, or to kill it)
        config = self.config(trial)
        folder = self.trial_folder(trial)
        trial.set_user_attr("folder", str(folder))
        if self.on_trial_start is not None:
            self.on_trial_start(trial, config)
        metric = config.train.select_metric
        scores = []
        for index, fold in enumerate(self.tune_folds):
            callback = _PruningCallback(trial, fold, index, config.train.epochs, metric, self.on_epoch)
            result = fit(
                config,
                self.manifest,
                self.folds,
                fold,
                self.audio_root,
                folder / fold_folder_name(fold),
                callbacks=[callback],
                score_test=False,
                feature_cache_dir=self.feature_cache_dir,
            )
            score = float(result.valid[metric])
            scores.append(score)
            trial.set_user_attr(f"valid_{metric}_fold{fold}", score)
            trial.set_user_attr(f"selected_epoch_fold{fold}", result.selected_epoch)
        value = sum(scores) / len(scores)
        log.info(
            "trial %d: mean best valid %s %.4f over folds %s", trial.number, metric, value, self.tune_folds
        )
        return value


def best_preset(
    study: optuna.Study,
    base_preset: str,
    base_overrides: Mapping[str, Any] | None = None,
    *,
    corpus: str | None = None,
) -> dict[str, Any]:
    """The preset file's content for the study's best trial: the base preset it extends, the fixed
    overrides, the tuned values, and where they came from (study, trial, value, folds)."""
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        raise TuningError(f"study {study.study_name}: no finished trial yet, so no best preset to write")
    best = study.best_trial
    return {
        "format": PRESET_FILE_FORMAT,
        "version": PRESET_FILE_VERSION,
        "extends": base_preset,
        "settings": {**dict(base_overrides or {}), **{k: decode_choice(v) for k, v in best.params.items()}},
        "source": {
            "study": study.study_name,
            "trial": best.number,
            "objective": "mean best validation UA over the tuning folds (test speakers never scored)",
            "value": best.value,
            "corpus": corpus,
            "complete_trials": len(finished),
            "pruned_trials": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
            "tuned_keys": sorted(best.params),
        },
    }


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, the best trial's value and parameters, and each trial's state and value."""
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = {"study": study.study_name, "trials": len(study.trials), "states": states}
    if complete:
        summary.update(
            best_value=study.best_value, best_trial=study.best_trial.number, best_params=study.best_params
        )
    summary["per_trial"] = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "last_step": t.last_step,
            "retried_from": retried_from(t),
        }
        for t in study.trials
    ]
    return summary
