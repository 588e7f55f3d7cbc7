"""The model section of a SER experiment's configuration (``ser_model.config.SERConfig.model``):
the backbone (a log-mel CNN or a Hugging Face model), its layer weights, FLAM and the head.

A frozen pydantic dataclass like the other sections (``ser_model.config_validation.config_dataclass``);
its rules run in ``__post_init__`` and every error is a ``ConfigError`` naming the field.
"""

from __future__ import annotations

from typing import Literal

from ser_model.backbone_facts import (
    HF_SAMPLE_RATE,
    BackboneMode,
    layer_weights_problem,
    resolve_layer_weights,
)
from ser_model.config_validation import (
    CountInt,
    Dropout,
    Ints,
    PositiveInt,
    bounded,
    config_dataclass,
    require,
)

__all__ = ["ModelConfig"]


@config_dataclass
class ModelConfig:
    """Backbone → (layer weights) → FLAM (or mean pooling) → head.

    Five sections of fields, each under a comment naming the backbones it applies to. Flat on
    purpose: saved ``config.json`` files, presets, search spaces and the override keys users type
    (``model.fbank_norm=speaker``) name every field as ``model.<field>``.

    **Which backbone** (every backbone). ``backbone``: ``"fbank"`` (80-d log-mel + a small encoder
    trained from scratch) or ``"hf:<hub id or local folder>"`` (any Hugging Face audio SSL model,
    e.g. ``hf:microsoft/wavlm-large``).

    **hf backbones only** (with fbank, ``backbone_mode`` must stay "finetune" and
    ``use_layer_weights`` None or False). ``backbone_mode`` (the paper does not say):
    ``"finetune"`` (CNN feature encoder frozen, transformer trained), ``"frozen"`` (last layer, no
    gradient) or ``"weighted_sum"`` (softmax-weighted sum of all hidden layers of a frozen
    backbone, SUPERB-style). ``use_layer_weights`` (ours, SUPERB-style): feed FLAM a learnable
    softmax-weighted sum of all hidden layers; ``None`` means True for "weighted_sum" and
    "finetune", False for "frozen" and for the fbank backbone (resolved by the ``layer_weights``
    property). ``wave_norm``: normalise each waveform to zero mean, unit variance over its valid
    samples before the backbone (what the WavLM-Large feature extractor does).

    **FLAM and the head** (every backbone). ``flam``: False replaces FLAM by mean pooling over
    valid frames (ablation). ``flam_heads``: heads of the FLAM self-attention; ``None`` means 16
    for hf backbones (docs/METHOD.md) and 4 for fbank (resolved by the ``n_flam_heads`` property).
    ``flam_dropout`` (ours): dropout on the attention output before the residual. ``embed_dim``:
    size of the embedding e (center loss acts on it); ``head_dropout`` (ours) after it.
    ``embed_norm`` (ours, not in docs/METHOD.md): normalisation between the embedding layer and
    its ReLU: ``"none"`` (the paper's head: Linear → ReLU), ``"batch"`` (BatchNorm1d: every unit is
    centred over the batch, so no unit can sit below zero for every utterance and die) or ``"layer"``.

    **The audio** (every backbone). ``trim_db`` (ours): leading and trailing frames whose energy
    lies more than this many dB below the utterance's loudest frame are cut before the model sees
    the audio, in training, evaluation and inference alike (``ser_model.audio.trim_silence``); None
    keeps the audio whole. ``sample_rate``: the rate the backbone takes (16 kHz for hf backbones).

    **The fbank backbone only** (``n_mels`` … ``spec_*``; ``ser_model.fbank_backbone.FbankBackbone``):
    25 ms window, 10 ms hop, log-mel normalised per utterance (``fbank_norm``), SpecAugment-style
    masks in training, then a 2-D CNN over the (mel × time) image: one block per entry of
    ``fbank_channels``, each Conv2d 3×3 → BatchNorm2d → ReLU → MaxPool (2 over mel,
    ``fbank_time_pools[i]`` over time); the channels × remaining mel bins of every frame are
    projected to ``fbank_dim``, then ``fbank_layers`` transformer layers (0: none).
    ``fbank_norm``: how the log-mel is normalised per utterance over its valid frames: ``"bin"``
    (each mel bin to zero mean, unit variance), ``"bin_mean"`` (each mel bin's mean subtracted:
    cepstral mean normalisation, keeps each bin's dynamics) or ``"utterance"`` (one mean and one
    standard deviation over all bins and frames: removes the recording gain, keeps the spectral shape)
    or ``"speaker"`` (ours, after the speaker-level normalisation of the SER literature: each mel bin
    to zero mean, unit variance over all frames of all utterances of the utterance's speaker, so an
    utterance keeps its own mean spectrum relative to its speaker's; the model then needs the
    speaker's statistics, computed from that speaker's unlabelled utterances: ``ser_model.speaker_norm``,
    docs/METHOD.md "Speaker-level normalisation"; refused with an hf backbone). ``pitch`` (ours): the voice's
    F0 and periodicity per log-mel frame join every CNN frame before the projection (``ser_model.pitch_branch``).
    """

    # -- which backbone (every backbone)
    backbone: str = "fbank"
    # -- hf backbones only
    backbone_mode: BackboneMode = "finetune"
    use_layer_weights: bool | None = None
    wave_norm: bool = True
    # -- FLAM and the head (every backbone)
    flam: bool = True
    flam_heads: PositiveInt | None = None
    flam_dropout: Dropout = 0.1
    embed_dim: PositiveInt = 64
    head_dropout: Dropout = 0.1
    embed_norm: Literal["none", "batch", "layer"] = "none"
    # -- the audio (every backbone)
    trim_db: bounded(float, "a positive number of dB", gt=0.0) | None = None
    sample_rate: PositiveInt = 16000
    # -- the fbank backbone only
    n_mels: PositiveInt = 80
    fbank_channels: Ints = (32, 64, 128, 128)
    fbank_time_pools: Ints = (2, 2, 2, 2)
    fbank_dim: PositiveInt = 128
    fbank_layers: CountInt = 0
    fbank_heads: PositiveInt = 4
    fbank_ff_mult: PositiveInt = 2
    fbank_dropout: Dropout = 0.1
    fbank_norm: Literal["bin", "bin_mean", "utterance", "speaker"] = "bin"
    spec_time_masks: CountInt = 2
    spec_time_width: CountInt = 20
    spec_freq_masks: CountInt = 2
    spec_freq_width: CountInt = 10
    pitch: bool = False

    def __post_init__(self) -> None:
        w = "ModelConfig"
        is_hf = self.is_hf
        require(
            self.backbone == "fbank" or (is_hf and len(self.backbone) > 3),
            f"{w}.backbone",
            f"got {self.backbone!r}, expected 'fbank' or 'hf:<hub id or local folder>'",
        )
        if not is_hf:
            require(
                self.backbone_mode == "finetune",
                f"{w}.backbone_mode",
                f"got {self.backbone_mode!r} with the fbank backbone, which is trained from scratch; expected 'finetune'",
            )
            require(
                not self.use_layer_weights,
                f"{w}.use_layer_weights",
                "the fbank backbone exposes no hidden layers to weight; expected None or False",
            )
        else:
            require(not self.pitch, f"{w}.pitch", "joins the fbank CNN; expected false with an hf backbone")
            require(
                self.fbank_norm != "speaker",
                f"{w}.fbank_norm",
                f"'speaker' normalises the fbank backbone's log-mel, and the backbone is {self.backbone!r}; "
                "expected backbone='fbank' with fbank_norm='speaker', or another fbank_norm with an hf backbone",
            )
            require(
                self.sample_rate == HF_SAMPLE_RATE,
                f"{w}.sample_rate",
                f"got {self.sample_rate} with an hf backbone; SSL speech models expect {HF_SAMPLE_RATE}",
            )
        problem = layer_weights_problem(self.backbone_mode, self.use_layer_weights)
        require(problem is None, f"{w}.use_layer_weights", str(problem))
        require(
            len(self.fbank_channels) >= 1 and all(c >= 1 for c in self.fbank_channels),
            f"{w}.fbank_channels",
            f"got {self.fbank_channels}, expected at least one conv block, each with >= 1 channel",
        )
        require(
            len(self.fbank_time_pools) == len(self.fbank_channels)
            and all(p >= 1 for p in self.fbank_time_pools),
            f"{w}.fbank_time_pools",
            f"got {self.fbank_time_pools}, expected one time pooling factor >= 1 per conv block ({len(self.fbank_channels)})",
        )
        require(
            self.n_mels >= 2 ** len(self.fbank_channels),
            f"{w}.n_mels",
            f"got {self.n_mels} mel bins for {len(self.fbank_channels)} conv blocks that each halve them; expected >= {2 ** len(self.fbank_channels)}",
        )
        require(
            self.fbank_dim % self.fbank_heads == 0,
            f"{w}.fbank_heads",
            f"fbank_dim={self.fbank_dim} is not divisible by fbank_heads={self.fbank_heads}",
        )
        if not is_hf and self.flam:
            require(
                self.fbank_dim % self.n_flam_heads == 0,
                f"{w}.flam_heads",
                f"fbank_dim={self.fbank_dim} is not divisible by flam_heads={self.n_flam_heads}",
            )
        require(
            self.spec_freq_width <= self.n_mels,
            f"{w}.spec_freq_width",
            f"got {self.spec_freq_width}, expected at most n_mels={self.n_mels}",
        )

    @property
    def uses_speaker_statistics(self) -> bool:
        """Whether the model normalises by its speakers' log-mel statistics (``fbank_norm="speaker"``),
        so that scoring needs the speaker of every input (``ser_model.speaker_norm``)."""
        return self.fbank_norm == "speaker"

    @property
    def is_hf(self) -> bool:
        """Whether the backbone is a Hugging Face model (``hf:<id or folder>``)."""
        return self.backbone.startswith("hf:")

    @property
    def layer_weights(self) -> bool:
        """``use_layer_weights`` resolved: None means True for hf "finetune"/"weighted_sum", False otherwise."""
        return self.is_hf and resolve_layer_weights(self.backbone_mode, self.use_layer_weights)

    @property
    def n_flam_heads(self) -> int:
        """``flam_heads`` resolved: None means 16 for hf backbones (docs/METHOD.md), 4 for fbank."""
        if self.flam_heads is None:
            return 16 if self.is_hf else 4
        return self.flam_heads

    @property
    def hf_source(self) -> str:
        """The hub id or local folder after ``hf:``."""
        require(self.is_hf, "ModelConfig.backbone", f"{self.backbone!r} is not an hf backbone")
        return self.backbone[3:]
