"""The SER model as an MLflow pyfunc: a thin wrapper over ``ser_model.inference.Predictor``.

Input: a DataFrame with a column ``audio`` holding either file paths (str) or waveforms
(1-D float arrays or lists, then a ``sample_rate`` column gives each row's rate). Output: a
DataFrame with ``label`` and one ``p_<class>`` probability column per class, in the
checkpoint's label order. The only artifact is the checkpoint folder (config.json,
model.safetensors, labels.json), so the model needs no hub and no pickle of weights.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types.schema import AnyType, ColSpec, DataType, Schema

CHECKPOINT_ARTIFACT = "checkpoint"
"""Name of the pyfunc artifact holding the save_pretrained folder."""

PIP_PACKAGES = ("torch", "torchaudio", "transformers", "safetensors", "soundfile", "numpy", "pandas", "mlflow")


def probability_column(label: str) -> str:
    """Output column holding P(label): ``p_<label>``."""
    return f"p_{label}"


def checkpoint_labels(folder: str | Path) -> list[str]:
    """Class names of a checkpoint folder, from its labels.json (a JSON list)."""
    path = Path(folder) / "labels.json"
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the class names ({err}); expected a save_pretrained folder") from err
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path}: expected a non-empty JSON list of class names, got {labels!r}")
    return labels


def model_signature(labels: list[str]) -> ModelSignature:
    """Input: ``audio`` (path or waveform) and optional ``sample_rate``; output: ``label`` + probabilities."""
    inputs = Schema([ColSpec(AnyType(), "audio"), ColSpec(DataType.long, "sample_rate", required=False)])
    outputs = Schema([ColSpec(DataType.string, "label")] + [ColSpec(DataType.double, probability_column(c)) for c in labels])
    return ModelSignature(inputs=inputs, outputs=outputs)


def predictions_frame(predictions: list[dict[str, Any]], labels: list[str]) -> pd.DataFrame:
    """Predictor output (``[{"label": ..., "probabilities": {class: p}}]``) as the pyfunc output frame."""
    rows = [{"label": p["label"], **{probability_column(c): float(p["probabilities"][c]) for c in labels}} for p in predictions]
    return pd.DataFrame(rows, columns=["label"] + [probability_column(c) for c in labels])


class SERPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper: loads the Predictor from the checkpoint artifact, predicts a frame."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from ser_model.inference import Predictor

        self.predictor = Predictor.from_pretrained(context.artifacts[CHECKPOINT_ARTIFACT])
        self.labels = list(self.predictor.labels)

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if "audio" not in model_input.columns:
            raise ValueError(
                f"SER model input: missing column 'audio'; got columns {list(model_input.columns)}, "
                "expected 'audio' (+ 'sample_rate' for waveforms)"
            )
        audio = list(model_input["audio"])
        if all(isinstance(a, (str, Path)) for a in audio):
            return predictions_frame(self.predictor.predict_files([str(a) for a in audio]), self.labels)
        if "sample_rate" not in model_input.columns:
            raise ValueError("SER model input: waveforms in 'audio' need a 'sample_rate' column (Hz) for each row")
        rates = list(model_input["sample_rate"])
        arrays = []
        for row, (wave, rate) in enumerate(zip(audio, rates)):
            if isinstance(wave, (str, Path)) or rate is None or pd.isna(rate):
                raise ValueError(
                    f"SER model input row {row}: expected all rows to be file paths, or all waveforms with a "
                    f"sample_rate; got {type(wave).__name__} with sample_rate {rate!r}"
                )
            arrays.append((np.asarray(wave, dtype=np.float32), int(rate)))
        return predictions_frame(self.predictor.predict_arrays(arrays), self.labels)


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc environment (given explicitly: MLflow's inference of
    requirements would load the model in a subprocess, slowly)."""
    pinned = []
    for name in PIP_PACKAGES:
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pinned.append(name)
    return pinned


def log_pyfunc(checkpoint: str | Path, registered_model_name: str | None = None, name: str = "model") -> ModelInfo:
    """Log the checkpoint folder as a pyfunc model in the active MLflow run, optionally
    registering it; the input example is one second of silence at 16 kHz."""
    labels = checkpoint_labels(checkpoint)
    example = pd.DataFrame({"audio": [np.zeros(16000, dtype=np.float32).tolist()], "sample_rate": [16000]})
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=SERPyfunc(),
        artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
        signature=model_signature(labels),
        input_example=example,
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
    )
