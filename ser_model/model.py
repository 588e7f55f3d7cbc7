"""The SER model: backbone → (layer weights) → FLAM (or mean pooling) → head, plus the loss parameters.

head: u (B, D) → Linear(D, E) → [norm, ours: ``ModelConfig.embed_norm``] → ReLU → e (B, E)
      (the embedding; center loss acts here) → Dropout → Linear(E, C) → logits z (B, C).
The class centers (C, E) and the SupCon projection head (D → D → P) live in the model (when their
loss terms are on) so that one checkpoint holds everything and the optimiser can give the centers
their own learning rate (``center_parameters()`` / ``main_parameters()``).

A checkpoint folder (``save_pretrained``) holds ``config.json`` (the SERConfig),
``model.safetensors``, ``labels.json`` and, for hf backbones, ``backbone_config.json`` (the
transformers config), so ``from_pretrained`` needs neither the hub nor pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ser_model.backbone_facts import FROZEN_MODES
from ser_model.backbones import Backbone
from ser_model.config import ModelConfig, SERConfig
from ser_model.fbank_backbone import FbankBackbone, LogMelStatistics
from ser_model.flam import AttentivePooling, FrameAttention, mean_pool
from ser_model.hf_backbone import HFBackbone
from ser_model.launch import BACKBONE_CONFIG_FILE, CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE


@dataclass
class SEROutput:
    """logits (B, C); embedding e (B, E); frames H' (B, T, D) after FLAM (backbone frames without FLAM);
    frame_mask (B, T) bool valid; pooled u (B, D); attention α (B, T) of the pooling, or None with mean pooling.
    """

    logits: torch.Tensor
    embedding: torch.Tensor
    frames: torch.Tensor
    frame_mask: torch.Tensor
    pooled: torch.Tensor
    attention: torch.Tensor | None = None


class BatchNormAnyBatch(nn.BatchNorm1d):
    """BatchNorm1d that also trains on a batch of one (the last batch of an epoch can be): such a
    batch is normalised with the running statistics, which it leaves unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


def embedding_norm(kind: str, dim: int) -> nn.Module:
    """The normalisation before the embedding's ReLU (``ModelConfig.embed_norm``, ours).

    "batch": each unit centred and scaled over the batch, so it is positive for part of every batch
    and cannot die (with the paper's plain Linear → ReLU, the pooled vectors of different utterances
    are so alike at initialisation that half the units have one sign for all of them); "layer":
    each embedding centred over its units; "none": the paper's head.
    """
    if kind == "batch":
        return BatchNormAnyBatch(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    return nn.Identity()


def build_backbone(cfg: ModelConfig) -> Backbone:
    """The backbone named by ``cfg.backbone`` ("fbank" or "hf:<hub id or local folder>")."""
    if cfg.is_hf:
        return HFBackbone.from_pretrained(cfg.hf_source, cfg.backbone_mode, cfg.layer_weights, cfg.wave_norm)
    return FbankBackbone(cfg)


class SERModel(nn.Module):
    """Backbone → FLAM → head (see module docstring). ``backbone_config``: build an hf backbone
    from this transformers config (dict or object) with random weights instead of loading it from
    ``config.model.backbone``; ``from_pretrained`` uses it so checkpoints load offline.
    """

    def __init__(self, config: SERConfig, backbone_config: Any | None = None) -> None:
        super().__init__()
        self.config = config
        mc = config.model
        if backbone_config is not None:
            if not mc.is_hf:
                raise ValueError(
                    f"SERModel: backbone_config given but config.model.backbone is {mc.backbone!r}, not hf:"
                )
            self.backbone: Backbone = HFBackbone.from_config(
                backbone_config, mc.backbone_mode, mc.layer_weights, mc.wave_norm
            )
        else:
            self.backbone = build_backbone(mc)
        dim = self.backbone.out_dim
        if mc.flam:
            if dim % mc.n_flam_heads != 0:
                raise ValueError(
                    f"SERModel: backbone width D={dim} is not divisible by ModelConfig.flam_heads={mc.n_flam_heads}"
                )
            self.frame_attention: FrameAttention | None = FrameAttention(
                dim, mc.n_flam_heads, mc.flam_dropout
            )
            self.pooling: AttentivePooling | None = AttentivePooling(dim)
        else:
            self.frame_attention = None
            self.pooling = None
        self.embed = nn.Linear(dim, mc.embed_dim)
        self.embed_norm = embedding_norm(mc.embed_norm, mc.embed_dim)
        self.head_dropout = nn.Dropout(mc.head_dropout)
        self.classifier = nn.Linear(mc.embed_dim, config.n_classes)
        lc = config.loss
        self.centers = nn.Parameter(torch.zeros(config.n_classes, mc.embed_dim)) if lc.center else None
        self.supcon_proj = (
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, lc.supcon_proj_dim))
            if lc.supcon
            else None
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    def forward(
        self,
        waves: torch.Tensor,
        lengths: torch.Tensor,
        speaker_stats: LogMelStatistics | None = None,
        pitch: torch.Tensor | None = None,
    ) -> SEROutput:
        """waves (B, L) float, lengths (B,) long → SEROutput.

        ``speaker_stats``: with ``model.fbank_norm = "speaker"``, the log-mel statistics of each
        utterance's speaker, mean and std (B, n_mels) (``ser_model.speaker_norm``); required then, refused otherwise.
        ``pitch``: with ``model.pitch``, the waveforms' pitch features (B, T, 4) when already computed
        (training crops of cached tracks); None computes them from the waveforms (``FbankBackbone.forward``).
        """
        if pitch is not None and not self.config.model.pitch:
            raise ValueError("SERModel: pitch features given, but model.pitch is false; leave them out")
        extra = {} if pitch is None else {"pitch": pitch}  # only the fbank backbone takes them
        if self.config.model.uses_speaker_statistics:
            if speaker_stats is None:
                raise ValueError(
                    "SERModel: this model normalises the log-mel by each speaker's statistics (model.fbank_norm='speaker'); "
                    "give speaker_stats, the mean and std (B, n_mels) of each utterance's speaker "
                    "(ser_model.speaker_norm.speaker_statistics; Predictor: speakers=[...])"
                )
            frames, mask = self.backbone(waves, lengths, speaker_stats, **extra)  # (B, T, D), (B, T)
        elif speaker_stats is not None:
            raise ValueError(
                f"SERModel: speaker_stats given, but model.fbank_norm={self.config.model.fbank_norm!r} "
                "does not use speaker statistics; leave them out"
            )
        else:
            frames, mask = self.backbone(waves, lengths, **extra)  # (B, T, D), (B, T)
        return self.forward_frames(frames, mask)

    def forward_cached(self, states: torch.Tensor, mask: torch.Tensor) -> SEROutput:
        """Precomputed hidden states of a frozen hf backbone (``HFBackbone.hidden_states``, as
        ``ser_model.feature_cache`` stores them): states (B, K', T, D) zero-padded, mask (B, T) → SEROutput.
        The layer weights (weighted_sum) still train: they act on the cached states."""
        if not isinstance(self.backbone, HFBackbone) or self.backbone.mode not in FROZEN_MODES:
            raise ValueError(
                f"SERModel.forward_cached: backbone {self.config.model.backbone!r} in mode {self.config.model.backbone_mode!r} "
                f"changes in training; expected an hf backbone in one of the modes {FROZEN_MODES}"
            )
        return self.forward_frames(self.backbone.mix_layers(states), mask)

    def forward_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> SEROutput:
        """Everything after the backbone: frames (B, T, D) zero at padded frames, mask (B, T) bool valid → SEROutput."""
        attention = None
        if self.frame_attention is not None:
            frames = self.frame_attention(frames, mask)  # (B, T, D)
            pooled, attention = self.pooling(frames, mask)  # (B, D), (B, T)
        else:
            pooled = mean_pool(frames, mask)  # (B, D)
        embedding = torch.relu(self.embed_norm(self.embed(pooled)))  # (B, E)
        logits = self.classifier(self.head_dropout(embedding))  # (B, C)
        return SEROutput(logits, embedding, frames, mask, pooled, attention)

    def center_parameters(self) -> list[nn.Parameter]:
        """The class centers (own learning rate, TrainConfig.center_lr); empty when the center loss is off."""
        return [self.centers] if self.centers is not None else []

    def main_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter except the centers."""
        return [p for name, p in self.named_parameters() if p.requires_grad and name != "centers"]

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write config.json, model.safetensors, labels.json (and backbone_config.json for hf backbones)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.to_json(folder / CONFIG_FILE)
        (folder / LABELS_FILE).write_text(json.dumps(list(self.labels)) + "\n", encoding="utf-8")
        if isinstance(self.backbone, HFBackbone):
            (folder / BACKBONE_CONFIG_FILE).write_text(
                json.dumps(self.backbone.config_dict(), indent=2) + "\n", encoding="utf-8"
            )
        save_model(self, str(folder / WEIGHTS_FILE))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> SERModel:
        """Load a folder written by ``save_pretrained`` (no hub, no pickle); the model is returned in eval mode."""
        folder = Path(folder)
        missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder}: missing {missing}; expected a folder written by SERModel.save_pretrained"
            )
        config = SERConfig.from_json(folder / CONFIG_FILE)
        labels_path = folder / LABELS_FILE
        try:
            labels = json.loads(labels_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{labels_path}: not JSON ({err}); expected a JSON list of class names") from err
        if not isinstance(labels, list):
            raise ValueError(
                f"{labels_path}: holds a {type(labels).__name__}; expected a JSON list of class names"
            )
        labels = tuple(labels)
        if labels != config.labels:
            raise ValueError(
                f"{folder}: {LABELS_FILE} has {labels} but {CONFIG_FILE} has labels {config.labels}"
            )
        backbone_config = None
        if config.model.is_hf:
            path = folder / BACKBONE_CONFIG_FILE
            if not path.is_file():
                raise FileNotFoundError(
                    f"{folder}: missing {BACKBONE_CONFIG_FILE}, needed to rebuild the hf backbone offline"
                )
            backbone_config = json.loads(path.read_text(encoding="utf-8"))
        model = cls(config, backbone_config=backbone_config)
        missing_keys, unexpected = load_model(
            model, str(folder / WEIGHTS_FILE), strict=False, device=str(device)
        )
        if missing_keys or unexpected:
            raise ValueError(
                f"{folder / WEIGHTS_FILE}: weights do not match the model built from {CONFIG_FILE} "
                f"(missing {sorted(missing_keys)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        return model.to(device).eval()
