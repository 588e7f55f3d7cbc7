"""Seed ensembles (ours): models of one recipe trained with different seeds, used wherever one model is.

    p(c | x) = (1/M) Σ_m softmax(z_m(x))_c,     logits(x) = log p(c | x)

so that softmax(logits) is the mean probability and argmax(logits) the ensemble's decision: every
path that reads a model's logits (evaluation, ``Predictor``, the pyfunc, the ONNX graph) scores the
ensemble unchanged. The release model of ``TrainConfig.release_seeds`` > 1 is one
(``ser_model.train.fit``); averaging seeds is what keeps two trainings of one recipe close together.

Folder: ``ensemble.json`` ({"format": "ser-ensemble", "version": 1, "members": ["member-0", …]}),
the shared ``config.json`` and ``labels.json`` (so a reader of a single model's files finds them), and
one ``SERModel.save_pretrained`` folder per member. :func:`load_model` reads either kind of folder.
The members must agree on labels and on the model section of their config (sample rate, trimming,
normalisation): they differ by their seed only. Inference costs M forward passes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ser_model.config import SERConfig
from ser_model.launch import CONFIG_FILE, LABELS_FILE
from ser_model.model import SERModel, SEROutput
from ser_model.pitch_branch import pitch_input

__all__ = ["ENSEMBLE_FILE", "ENSEMBLE_FORMAT", "SEREnsemble", "is_ensemble", "load_model"]

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = "ser-ensemble"
ENSEMBLE_VERSION = 1


class SEREnsemble(nn.Module):
    """The mean probability of ``members`` (module docstring). ``config``: the folder's shared config
    (default the first member's). Fields of the output other than ``logits`` are the first member's."""

    def __init__(self, members: Sequence[SERModel], config: SERConfig | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"SEREnsemble: {len(members)} member(s); an ensemble needs at least two models")
        first = members[0]
        for index, member in enumerate(members[1:], start=1):
            if member.labels != first.labels or member.config.model != first.config.model:
                raise ValueError(
                    f"SEREnsemble: member {index} differs from member 0 in its labels or model config; "
                    "expected models of one recipe that differ by their seed"
                )
        self.members = nn.ModuleList(members)
        self.config = config or first.config

    @property
    def labels(self) -> tuple[str, ...]:
        return self.members[0].labels

    @property
    def backbone(self) -> nn.Module:
        """The first member's backbone: what speaker statistics are computed with (the log-mel front
        end has no trained weights, so every member's gives the same)."""
        return self.members[0].backbone

    def forward(
        self,
        waves: torch.Tensor,
        lengths: torch.Tensor,
        speaker_stats: torch.Tensor | None = None,
        pitch: torch.Tensor | None = None,
    ) -> SEROutput:
        """``pitch``: with ``model.pitch``, the batch's pitch features (``pitch_input``), computed here
        once for every member when not given."""
        mc = self.members[0].config.model  # the members share it
        if mc.pitch and pitch is None:
            pitch = pitch_input(waves, lengths, mc.sample_rate)  # (B, T, 4)
        outputs = [member(waves, lengths, speaker_stats, pitch=pitch) for member in self.members]
        probabilities = torch.stack([torch.softmax(out.logits.float(), dim=-1) for out in outputs]).mean(
            dim=0
        )
        logits = torch.log(probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny))
        first = outputs[0]
        return SEROutput(
            logits, first.embedding, first.frames, first.frame_mask, first.pooled, first.attention
        )

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ensemble.json, the shared config.json and labels.json, and member-<m>/ per member."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"member-{m}" for m in range(len(self.members))]
        for name, member in zip(names, self.members):
            member.save_pretrained(folder / name)
        self.config.to_json(folder / CONFIG_FILE)
        (folder / LABELS_FILE).write_text(json.dumps(list(self.labels)) + "\n", encoding="utf-8")
        manifest = {"format": ENSEMBLE_FORMAT, "version": ENSEMBLE_VERSION, "members": names}
        (folder / ENSEMBLE_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> SEREnsemble:
        """Load a folder written by ``save_pretrained`` (members through ``SERModel.from_pretrained``), in eval mode."""
        folder = Path(folder)
        path = folder / ENSEMBLE_FILE
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the ensemble's member list ({err})") from err
        members = manifest.get("members") if isinstance(manifest, dict) else None
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != ENSEMBLE_FORMAT
            or not isinstance(members, list)
            or not all(
                isinstance(name, str) and name and "/" not in name and name not in (".", "..")
                for name in members
            )
        ):
            raise ValueError(
                f'{path}: expected {{"format": "{ENSEMBLE_FORMAT}", "version": {ENSEMBLE_VERSION}, '
                '"members": ["member-0", ...]}} naming sub-folders of the ensemble'
            )
        if manifest.get("version") != ENSEMBLE_VERSION:
            raise ValueError(
                f"{path}: version {manifest.get('version')!r}; this code reads version {ENSEMBLE_VERSION}"
            )
        loaded = [SERModel.from_pretrained(folder / name, device=device) for name in members]
        config = SERConfig.from_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else None
        return cls(loaded, config).to(device).eval()


def is_ensemble(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds an ensemble (its ``ensemble.json``) rather than one model."""
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> SERModel | SEREnsemble:
    """The model of a checkpoint folder, one model or an ensemble, in eval mode."""
    if is_ensemble(folder):
        return SEREnsemble.from_pretrained(folder, device=device)
    return SERModel.from_pretrained(folder, device=device)
