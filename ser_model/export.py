"""ONNX export of a whole trained model (backbone, FLAM, head) with dynamic batch and time axes.

The graph takes `waves` (B, L) float32 at the model's sample rate and `lengths` (B,) int64 (valid
samples per row), and for a model with `model.pitch` a third input `pitch` (B, T, 4) float32, and returns the calibrated `logits` (B, C) = z / T (the model's logits over the
folder's temperature, `ser_model.calibration`) and `probabilities` (B, C) = softmax(logits).
After export, ONNX Runtime is run against PyTorch at two input lengths; a mismatch beyond
`atol` fails the export. The file carries what scoring needs besides the graph, as ONNX metadata
(`METADATA`): the class order, the sample rate and the silence trimming of inputs; `OnnxScorer`
reads them back and scores windows for `ser_model.segments` (the graph scores, the merging is
the shared Python code).

The legacy (TorchScript) exporter has no complex STFT, and `torch.export` stops at the
backbones' data-dependent input checks, so the exported copy of the model computes
torchaudio's power spectrogram as a strided convolution with the windowed DFT basis, the same
quantity in real arithmetic:

    |X_t(k)|² = (Σ_n w_n x_{t·hop+n} cos(2πkn/N))² + (Σ_n w_n x_{t·hop+n} sin(2πkn/N))²

The pitch track is computed outside the graph. YIN (`ser_model.pitch`) takes FFTs, a per-utterance
median over voiced frames and a data-dependent choice of dip, which the legacy exporter does not
carry; so a `model.pitch` graph takes the batch's pitch features as its input `pitch` (B, T, 4), T the
padded batch's log-mel frames, computed by `ser_model.pitch_branch.pitch_input` (PyTorch) from the
same waves and lengths. `OnnxScorer` does that for every batch; the parity check feeds it too.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import nn

from ser_model.calibration import read_temperature
from ser_model.config_validation import ConfigError
from ser_model.ensemble import load_model
from ser_model.model import SERModel
from ser_model.pitch_branch import pitch_input

__all__ = ["OnnxExportError", "export_onnx", "onnx_parity", "OnnxScorer", "METADATA"]

log = logging.getLogger(__name__)

OPSET = 17
PARITY_SECONDS = (1.3, 2.9)
METADATA = {"labels": "ser.labels", "sample_rate": "ser.sample_rate", "trim_db": "ser.trim_db"}
"""ONNX metadata keys of the exported file: JSON values of the class names (list), the model's
sample rate (int) and ModelConfig.trim_db (number or null)."""


class OnnxExportError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model."""


class DftSpectrogram(nn.Module):
    """torchaudio `Spectrogram` (center=False, onesided, power 1 or 2, not normalised) as a conv1d
    with the windowed DFT basis: waveform (B, L) → spectrogram (B, N/2 + 1, T)."""

    def __init__(self, spectrogram: torchaudio.transforms.Spectrogram):
        super().__init__()
        unsupported = {
            "center": spectrogram.center,
            "pad": spectrogram.pad,
            "normalized": spectrogram.normalized,
            "onesided": spectrogram.onesided,
            "power": spectrogram.power,
        }
        if (
            spectrogram.center
            or spectrogram.pad
            or spectrogram.normalized
            or not spectrogram.onesided
            or spectrogram.power not in (1.0, 2.0)
        ):
            raise OnnxExportError(
                f"cannot export a Spectrogram with {unsupported}; expected center=False, pad=0, not normalized, onesided, power 1 or 2"
            )
        n_fft, win_length = spectrogram.n_fft, spectrogram.win_length
        window = torch.zeros(n_fft, dtype=torch.float64)
        left = (n_fft - win_length) // 2  # torch.stft centres a shorter window inside n_fft
        window[left : left + win_length] = spectrogram.window.double()
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        n = torch.arange(n_fft, dtype=torch.float64)[None, :]
        angle = 2 * torch.pi * k * n / n_fft  # (F, N)
        basis = torch.cat([torch.cos(angle), torch.sin(angle)]) * window  # (2F, N)
        self.register_buffer("basis", basis[:, None, :].float())  # (2F, 1, N)
        self.hop_length = spectrogram.hop_length
        self.n_bins = n_fft // 2 + 1
        self.power = spectrogram.power

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        y = nn.functional.conv1d(waveform[:, None, :], self.basis, stride=self.hop_length)  # (B, 2F, T)
        power = y[:, : self.n_bins] ** 2 + y[:, self.n_bins :] ** 2  # (B, F, T)
        return power if self.power == 2.0 else torch.sqrt(power)


class ExportableSelfAttention(nn.Module):
    """`nn.MultiheadAttention` (batch_first, self-attention, key padding mask only) with reshapes
    that keep batch and time dynamic in the traced graph (the stock module bakes them in):

    softmax(Q Kᵀ / √d + mask) V per head, Q, K, V = x W_{q,k,v}ᵀ + b; out = concat_h(·) W_oᵀ + b_o.
    """

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        if (
            not (attention.batch_first and attention._qkv_same_embed_dim)
            or attention.bias_k is not None
            or attention.add_zero_attn
        ):
            raise OnnxExportError(
                "cannot export nn.MultiheadAttention without batch_first, with separate q/k/v sizes, bias_k/v or add_zero_attn"
            )
        self.batch_first = True
        self._qkv_same_embed_dim = True
        self.num_heads = attention.num_heads
        self.head_dim = attention.head_dim
        self.in_proj_weight = attention.in_proj_weight
        self.in_proj_bias = attention.in_proj_bias
        self.out_proj = attention.out_proj

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None, **kwargs):
        if attn_mask is not None or not (query is key is value):
            raise OnnxExportError(
                "ExportableSelfAttention supports self-attention with a key padding mask only"
            )
        q, k, v = nn.functional.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(
            3, dim=-1
        )  # (B, T, D) each
        q, k, v = (
            x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for x in (q, k, v)
        )  # (B, H, T, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, T, T)
        if key_padding_mask is not None and key_padding_mask.dtype == torch.bool:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        elif (
            key_padding_mask is not None
        ):  # the additive float form (0 or −inf) nn.TransformerEncoderLayer passes
            scores = scores + key_padding_mask[:, None, None, :].to(scores.dtype)
        out = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).flatten(2)  # (B, T, D)
        return self.out_proj(out), None


def exportable_copy(model: SERModel) -> SERModel:
    """A copy of `model` (eval mode) with its torchaudio spectrograms as `DftSpectrogram` and its
    multi-head attentions as `ExportableSelfAttention`: the same function, traceable to ONNX."""
    model = copy.deepcopy(model).eval()
    replacements = {
        torchaudio.transforms.Spectrogram: DftSpectrogram,
        nn.MultiheadAttention: ExportableSelfAttention,
    }
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            for kind, exportable in replacements.items():
                if isinstance(child, kind):
                    setattr(module, name, exportable(child))
    return model


class _Probabilities(nn.Module):
    """(waves, lengths[, pitch]) → (z / T, softmax(z / T)): the calibrated logits and probabilities of the
    model's logits z with the folder's temperature T (`ser_model.calibration`), what inference needs;
    ``pitch``: a ``model.pitch`` model's pitch features (module docstring)."""

    def __init__(self, model: SERModel, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(
        self, waves: torch.Tensor, lengths: torch.Tensor, pitch: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        extra = {} if pitch is None else {"pitch": pitch}
        logits = self.model(waves, lengths, **extra).logits / self.temperature  # (B, C)
        return logits, torch.softmax(logits, dim=-1)


def _example(model: SERModel, seconds: Sequence[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of random waveforms of the given durations: waves (B, L), lengths (B,)."""
    sr = model.config.model.sample_rate
    lengths = torch.tensor([int(s * sr) for s in seconds], dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    waves = 0.1 * torch.randn(len(seconds), int(lengths.max()), generator=generator)
    waves = waves * (torch.arange(waves.shape[1])[None, :] < lengths[:, None])
    return waves, lengths


def graph_inputs(model: SERModel, waves: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """The exported graph's inputs for a padded batch: waves, lengths and, with ``model.pitch``, the
    batch's pitch features computed outside the graph (module docstring)."""
    inputs = {"waves": waves, "lengths": lengths}
    mc = model.config.model
    if mc.pitch:
        inputs["pitch"] = pitch_input(waves, lengths, mc.sample_rate)  # (B, T, 4)
    return inputs


def onnx_parity(
    model: SERModel,
    onnx_path: str | os.PathLike,
    seconds: Sequence[float] = PARITY_SECONDS,
    temperature: float = 1.0,
) -> dict[str, float]:
    """Max |p_onnx − p_torch| of the calibrated class probabilities (``temperature``), per input
    length (each alone, batch of 1) and for all lengths padded into one batch. Keys: "<s>s" and "batch"."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    wrapped = _Probabilities(model, temperature).eval()
    cases = {f"{s}s": [s] for s in seconds} | {"batch": list(seconds)}
    errors = {}
    with torch.no_grad():
        for name, durations in cases.items():
            inputs = graph_inputs(model, *_example(model, durations, seed=len(errors) + 1))
            expected = wrapped(*inputs.values())[1].numpy()
            got = session.run(["probabilities"], {k: v.numpy() for k, v in inputs.items()})[0]
            errors[name] = float(np.abs(got - expected).max())
    return errors


def _write_metadata(path: Path, model: SERModel) -> None:
    """Store `METADATA` (labels, sample rate, trim_db) in the ONNX file's metadata_props."""
    import onnx

    proto = onnx.load(str(path))
    values = {
        "labels": list(model.labels),
        "sample_rate": model.config.model.sample_rate,
        "trim_db": model.config.model.trim_db,
    }
    for field, key in METADATA.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(values[field])
    onnx.save(proto, str(path))


def export_onnx(
    folder: str | os.PathLike, out_path: str | os.PathLike, *, atol: float = 1e-4, opset: int = OPSET
) -> Path:
    """Export the `save_pretrained` folder's model to `out_path` (ONNX) and check it against
    PyTorch at two lengths; writes `<out_path>.labels.json` beside it (class order of the outputs).
    The graph divides the logits by the folder's temperature: its probabilities are the calibrated ones."""
    model = load_model(folder).eval()
    temperature = read_temperature(folder)
    if model.config.model.uses_speaker_statistics:
        raise ConfigError(
            f"{folder}: trained with speaker-level normalisation (model.fbank_norm='speaker'), which needs each "
            "speaker's log-mel statistics beside the audio; the ONNX graph takes audio alone, so it is not exported"
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    inputs = graph_inputs(model, *_example(model, PARITY_SECONDS))
    dynamic = {"pitch": {0: "batch", 1: "frames"}} if "pitch" in inputs else {}
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", torch.jit.TracerWarning
        )  # the backbones' input checks are traced as constants
        torch.onnx.export(
            _Probabilities(exportable_copy(model), temperature),
            tuple(inputs.values()),
            str(out_path),
            input_names=list(inputs),
            output_names=["logits", "probabilities"],
            dynamic_axes={
                "waves": {0: "batch", 1: "samples"},
                "lengths": {0: "batch"},
                "logits": {0: "batch"},
                "probabilities": {0: "batch"},
                **dynamic,
            },
            opset_version=opset,
            dynamo=False,
        )
    _write_metadata(out_path, model)
    errors = onnx_parity(model, out_path, temperature=temperature)
    worst = max(errors.values())
    if worst > atol:
        raise OnnxExportError(
            f"{out_path}: ONNX Runtime differs from PyTorch by up to {worst:.2e} (> atol {atol:.0e}): {errors}"
        )
    out_path.with_name(out_path.name + ".labels.json").write_text(
        json.dumps(list(model.labels)) + "\n", encoding="utf-8"
    )
    log.info("exported %s (parity %s)", out_path, {k: f"{v:.1e}" for k, v in errors.items()})
    return out_path


class OnnxScorer:
    """Windows scored by an exported graph on ONNX Runtime (CPU): the `WindowScorer` of
    `ser_model.segments` for a file written by `export_onnx`.

    Raises OnnxExportError naming the file when it cannot be loaded or lacks the metadata
    (`METADATA`; files exported before it existed: export again)."""

    def __init__(self, path: str | os.PathLike, batch_size: int = 8, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own Fail / InvalidProtobuf / NoSuchFile types
            raise OnnxExportError(
                f"{path}: cannot load the ONNX graph ({err}); expected a file written by ser export --onnx"
            ) from err
        stored = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in METADATA.values() if key not in stored]
        if missing:
            raise OnnxExportError(
                f"{path}: no {missing} in the ONNX metadata; export the model again with this version (ser export --onnx)"
            )
        self.labels = tuple(json.loads(stored[METADATA["labels"]]))
        self.sample_rate = int(json.loads(stored[METADATA["sample_rate"]]))
        self.trim_db = json.loads(stored[METADATA["trim_db"]])
        self.batch_size = batch_size
        self.pitch = any(graph_input.name == "pitch" for graph_input in self.session.get_inputs())

    def window_probabilities(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Prepared mono waveforms at the model rate → (len(waves), C) probabilities, `batch_size`
        at a time, zero-padded to the batch's longest (the graph masks by `lengths`)."""
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float64)
        for start in range(0, len(waves), self.batch_size):
            chosen = waves[start : start + self.batch_size]
            lengths = np.array([len(w) for w in chosen], dtype=np.int64)
            batch = np.zeros((len(chosen), int(lengths.max())), dtype=np.float32)
            for row, w in enumerate(chosen):
                batch[row, : len(w)] = w
            inputs = {"waves": batch, "lengths": lengths}
            if self.pitch:  # a model.pitch graph: its pitch features, computed outside it
                features = pitch_input(torch.from_numpy(batch), torch.from_numpy(lengths), self.sample_rate)
                inputs["pitch"] = features.numpy()
            out[start : start + len(chosen)] = self.session.run(["probabilities"], inputs)[0]
        return out
