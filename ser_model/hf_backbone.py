"""The Hugging Face backbone (``backbone="hf:<hub id or local folder>"``): any audio SSL model
(WavLM, HuBERT, wav2vec 2.0, data2vec) from a hub id or a local folder (offline).

Modes (``ser_model.backbone_facts``): "finetune" (CNN feature encoder frozen), "frozen" (last
layer, no gradient) or "weighted_sum" (softmax-weighted sum of all hidden layers of a frozen
backbone); ``use_layer_weights`` also gives "finetune" the weighted sum (:class:`LayerWeightedSum`).

``tiny_wavlm_config()`` and ``save_random_hf_backbone()`` build small random WavLMs locally for
tests and demos (no hub access).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ser_model.backbone_facts import (
    FROZEN_MODES,
    HF_SAMPLE_RATE,
    check_backbone_mode,
    layer_weights_problem,
    resolve_layer_weights,
)
from ser_model.backbones import Backbone, check_waveform_batch, lengths_to_mask, masked_mean_std

logger = logging.getLogger(__name__)


class LayerWeightedSum(nn.Module):
    """SUPERB-style learnable layer mix: h = Σ_k softmax(w)_k · h_k.  layers (K, B, T, D) → (B, T, D)."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(n_layers))

    def forward(self, layers: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.weights, dim=0).to(layers.dtype)
        return torch.einsum("k,kbtd->btd", w, layers)


def normalize_waveform(waves: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-utterance zero mean, unit variance over valid samples; padding set to 0.  (B, L) → (B, L)."""
    mask = lengths_to_mask(lengths, waves.shape[1])
    mean, std = masked_mean_std(waves, mask, dim=1, eps=eps)
    return (waves - mean) / std * mask.to(waves.dtype)


class HFBackbone(Backbone):
    """A Hugging Face audio SSL model as a backbone (see module docstring for the modes).

    Padded samples are zeroed; models with a layer-normalised feature encoder
    (``feat_extract_norm="layer"``: WavLM-Large, HuBERT-Large, wav2vec 2.0 Large-lv60) also get
    an attention mask from the lengths, group-norm models (the Base sizes) do not, as their
    feature extractors recommend. Valid frames come from ``_get_feat_extract_output_lengths``.
    With layer weights, the K = num_hidden_layers + 1 hidden states are the embedding output,
    each layer's output, and the final output in place of the last layer's raw output.
    """

    def __init__(
        self,
        model: nn.Module,
        mode: str = "finetune",
        use_layer_weights: bool | None = None,
        wave_norm: bool = True,
    ) -> None:
        super().__init__()
        check_backbone_mode(mode, "HFBackbone mode")
        if not hasattr(model, "_get_feat_extract_output_lengths"):
            raise ValueError(
                f"HFBackbone: {type(model).__name__} has no _get_feat_extract_output_lengths; expected a "
                "wav2vec 2.0-style audio model (WavLM, HuBERT, wav2vec 2.0, data2vec-audio)"
            )
        self.model = model
        self.mode = mode
        self.wave_norm = wave_norm
        config = model.config
        problem = layer_weights_problem(mode, use_layer_weights)
        if problem is not None:
            raise ValueError(f"HFBackbone use_layer_weights: {problem}")
        use_layer_weights = resolve_layer_weights(mode, use_layer_weights)
        self.layer_weights = LayerWeightedSum(config.num_hidden_layers + 1) if use_layer_weights else None
        self.out_dim = config.hidden_size
        self.frame_rate = HF_SAMPLE_RATE / math.prod(config.conv_stride)
        self.pass_attention_mask = getattr(config, "feat_extract_norm", "layer") == "layer"
        if mode in FROZEN_MODES:
            model.requires_grad_(False)
            model.eval()
        else:
            model.freeze_feature_encoder()

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        mode: str = "finetune",
        use_layer_weights: bool | None = None,
        wave_norm: bool = True,
    ) -> HFBackbone:
        """Load weights from a hub id or a local folder (a local folder needs no network)."""
        from transformers import AutoModel

        local = Path(source).expanduser()
        if local.is_dir():
            source = str(local)
        logger.info("loading hf backbone %s (mode %s)", source, mode)
        model = AutoModel.from_pretrained(source, local_files_only=local.is_dir())
        return cls(model, mode, use_layer_weights, wave_norm)

    @classmethod
    def from_config(
        cls,
        config: Any,
        mode: str = "finetune",
        use_layer_weights: bool | None = None,
        wave_norm: bool = True,
    ) -> HFBackbone:
        """Randomly initialised model from a transformers config object or its ``to_dict()``."""
        from transformers import AutoConfig, AutoModel

        if isinstance(config, dict):
            data = dict(config)
            config = AutoConfig.for_model(data.pop("model_type"), **data)
        return cls(AutoModel.from_config(config), mode, use_layer_weights, wave_norm)

    def config_dict(self) -> dict[str, Any]:
        """The transformers config as a JSON-able dict (stored beside checkpoints)."""
        return self.model.config.to_dict()

    def train(self, mode: bool = True) -> HFBackbone:
        """Frozen modes keep the wrapped model in eval mode (no dropout, no SpecAugment) while the rest trains."""
        super().train(mode)
        if self.mode in FROZEN_MODES:
            self.model.eval()
        return self

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(lengths).to(torch.long).clamp_min(1)

    @property
    def n_hidden_states(self) -> int:
        """K = num_hidden_layers + 1: the embedding output and every layer's (the last one final-normed)."""
        return self.model.config.num_hidden_layers + 1

    @property
    def layer_set(self) -> tuple[int, ...]:
        """Indices (into the K hidden states) that ``hidden_states`` returns: all K for the layer weights, the last alone otherwise."""
        return (
            tuple(range(self.n_hidden_states))
            if self.layer_weights is not None
            else (self.n_hidden_states - 1,)
        )

    def hidden_states(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden states of ``layer_set``: waves (B, L), lengths (B,) → states (B, K', T, D) zero at padded frames, mask (B, T).

        Without gradient in the frozen modes, so these are what ``ser_model.feature_cache`` stores.
        """
        check_waveform_batch(waves, lengths)
        samples = lengths_to_mask(lengths, waves.shape[1])
        waves = normalize_waveform(waves, lengths) if self.wave_norm else waves * samples.to(waves.dtype)
        attention_mask = samples.long() if self.pass_attention_mask else None
        want_layers = self.layer_weights is not None
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.mode not in FROZEN_MODES):
            out = self.model(waves, attention_mask=attention_mask, output_hidden_states=want_layers)
        if want_layers:
            # the last entry is the final output (after the final LayerNorm of pre-LN models like WavLM-Large)
            states = torch.stack((*out.hidden_states[:-1], out.last_hidden_state), dim=1)  # (B, K, T, D)
        else:
            states = out.last_hidden_state[:, None]  # (B, 1, T, D)
        mask = lengths_to_mask(self.frame_lengths(lengths).clamp_max(states.shape[2]), states.shape[2])
        return states * mask[:, None, :, None].to(states.dtype), mask

    def mix_layers(self, states: torch.Tensor) -> torch.Tensor:
        """Frames from ``hidden_states``' output, live or cached: states (B, K', T, D) → (B, T, D), zero where the states are."""
        if self.layer_weights is None:
            return states[:, 0]
        return self.layer_weights(states.transpose(0, 1))  # (K, B, T, D) → (B, T, D)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask = self.hidden_states(waves, lengths)  # (B, K', T, D), (B, T)
        return self.mix_layers(states), mask


def tiny_wavlm_config(**overrides: Any) -> Any:
    """A small WavLMConfig (hidden 32, 2 layers, 2 heads, 3 conv layers, stride 320 → 50 frames/s) for tests."""
    from transformers import WavLMConfig

    values: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 8, 8),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_buckets=16,
        max_bucket_distance=50,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        mask_time_prob=0.0,
        layerdrop=0.0,
    )
    values.update(overrides)
    return WavLMConfig(**values)


def save_random_hf_backbone(folder: str | Path, config: Any | None = None, seed: int = 0) -> Path:
    """Write a randomly initialised model (default ``tiny_wavlm_config()``) to ``folder`` for ``hf:<folder>``."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_config(config if config is not None else tiny_wavlm_config())
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder
