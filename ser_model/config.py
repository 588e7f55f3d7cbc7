"""Configuration of a SER experiment: one frozen dataclass per concern.

``SERConfig`` bundles ``ModelConfig`` (backbone, FLAM, head; in ``ser_model.model_config``), ``EAMConfig`` (energy-adaptive
mixup), ``LossConfig`` (the multi-loss) and ``TrainConfig`` (optimiser and loop), plus the class
labels. Each is a pydantic dataclass (``ser_model.config_validation.config_dataclass``: strict
types, frozen, unknown fields refused) whose own rules then run in ``__post_init__``; every error
is a ``ConfigError`` naming the field, the value and what is expected. ``SERConfig.to_json`` / ``from_json``
round-trip exactly; ``with_overrides({"train.epochs": 3})`` returns a new, validated config.

The dataclass defaults are the paper's recipe (docs/METHOD.md, the ``paper-wavlm`` preset but for
its backbone); the choices the paper leaves open ("ours") are fields here, named in their
docstrings. ``ser_model.presets`` holds each named recipe as its differences from these defaults.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ser_model.backbone_facts import (
    FROZEN_MODES,
)
from ser_model.config_validation import (
    ConfigError,
    CountInt,
    Floats,
    LearningRate,
    Names,
    NonNegative,
    PositiveInt,
    bounded,
    config_dataclass,
    config_from_dict,
    require,
)
from ser_model.metrics import HeadlineMetric
from ser_model.model_config import ModelConfig


@config_dataclass
class EAMConfig:
    """Energy-adaptive mixup (docs/METHOD.md "EAM").

    ``mix_prob`` (ours): probability that a sample of the batch is mixed with its partner.
    ``snr_db_low``/``snr_db_high``: the SNR of the added partner segment is drawn from U[low, high] dB.
    ``degenerate_db`` (ours; the paper only says "P' = 0, within eps"): a segment whose mean power lies
    more than this many dB below its own utterance's mean power counts as degenerate (no mix, λ = 0).
    Relative, so that a near-silent partner segment is not boosted by tens of dB to reach the drawn
    SNR (noise under the partner's label), and a silent primary segment does not move the label.
    An all-zero utterance has power 0 and is always degenerate.
    """

    enabled: bool = True
    mix_prob: bounded(float, "a probability in [0, 1]", ge=0.0, le=1.0) = 1.0
    snr_db_low: float = -5.0
    snr_db_high: float = 10.0
    degenerate_db: bounded(float, "a level <= 0 dB (relative to the utterance)", le=0.0) = -30.0

    def __post_init__(self) -> None:
        require(
            self.snr_db_low <= self.snr_db_high,
            "EAMConfig.snr_db_low",
            f"got snr_db_low={self.snr_db_low} > snr_db_high={self.snr_db_high}, expected low <= high",
        )


@config_dataclass
class LossConfig:
    """The multi-loss L = w_kl·KL + w_focal·Focal + w_center·Center + w_supcon·SupCon (docs/METHOD.md "MLL").

    The weights are not published; the defaults are ours. Each term has an on/off switch for
    ablations; a switched-off term is not computed. ``supcon_views`` (ours): frame views sampled
    per utterance; ``supcon_proj_dim``: output size of the SupCon projection head.
    """

    w_kl: NonNegative = 1.0
    w_focal: NonNegative = 1.0
    w_center: NonNegative = 0.01
    w_supcon: NonNegative = 0.1
    focal_gamma: NonNegative = 2.0
    supcon_tau: bounded(float, "a temperature > 0", gt=0.0) = 0.07
    supcon_views: PositiveInt = 4
    supcon_proj_dim: PositiveInt = 128
    kl: bool = True
    focal: bool = True
    center: bool = True
    supcon: bool = True

    def __post_init__(self) -> None:
        w = "LossConfig"
        require(
            self.kl or self.focal or self.center or self.supcon,
            w,
            "every loss term is switched off (kl, focal, center, supcon); expected at least one on",
        )
        require(
            self.kl or self.focal,
            w,
            "kl and focal are both off, so nothing trains the classifier; expected at least one of them on",
        )


@config_dataclass
class TrainConfig:
    """Optimisation and the training loop (docs/METHOD.md "Training": Adam, batch 16, lr 1e-4, centers 5e-3, ×7/8 per epoch, 20 epochs).

    ``max_seconds``: training utterances longer than this are randomly cropped to it (None: whole).
    ``precision``: the autocast dtype of training (weights and optimiser state stay fp32) and, on
    CUDA, of evaluation; on a CPU a model is always scored in fp32. "auto" picks bf16 on a CUDA
    device that supports it and on a CPU that multiplies bf16 in hardware (``avx512_bf16`` or AMX:
    about twice the fp32 rate there; ``ser_model.runtime.autocast_dtype``), fp32 otherwise; "fp32"
    never casts.
    ``select_metric``: validation metric that chooses the checkpoint (validation speakers only), one of
    ``ser_model.metrics.HEADLINE_METRICS`` and spelled as its key in the metric reports ("UA", "WA",
    "macro_f1"); ``SERConfig.from_dict`` reads the lower-case "ua" / "wa" of configs saved before as "UA" / "WA".
    ``grad_clip``: max global gradient norm (None: no clipping). ``device``: "auto", "cpu", "cuda", "cuda:N".
    ``schedule``: the learning rate after warm-up: ``"exponential"`` (docs/METHOD.md: × ``lr_decay`` after every
    epoch) or ``"cosine"`` (ours: half a cosine from ``lr`` to 0 over the remaining steps; ``lr_decay`` unused).
    ``warmup_epochs`` (ours): the learning rate rises linearly from 0 over this many epochs (0: none;
    equal to ``epochs``: the whole run is warm-up, e.g. a one-epoch check of a preset with one warm-up epoch).
    Both act per optimiser step (``ser_model.optimisation.lr_factor``).
    ``feature_cache``: with an hf backbone in mode "frozen" or "weighted_sum", compute its hidden states
    once and train and evaluate from them (``ser_model.feature_cache``; training crops become windows of
    the whole utterance's frames, and with EAM on the training batches still run live); False runs
    the backbone on every batch.
    ``ema_decay`` (ours): None, or validate, select and save an exponential moving average of the
    weights with this decay (``ser_model.ema``) instead of the last weights.
    ``release_holdout`` (ours): how the release model (``RELEASE_FOLD``) ends. True: fold 0's
    validation speakers are held out and choose its epoch, as in every fold. False: it trains on every
    speaker for the fixed ``epochs`` and ships the last epoch's weights (averaged ones with
    ``ema_decay``); no epoch is selected, so none needs to be held out. The folds always select on their
    validation speakers and record the last epoch's test score beside it (``test_last_epoch``), which
    is what estimates a release trained this way.
    ``release_seeds`` (ours): the release model trains this many models M, with seeds ``seed · M``
    … ``seed · M + M − 1`` (two base seeds never share a member, and member 0 of seed 0 is the
    single model of seed 0), one after another, and ships their ensemble (``ser_model.ensemble``:
    the mean of their class probabilities; inference costs one forward pass per model). Above 1 it needs
    ``release_holdout`` False: no member is selected on validation speakers. Folds train one model.
    ``speed_factors`` (ours; Ko et al. 2015, Kaldi's speed perturbation): empty, or the factors a
    training utterance is played at, one drawn uniformly per (seed, epoch, utterance), e.g.
    ``(0.9, 1.0, 1.1)``; a factor f resamples the waveform as a tape played f times as fast (tempo
    and pitch together, ``ser_model.audio.speed_perturb``) before the crop. Factors lie in [0.5, 2]
    and are multiples of 0.01 (a short resampling kernel). Validation and test audio never change.
    With a frozen hf backbone the training batches then run live, as with EAM.
    ``release_distil`` (ours; needs ``release_seeds`` >= 2): the release then ships one student of its members
    (``ser_model.release``; α ``distil_alpha``, τ ``distil_temperature``: docs/METHOD.md "Distillation").
    """

    epochs: PositiveInt = 20
    batch_size: PositiveInt = 16
    eval_batch_size: PositiveInt = 16
    lr: LearningRate = 1e-4
    center_lr: LearningRate = 5e-3
    lr_decay: bounded(float, "a factor in (0, 1]", gt=0.0, le=1.0) = 7 / 8
    schedule: Literal["exponential", "cosine"] = "exponential"
    warmup_epochs: float = 0.0
    weight_decay: NonNegative = 0.0
    grad_accum: PositiveInt = 1
    grad_clip: bounded(float, "> 0", gt=0.0) | None = 5.0
    seed: int = 0
    max_seconds: bounded(float, "> 0", gt=0.0) | None = 10.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    num_workers: CountInt = 0
    valid_every: PositiveInt = 1
    select_metric: HeadlineMetric = "UA"
    device: str = "auto"
    feature_cache: bool = True
    ema_decay: bounded(float, "a decay in (0, 1), e.g. 0.998", gt=0.0, lt=1.0) | None = None
    release_holdout: bool = True
    speed_factors: Floats = ()
    release_seeds: PositiveInt = 1
    release_distil: bool = False
    distil_alpha: bounded(float, "a weight in [0, 1]", ge=0.0, le=1.0) = 0.5
    distil_temperature: bounded(float, "a temperature > 0", gt=0.0) = 2.0

    def __post_init__(self) -> None:
        w = "TrainConfig"
        require(
            0.0 <= self.warmup_epochs <= self.epochs,
            f"{w}.warmup_epochs",
            f"got {self.warmup_epochs}, expected 0 <= warmup_epochs <= epochs={self.epochs}",
        )
        require(
            self.device in ("auto", "cpu", "cuda")
            or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
            f"{w}.device",
            f"got {self.device!r}, expected 'auto', 'cpu', 'cuda' or 'cuda:N'",
        )
        require(
            self.release_seeds == 1 or not self.release_holdout,
            f"{w}.release_seeds",
            f"got {self.release_seeds} with release_holdout true; an ensemble release trains every member on "
            "every speaker for the fixed schedule: set train.release_holdout=false",
        )
        require(
            self.release_seeds >= 2 or not self.release_distil,
            f"{w}.release_distil",
            "a student learns from the release's ensemble of seeds; expected train.release_seeds >= 2, got 1",
        )
        require(
            all(0.5 <= f <= 2.0 and abs(f * 100 - round(f * 100)) < 1e-9 for f in self.speed_factors),
            f"{w}.speed_factors",
            f"got {self.speed_factors}, expected factors in [0.5, 2] that are multiples of 0.01, e.g. [0.9, 1.0, 1.1]",
        )


_SECTIONS = {"model": ModelConfig, "eam": EAMConfig, "loss": LossConfig, "train": TrainConfig}


@config_dataclass(kw_only=True)
class SERConfig:
    """Everything a run needs: model, EAM, loss, training, and the class labels (order = logit index).

    ``corpus``: the corpus the labels come from (``ravdess``, ``iemocap`` …), or None.
    """

    labels: Names
    model: ModelConfig = Field(default_factory=ModelConfig)
    eam: EAMConfig = Field(default_factory=EAMConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    corpus: str | None = None

    def __post_init__(self) -> None:
        require(
            len(self.labels) >= 2, "SERConfig.labels", f"got {self.labels}, expected at least two class names"
        )
        require(
            len(set(self.labels)) == len(self.labels),
            "SERConfig.labels",
            f"got duplicates in {self.labels}, expected distinct class names",
        )
        require(all(self.labels), "SERConfig.labels", f"got an empty class name in {self.labels}")

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SERConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ConfigError`` naming them and the valid ones.

        ``train.select_metric`` "ua" / "wa" (configs saved before the metric keys became "UA" / "WA")
        are read as "UA" / "WA", so older checkpoints still load and resume."""
        require(isinstance(data, dict), "SERConfig", f"got {type(data).__name__}, expected an object")
        train = data.get("train")
        if isinstance(train, dict) and train.get("select_metric") in ("ua", "wa"):  # saved before "UA" / "WA"
            data = {**data, "train": {**train, "select_metric": train["select_metric"].upper()}}
        sections = {
            name: config_from_dict(section, data[name], f"SERConfig.{name}")
            for name, section in _SECTIONS.items()
            if name in data
        }
        return config_from_dict(cls, {**data, **sections}, "SERConfig")

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON text; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> SERConfig:
        """Read from a JSON file path or from JSON text (a string starting with '{')."""
        if isinstance(source, str) and source.lstrip().startswith("{"):
            text, where = source, "<json text>"
        else:
            text, where = Path(source).read_text(encoding="utf-8"), str(source)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err})") from err
        return cls.from_dict(data)

    def with_overrides(self, overrides: dict[str, Any]) -> SERConfig:
        """New validated config with dotted keys replaced: ``{"train.epochs": 3, "loss.w_center": 0.0, "corpus": "ravdess"}``."""
        data = self.to_dict()
        valid = self.override_keys()
        for key, value in overrides.items():
            require(key in valid, "SERConfig.with_overrides", f"unknown key {key!r}; valid keys: {valid}")
            if "." in key:
                section, name = key.split(".", 1)
                data[section][name] = list(value) if isinstance(value, tuple) else value
            else:
                data[key] = list(value) if isinstance(value, tuple) else value
        return SERConfig.from_dict(data)

    def value(self, key: str) -> Any:
        """The value of override key ``key`` ("train.lr", or "corpus") in this config."""
        section, _, name = key.partition(".")
        return getattr(getattr(self, section), name) if name else getattr(self, section)

    @staticmethod
    def override_keys() -> list[str]:
        """All keys ``with_overrides`` accepts."""
        keys = [f.name for f in dataclasses.fields(SERConfig) if f.name not in _SECTIONS]
        for name, section in _SECTIONS.items():
            keys += [f"{name}.{f.name}" for f in dataclasses.fields(section)]
        return keys


def uses_feature_cache(config: SERConfig) -> bool:
    """Whether ``fit`` reads the hidden states from the feature cache (``ser_model.feature_cache``):
    an hf backbone in mode "frozen" or "weighted_sum", with ``TrainConfig.feature_cache`` on.
    Torch-free, so the flows can ask before they launch a fold."""
    mc = config.model
    return config.train.feature_cache and mc.is_hf and mc.backbone_mode in FROZEN_MODES
