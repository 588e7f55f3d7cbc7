"""What the backbones are, stated once and without torch: the hf backbone modes, which of them
freeze the backbone, the layer-weight rule, the sample rate hf backbones take, and the framing of
the log-mel and of silence trimming.

Torch-free on purpose: ``ser_model.config`` validates configs with these facts in processes that
never load torch (the flows), and the backbone modules (``ser_model.fbank_backbone``,
``ser_model.hf_backbone``), ``ser_model.feature_cache`` and ``ser_model.audio`` read the same
names, so no copy of a fact can drift from another.
"""

from __future__ import annotations

from typing import Literal, get_args

BackboneMode = Literal["finetune", "frozen", "weighted_sum"]
"""How an hf backbone trains: ``"finetune"`` (CNN feature encoder frozen, transformer trained),
``"frozen"`` (last layer, no gradient) or ``"weighted_sum"`` (softmax-weighted sum of all hidden
layers of a frozen backbone, SUPERB-style)."""
BACKBONE_MODES: tuple[str, ...] = get_args(BackboneMode)
FROZEN_MODES: tuple[str, ...] = ("frozen", "weighted_sum")
"""The modes whose backbone never changes in training (its hidden states can be cached)."""

HF_SAMPLE_RATE = 16000
"""Hugging Face SSL speech models (WavLM, HuBERT, wav2vec 2.0) take 16 kHz audio."""

WIN_SECONDS = 0.025
"""Frame length of the log-mel and of silence trimming: frame k covers [k·hop, k·hop + win)."""
HOP_SECONDS = 0.010
"""Hop between frames of the log-mel and of silence trimming."""


def check_backbone_mode(mode: str, where: str) -> None:
    """ValueError naming ``where`` unless ``mode`` is one of :data:`BACKBONE_MODES`."""
    if mode not in BACKBONE_MODES:
        raise ValueError(f"{where}: got {mode!r}, expected one of {BACKBONE_MODES}")


def layer_weights_problem(mode: str, use_layer_weights: bool | None) -> str | None:
    """Why ``use_layer_weights`` does not fit an hf backbone in ``mode``, or None when it does:
    "frozen" is the last layer alone, "weighted_sum" is the weighted layer sum itself."""
    if mode == "frozen" and use_layer_weights:
        return (
            "got True with backbone_mode='frozen' (last layer only); "
            "use backbone_mode='weighted_sum' for a weighted sum over a frozen backbone"
        )
    if mode == "weighted_sum" and use_layer_weights is False:
        return "got False with backbone_mode='weighted_sum', which is the weighted layer sum; expected None or True"
    return None


def resolve_layer_weights(mode: str, use_layer_weights: bool | None) -> bool:
    """Whether an hf backbone in ``mode`` weights its hidden layers: ``use_layer_weights``, where
    None means True for "finetune" and "weighted_sum" and False for "frozen"."""
    return mode != "frozen" if use_layer_weights is None else use_layer_weights
