"""What `main` takes from the `ser` console script (flows/cli.py) to reach the services
ser_model knows nothing of: the MLflow registry, the tracking server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

ModelResolver = Callable[[str, Path], Path]
"""``(uri, scratch folder) -> checkpoint folder``: fetches the model a ``--model`` URI names into
the scratch folder (deleted when the command ends); raises ModelSourceError when it cannot."""

ModelPinner = Callable[[str], str]
"""``(--model or --init value) -> the same model, pinned``: a registry alias replaced by the version
it names now (``models:/NAME@ALIAS`` → ``models:/NAME/VERSION``), any other value unchanged; what
a command then fetches and records (a fine-tuning's start, an evaluation's model) is that one
version, even if the alias moves. Raises ModelSourceError when the registry does not know it."""

FoldMeanUA = Callable[[str], float | None]
"""``(models:/ URI) -> fold-mean UA``: the cross-validated score a registry records for a model
(the console script reads the MLflow registry; ser_model knows none), or None when not recorded."""

EvaluationLogger = Callable[[str, str, dict[str, Any], dict[str, Any]], str]
"""``(experiment, run name, params, metrics) -> where it was logged``: records an evaluation (the
console script logs it to MLflow; ser_model knows no tracking server)."""

TunerTrackerFactory = Callable[..., Any]
"""``(driver, root=, fingerprint=) -> tracker``: what follows a `ser tune` study
(``ser_model.tuning.driver.StudyTracker``; the `ser` console script gives one that logs to MLflow,
flows/tune_tracking.py), given the study's ``StudyDriver``, the corpus root and the manifest's
fingerprint."""


class ModelSourceError(Exception):
    """A ``--model`` URI cannot be turned into a checkpoint folder (no resolver for it, not found, unreachable)."""
