"""The SER model as an MLflow pyfunc: a thin wrapper over ``ser_model.inference.Predictor``.

Input: a DataFrame, one row per utterance, each row giving its audio in one of three forms:

- ``audio``: a waveform (list or 1-D float array; (samples, channels) also works) with its
  rate in ``sample_rate`` (Hz, integer);
- ``audio_base64``: the bytes of an audio file (WAV, FLAC, OGG), base64-encoded, so that
  clients need no decoder; the file's header gives the rate;
- ``audio``: a file path (str), for local batch use. A served model refuses paths unless the
  operator allows a folder (flows/serving.py).

Speakers: an optional ``speaker`` column names the speaker of each row. A model trained with
speaker-level normalisation (``model.fbank_norm = "speaker"``, `ser_model.speaker_norm`) needs it:
the rows of one speaker give that speaker's log-mel statistics together; without it such a model
refuses the request with a message (it never falls back to per-utterance statistics), and it
scores no segments. Other models ignore the column.

Output: a DataFrame with ``label``, ``confidence`` (the top probability) and one ``p_<class>``
probability column per class, in the checkpoint's label order; the probabilities are calibrated
(the checkpoint's temperature, `ser_model.calibration`). With the parameter ``min_confidence`` P
(``params={"min_confidence": 0.8}``; default 0), a row or segment whose confidence is below P has
``label`` "uncertain", its probabilities kept. With the parameter ``segments`` true (``params={"segments": True}``;
over HTTP ``"params": {"segments": true}`` beside the rows), each row is a long recording scored
by `ser_model.segments` (voice-activity detection, windows, the shared merging rule, the same as
`ser predict --segments`): one output row per segment, with ``row`` (the input row), ``start_s``,
``end_s``, ``label`` and the ``p_<class>`` columns; a recording without speech has none. When served, the request limits and error replies of
flows/serving.py apply. The only artifact is the checkpoint folder (config.json,
model.safetensors, labels.json), so the model needs no hub and no pickle of weights.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types.schema import AnyType, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from flows.registry import create_model_version
from flows.serving import (
    MAX_ROWS,
    MAX_SECONDS,
    MAX_SEGMENTS_SECONDS,
    ModelInputError,
    ServingPolicy,
    guard_scoring_server,
    in_scoring_server,
    serving_process,
)
from ser_model.config import SERConfig
from ser_model.launch import CONFIG_FILE, LABELS_FILE
from ser_model.metrics import probability_column

CHECKPOINT_ARTIFACT = "checkpoint"
"""Name of the pyfunc artifact holding the save_pretrained folder."""
SEGMENTS_PARAM = "segments"
"""The request parameter that asks for an emotion per segment of each row's recording."""
MIN_CONFIDENCE_PARAM = "min_confidence"
"""The request parameter below whose calibrated top probability an answer is "uncertain"."""
SEGMENT_COLUMNS = ["row", "start_s", "end_s", "label", "confidence"]
SPEAKER_COLUMN = "speaker"
"""The optional input column naming each row's speaker (needed by a speaker-normalised model)."""

PIP_PACKAGES = (
    "torch",
    "torchaudio",
    "transformers",
    "safetensors",
    "soundfile",
    "numpy",
    "pandas",
    "mlflow",
)


def checkpoint_labels(folder: str | Path) -> list[str]:
    """Class names of a checkpoint folder, from its labels.json (a JSON list)."""
    path = Path(folder) / LABELS_FILE
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path}: cannot read the class names ({err}); expected a save_pretrained folder"
        ) from err
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path}: expected a non-empty JSON list of class names, got {labels!r}")
    return labels


def model_signature(labels: list[str]) -> ModelSignature:
    """Input: ``audio`` (waveform or path) with ``sample_rate``, or ``audio_base64``; output:
    ``label`` + probabilities (with the boolean parameter ``segments``, also ``row``, ``start_s``,
    ``end_s``: MLflow does not enforce output schemas); ``speaker`` optional (module docstring). ``sample_rate`` is typed Any, not long: a request mixing
    waveform rows and base64 rows leaves it empty (NaN) in the latter, which a long column
    refuses, and the pyfunc's own check names a rate that is not a whole number of Hz."""
    inputs = Schema(
        [
            ColSpec(AnyType(), "audio", required=False),
            ColSpec(AnyType(), "sample_rate", required=False),
            ColSpec(DataType.string, "audio_base64", required=False),
            ColSpec(DataType.string, SPEAKER_COLUMN, required=False),
        ]
    )
    outputs = Schema(
        [ColSpec(DataType.string, "label"), ColSpec(DataType.double, "confidence")]
        + [ColSpec(DataType.double, probability_column(c)) for c in labels]
    )
    params = ParamSchema(
        [
            ParamSpec(SEGMENTS_PARAM, DataType.boolean, False),
            ParamSpec(MIN_CONFIDENCE_PARAM, DataType.double, 0.0),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def predictions_frame(predictions: list[dict[str, Any]], labels: list[str]) -> pd.DataFrame:
    """Predictor output (``[{"label", "confidence", "probabilities": {class: p}}]``) as the pyfunc output frame."""
    rows = [
        {
            "label": p["label"],
            "confidence": p["confidence"],
            **{probability_column(c): float(p["probabilities"][c]) for c in labels},
        }
        for p in predictions
    ]
    return pd.DataFrame(rows, columns=["label", "confidence"] + [probability_column(c) for c in labels])


def _present(value: Any) -> bool:
    """A cell holds a value (pandas fills the fields a row leaves out with None or NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _sample_rate(value: Any, where: str) -> int:
    """A waveform's rate as an int; ModelInputError unless it is a whole number of Hz."""
    from ser_model.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

    if not _present(value):
        raise ModelInputError(f"{where}: a waveform in 'audio' needs its rate in 'sample_rate' (Hz, integer)")
    whole = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer()
    )
    if isinstance(value, (bool, np.bool_)) or not whole:  # floats are checked without int(): int(inf) raises
        raise ModelInputError(
            f"{where}, field 'sample_rate': got {value!r}, expected an integer number of Hz"
        )
    if not MIN_SAMPLE_RATE <= int(value) <= MAX_SAMPLE_RATE:
        raise ModelInputError(
            f"{where}, field 'sample_rate': {int(value)} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"
        )
    return int(value)


@dataclass(frozen=True)
class SecondsLimit:
    """The most seconds of audio a row may hold, and the words after "more than the limit of S s"
    that say which limit it is."""

    seconds: float
    wording: str

    def refusal(self, where: str, seconds: float) -> ModelInputError:
        return ModelInputError(
            f"{where}: {seconds:.1f} s of audio, more than the limit of {self.seconds:g} s {self.wording}",
            413,
        )


def row_limit(policy: ServingPolicy) -> SecondsLimit:
    """The limit of every row of a request without segments."""
    return SecondsLimit(policy.max_seconds, f"per row ({MAX_SECONDS})")


def segments_limit(policy: ServingPolicy, used: float) -> SecondsLimit:
    """What is left for the next row of a request with segments, whose earlier rows hold `used` seconds."""
    wording = f"left of the {policy.max_segments_seconds:g} s of audio a request with segments may hold ({MAX_SEGMENTS_SECONDS})"
    return SecondsLimit(policy.max_segments_seconds - used, wording)


def _waveform(value: Any, rate: int, where: str, limit: SecondsLimit | None) -> np.ndarray:
    """A waveform cell as float32 (N,) or (N, channels): numbers only, finite, not empty, within
    the limit's seconds."""
    try:
        wave = np.asarray(value, dtype=np.float32)
    except (
        TypeError,
        ValueError,
        OverflowError,
    ):  # strings, nested lists of unequal length, ints beyond float range
        raise ModelInputError(
            f"{where}, field 'audio': expected a waveform (a list of numbers), got a list holding other values"
        ) from None
    if wave.ndim not in (1, 2):
        raise ModelInputError(
            f"{where}, field 'audio': got an array of shape {wave.shape}, expected (samples,) or (samples, channels)"
        )
    if wave.size == 0:
        raise ModelInputError(f"{where}, field 'audio': the waveform holds no samples; expected at least one")
    if not np.isfinite(wave).all():
        bad = int(np.size(wave) - np.isfinite(wave).sum())
        raise ModelInputError(
            f"{where}, field 'audio': {bad} samples are NaN or infinite; expected finite numbers"
        )
    if limit is not None and wave.shape[0] > limit.seconds * rate:
        raise limit.refusal(f"{where}, field 'audio'", wave.shape[0] / rate)
    return wave


def _decoded(data: bytes, where: str, limit: SecondsLimit | None) -> tuple[np.ndarray, int]:
    """An audio file's bytes → (samples, rate), at most the limit's seconds (read from the header
    before decoding)."""
    from ser_model.audio import AudioDecodeError, AudioTooLongError, decode_audio_bytes

    try:
        return decode_audio_bytes(data, max_seconds=None if limit is None else limit.seconds)
    except AudioTooLongError as err:
        raise ModelInputError(f"{where}: {err} {limit.wording}", 413) from None
    except AudioDecodeError as err:
        raise ModelInputError(f"{where}: {err}") from None


def row_audio(
    index: int,
    audio: Any,
    audio_base64: Any,
    rate: Any,
    target_sr: int,
    policy: ServingPolicy | None,
    limit: SecondsLimit | None = None,
) -> tuple[np.ndarray, int]:
    """One input row → (samples, rate) for ``Predictor.predict_arrays``. ``policy`` None: local
    use (paths anywhere, no limits); else the served model's policy, with the row's seconds
    bounded by `limit` (default: the policy's per-row limit)."""
    if policy is not None and limit is None:
        limit = row_limit(policy)
    from ser_model.audio import AudioDecodeError, load_audio

    where = f"row {index}"
    if _present(audio) == _present(audio_base64):
        raise ModelInputError(
            f"{where}: expected exactly one of 'audio' (a waveform with 'sample_rate', or a file path) and "
            f"'audio_base64' (a WAV/FLAC file's bytes), got {'both' if _present(audio) else 'neither'}"
        )
    if _present(audio_base64):
        if _present(rate):
            raise ModelInputError(
                f"{where}, field 'sample_rate': not used with 'audio_base64' (the file's header gives the rate); leave it out"
            )
        if not isinstance(audio_base64, str):
            raise ModelInputError(
                f"{where}, field 'audio_base64': got {type(audio_base64).__name__}, expected a base64 string"
            )
        try:
            data = base64.b64decode(audio_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ModelInputError(f"{where}, field 'audio_base64': not valid base64") from None
        return _decoded(data, f"{where}, field 'audio_base64'", limit)
    if isinstance(audio, (str, Path)):
        if _present(rate):
            raise ModelInputError(
                f"{where}, field 'sample_rate': not used with a file path (the file's header gives the rate); leave it out"
            )
        if policy is None:
            try:
                return load_audio(audio, target_sr), target_sr
            except AudioDecodeError as err:
                raise ModelInputError(f"{where}, field 'audio': {err}") from None
        return _decoded(
            policy.allowed_file(str(audio), f"{where}, field 'audio'").read_bytes(),
            f"{where}, field 'audio'",
            limit,
        )
    if isinstance(audio, (list, tuple, np.ndarray)):
        rate = _sample_rate(rate, where)
        return _waveform(audio, rate, where, limit), rate
    raise ModelInputError(
        f"{where}, field 'audio': got {type(audio).__name__}, expected a waveform (a list of numbers) or a file path"
    )


class SERPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper: loads the Predictor from the checkpoint artifact, predicts a frame; in a
    model server, applies the serving policy of flows/serving.py."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from ser_model.inference import Predictor

        self.predictor = Predictor.from_pretrained(context.artifacts[CHECKPOINT_ARTIFACT])
        self.labels = list(self.predictor.labels)
        self.policy = ServingPolicy.from_env()
        if in_scoring_server():
            guard_scoring_server(self.policy)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        from ser_model.audio import AudioDecodeError

        policy = self.policy if serving_process() else None
        if not {"audio", "audio_base64"} & set(model_input.columns):
            raise ModelInputError(
                f"SER model input: got columns {list(model_input.columns)}, expected 'audio' (a waveform with "
                "'sample_rate', or a file path) or 'audio_base64' (a WAV/FLAC file's bytes)"
            )
        if len(model_input) == 0:
            raise ModelInputError("SER model input: the request holds no rows; expected at least one")
        if policy is not None and len(model_input) > policy.max_rows:
            raise ModelInputError(
                f"SER model input: {len(model_input)} rows, more than the limit of {policy.max_rows} rows per request ({MAX_ROWS})",
                413,
            )
        rows = zip(
            *(
                model_input[c] if c in model_input.columns else [None] * len(model_input)
                for c in ("audio", "audio_base64", "sample_rate")
            )
        )
        uses_speakers = self.predictor.uses_speakers
        threshold = requested_min_confidence(params)
        if wants_segments(params):
            if uses_speakers:
                raise ModelInputError(
                    f"params, field '{SEGMENTS_PARAM}': this model normalises by each speaker's log-mel statistics "
                    "(model.fbank_norm='speaker'), and segments are not scored that way; score whole rows with a "
                    f"'{SPEAKER_COLUMN}' column"
                )
            return self._segments(list(rows), policy, threshold)
        speakers = row_speakers(model_input) if uses_speakers else None
        arrays = [row_audio(i, *row, self.predictor.sample_rate, policy) for i, row in enumerate(rows)]
        try:
            return predictions_frame(self.predictor.predict_arrays(arrays, speakers, threshold), self.labels)
        except AudioDecodeError as err:
            raise ModelInputError(f"SER model input: {err}") from None

    def _segments(
        self, rows: list[tuple[Any, Any, Any]], policy: ServingPolicy | None, min_confidence: float
    ) -> pd.DataFrame:
        """Each row a recording scored in segments; served, the rows' seconds together stay within
        ``max_segments_seconds``. A local path is read in blocks, as `ser predict --segments` reads it."""
        from ser_model.audio import AudioDecodeError
        from ser_model.segments import ArraySource, FileSource, segment_recording

        per_row, used = [], 0.0
        for i, (audio, audio_base64, rate) in enumerate(rows):
            try:
                if (
                    policy is None
                    and isinstance(audio, (str, Path))
                    and not _present(audio_base64)
                    and not _present(rate)
                ):
                    with FileSource(audio) as source:
                        per_row.append(segment_recording(source, self.predictor))
                    continue
                limit = None if policy is None else segments_limit(policy, used)
                samples, sample_rate = row_audio(
                    i, audio, audio_base64, rate, self.predictor.sample_rate, policy, limit
                )
                used += samples.shape[0] / sample_rate
                per_row.append(
                    segment_recording(ArraySource(samples, sample_rate, name=f"row {i}"), self.predictor)
                )
            except AudioDecodeError as err:
                raise ModelInputError(f"row {i}: {err}") from None
        return segments_frame(per_row, self.labels, min_confidence)


def row_speakers(model_input: pd.DataFrame) -> list[str]:
    """The ``speaker`` of every row, for a speaker-normalised model: ModelInputError when the column
    or a row's name is missing."""
    if SPEAKER_COLUMN not in model_input.columns:
        raise ModelInputError(
            f"SER model input: this model normalises the log-mel by each speaker's statistics (model.fbank_norm='speaker'), "
            f"so it needs a '{SPEAKER_COLUMN}' column naming the speaker of every row (the rows of one speaker are "
            f"normalised together); got columns {list(model_input.columns)}"
        )
    speakers = list(model_input[SPEAKER_COLUMN])
    for i, name in enumerate(speakers):
        if not isinstance(name, str) or not name.strip():
            raise ModelInputError(
                f"row {i}, field '{SPEAKER_COLUMN}': got {name!r}, expected the speaker's name (a non-empty string)"
            )
    return speakers


def wants_segments(params: dict[str, Any] | None) -> bool:
    """The ``segments`` parameter of a request: absent or false, whole-row predictions; true, segments."""
    value = (params or {}).get(SEGMENTS_PARAM, False)
    if not isinstance(value, (bool, np.bool_)):
        raise ModelInputError(f"params, field '{SEGMENTS_PARAM}': got {value!r}, expected true or false")
    return bool(value)


def requested_min_confidence(params: dict[str, Any] | None) -> float:
    """The ``min_confidence`` parameter of a request: absent, 0 (no answer is "uncertain"); else a number in [0, 1]."""
    value = (params or {}).get(MIN_CONFIDENCE_PARAM, 0.0)
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, float, np.number))
        or not 0.0 <= value <= 1.0
    ):
        raise ModelInputError(
            f"params, field '{MIN_CONFIDENCE_PARAM}': got {value!r}, expected a probability in [0, 1]"
        )
    return float(value)


def segments_frame(per_row: list[list[Any]], labels: list[str], min_confidence: float = 0.0) -> pd.DataFrame:
    """Segments of each input row as the output frame: ``row``, ``start_s``, ``end_s``, ``label``
    ("uncertain" below ``min_confidence``), ``confidence``, ``p_<class>``."""
    from ser_model.segments import segment_records

    records = [
        {"row": i, **record}
        for i, segments in enumerate(per_row)
        for record in segment_records(segments, labels, min_confidence)
    ]
    return pd.DataFrame(records, columns=SEGMENT_COLUMNS + [probability_column(c) for c in labels])


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


def log_pyfunc(
    checkpoint: str | Path, registered_model_name: str | None = None, name: str = "model"
) -> ModelInfo:
    """Log the checkpoint folder as a pyfunc model in the active MLflow run, optionally
    registering it; the input example is one second of silence at 16 kHz (with a ``speaker`` for a
    speaker-normalised model, which needs one)."""
    labels = checkpoint_labels(checkpoint)
    example = pd.DataFrame({"audio": [np.zeros(16000, dtype=np.float32).tolist()], "sample_rate": [16000]})
    if SERConfig.from_json(Path(checkpoint) / CONFIG_FILE).model.uses_speaker_statistics:
        example[SPEAKER_COLUMN] = ["speaker-1"]
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=SERPyfunc(),
        artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
        signature=model_signature(labels),
        input_example=example,
        pip_requirements=pip_requirements(),
    )
    if registered_model_name is not None:  # not log_model's own: flows/registry.py says why
        client = mlflow.MlflowClient()
        info.registered_model_version = int(
            create_model_version(client, registered_model_name, info.model_uri)
        )
    return info
