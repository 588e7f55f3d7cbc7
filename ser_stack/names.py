"""The names users type and processes agree on, each defined once: MLflow experiments and
registered models, Optuna studies, Prefect deployments, flow runs and events, and every ``ser.*``
tag with the values of ``ser.run_kind``. Flows, the CLI, benchmarks and tests import them from here.

File names inside a fold or model folder live with the code that writes them
(``ser_model/launch.py``: ``RESULT_FILE``, ``METRICS_FILE``; ``ser_model/checkpoint.py``:
``CONFIG_FILE``), because the worker and the flows both import those modules.

Dataset names are not checked here (this module imports nothing of the project): the flows
resolve a dataset (one of the corpora or a table dataset, ``data_contracts.datasets``) before
they name anything after it.
"""

from __future__ import annotations


# --- MLflow ---------------------------------------------------------------------------------------
def experiment_name(corpus: str) -> str:
    """The MLflow experiment of a corpus: trainings, studies, monitor runs and evaluations."""
    return f"ser-{corpus}"


def registered_model_name(corpus: str) -> str:
    """The MLflow registered model of a corpus (aliases ``champion`` and ``challenger``)."""
    return f"ser-{corpus}"


CHAMPION = "champion"
CHALLENGER = "challenger"
"""Registry aliases: the version served, and the latest candidate compared with it."""


# --- Optuna --------------------------------------------------------------------------------------
def study_name(corpus: str) -> str:
    """The default Optuna study of a corpus (``ser tune`` and the ``tune-<corpus>`` deployment)."""
    return f"ser-{corpus}-tune"


# --- a corpus's jobs --------------------------------------------------------------------------------
INGEST, TRAIN, TUNE, MONITOR = "ingest", "train", "tune", "monitor"
"""The jobs run on a corpus."""


def job_name(job: str, corpus: str) -> str:
    """``<job>-<corpus>`` (``train-ravdess``): a corpus's deployment of that job (and the train job's
    concurrency limit), the MLflow parent run of one run of it, and the Prefect artifact that
    summarises it. The monitor's flow runs carry it too (its ``flow_run_name`` template)."""
    return f"{job}-{corpus}"


# --- Prefect --------------------------------------------------------------------------------------


def trial_flow_run_name(corpus: str) -> str:
    """The flow-run name of one tuning trial."""
    return f"ser-{corpus}-tune-trial"


def fold_flow_run_name(corpus: str, fold_folder: str) -> str:
    """The flow-run name of one training fold (``fold_folder``: ``fold-0``, ``release``)."""
    return f"ser-{corpus}-{fold_folder}"


INGEST_TABLE_DEPLOYMENT = "ingest-table"
"""The deployment that ingests any table dataset (``--param name=calls --param source=…``)."""
ROOT_VARIABLE_PREFIX = "ser-root-"
"""Prefix of the Prefect Variables that remember where a dataset lives."""


def root_variable_name(dataset: str) -> str:
    """The Prefect Variable holding a dataset's root (a corpus) or table (a table dataset):
    ``ser-root-<dataset>``. A table dataset is registered by having one."""
    return f"{ROOT_VARIABLE_PREFIX}{dataset}"


PROMOTE_LIMIT = "ser-promote"
"""The Prefect concurrency limit that serialises promotions in the registry."""
MANIFEST_UPDATED_EVENT = "ser.manifest.updated"
"""The Prefect event the ingest flow emits when it publishes a new manifest version."""


def manifest_resource_id(corpus: str) -> str:
    """The Prefect resource id of a corpus's manifest (the event's ``prefect.resource.id``)."""
    return f"ser.manifest.{corpus}"


EVENT_CORPUS, EVENT_FINGERPRINT, EVENT_BUCKET = "ser.corpus", "ser.fingerprint", "ser.bucket"
"""Resource labels of :data:`MANIFEST_UPDATED_EVENT`."""

# --- ser.* tags on MLflow runs and registered versions ----------------------------------------------
RUN_KIND_TAG = "ser.run_kind"
RUN_KIND_TUNE, RUN_KIND_TRIAL, RUN_KIND_MONITOR, RUN_KIND_EVALUATION = (
    "tune",
    "tune-trial",
    "monitor",
    "evaluation",
)
"""Values of ``ser.run_kind``; a training's runs carry none."""

CORPUS_TAG = "ser.corpus"
FINGERPRINT_TAG = "ser.data_fingerprint"
PRESET_TAG = "ser.preset"
BACKBONE_TAG = "ser.backbone"
PROTOCOL_TAG = "ser.protocol"
SELECTION_TAG = "ser.selection_rule"
GIT_COMMIT_TAG = "ser.git_commit"
GIT_DIRTY_TAG = "ser.git_dirty"
VERSION_TAG_PREFIX = "ser.version."
"""``ser.version.<package>``: the version of a package that shapes a result."""
LABELS_TAG = "ser.labels"
PARENT_RUN_TAG = "ser.parent_run_id"
FOLD_SCORES_TAG = "ser.fold_scores"
REGISTERED_VERSION_TAG = "ser.registered_version"
"""On a training's parent run: the version its release model was registered as."""
THRESHOLDS_TAG = "ser.confidence_thresholds"
"""On a registered version: its threshold table as JSON, per target accuracy the smallest
``min_confidence`` whose kept answers reached it on the folds' test speakers, that accuracy and the
share kept (ser_model.calibration.threshold_table)."""

# training runs (flows/tracking.py)
TRAIN_KEY_TAG = "ser.train_key"
FOLD_TAG = "ser.fold"
LOGGED_TAG = "ser.logged"
"""On a fold's child run: ``true`` once everything of the fold is logged."""
MODEL_URI_TAG = "ser.model_uri"
"""On the release child run: the logged pyfunc model the parent registers."""
INIT_TAG = "ser.init"
"""On a training's parent run that started from another model: that model (a pinned
``models:/NAME/VERSION`` or a folder; flows/warm_start.py)."""

# tuning runs (flows/tune_tracking.py)
TUNE_KEY_TAG = "ser.tune_key"
STUDY_TAG = "ser.study"
TRIAL_TAG = "ser.trial"
TRIAL_STATE_TAG = "ser.trial_state"
TRIAL_ATTR_TAG_PREFIX = "ser.trial_"
"""``ser.trial_<attribute>``: a trial's user attributes."""
RETRIED_FROM_TAG = "ser.retried_from"
BEST_TRIAL_TAG = "ser.best_trial"

# monitor runs (flows/monitor.py)
MONITOR_MANIFEST_TAG = "ser.monitor.manifest"
MONITOR_CHAMPION_MANIFEST_TAG = "ser.monitor.champion_manifest"
MONITOR_VERDICT_TAG = "ser.monitor.verdict"
MONITOR_DEGRADED_TAG = "ser.monitor.degraded"
CHAMPION_VERSION_TAG = "ser.champion_version"

# promotion decisions, on a registered version (flows/promote.py)
PROMOTION_TAG_PREFIX = "ser.promotion."
"""``ser.promotion.<field>``: decision, rule, reason, compared_folds, paired_gain, data,
champion_before, champion_before_UA, margin."""
MONITOR_QUOTE_TAG = "ser.promotion.champion_on_new_data"
"""On a decided version: the monitor's sentence on the champion's score on the new data."""


def summary_tag(summary_metric: str) -> str:
    """The tag that copies a parent run's summary metric onto its registered version
    (``ser.UA_mean``)."""
    return f"ser.{summary_metric}"


def promotion_tag(field: str) -> str:
    """``ser.promotion.<field>`` on a decided version."""
    return PROMOTION_TAG_PREFIX + field
