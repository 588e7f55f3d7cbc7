"""The fbank backbone (``backbone="fbank"``): log-mel front end → 2-D CNN → projection (→ transformer
layers), all trained from scratch.

80-d log-mel (25 ms window, 10 ms hop, no centre padding, so every frame lies inside the signal),
per-utterance normalisation over valid frames (or by the speaker's statistics,
``fbank_norm="speaker"``: ``ser_model.speaker_norm``), SpecAugment-style time/frequency masks in
training mode, a 2-D CNN over the (mel × time) image (Conv2d 3×3, BatchNorm, ReLU, MaxPool per
block; 4 blocks pooling time by 2 → 6.25 frames/s), a projection of every frame to ``fbank_dim``
and optional transformer layers. With ``model.pitch`` the pitch features of every log-mel frame
pass a small 1-D branch pooled to the CNN's frame rate and join each CNN frame before the
projection (``ser_model.pitch_branch``). Padded frames are zeroed before every convolution and
masked in attention, so in eval mode padding never changes the valid frames. Its settings are the
fbank section of ``ser_model.config.ModelConfig``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torchaudio
from torch import nn

from ser_model.backbone_facts import HOP_SECONDS, WIN_SECONDS
from ser_model.backbones import Backbone, check_waveform_batch, lengths_to_mask, masked_mean_std
from ser_model.config import ModelConfig
from ser_model.pitch_branch import PitchBranch, frames_of_pitch

LOG_MEL_FLOOR = 1e-6


class LogMelStatistics(NamedTuple):
    """Per-mel-bin statistics of log-mel frames: mean and std, each (..., n_mels) (one row per
    speaker, or per utterance of a batch)."""

    mean: torch.Tensor
    std: torch.Tensor

    def rows(self, index: torch.Tensor | Sequence[int]) -> LogMelStatistics:
        """The statistics of the given rows: index (B,) → mean, std (B, n_mels)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.mean.device)
        return LogMelStatistics(self.mean[index], self.std[index])

    def to(self, device: torch.device | str) -> LogMelStatistics:
        return LogMelStatistics(self.mean.to(device), self.std.to(device))


def spec_augment_masks(
    n_frames: torch.Tensor,
    n_bins: int,
    max_frames: int,
    *,
    time_masks: int,
    time_width: int,
    freq_masks: int,
    freq_width: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment-style keep-mask (B, max_frames, n_bins) bool, False where masked.

    Each utterance b gets ``time_masks`` bands of width w ~ U{0..time_width} starting in its valid
    frames [0, n_frames[b]), and ``freq_masks`` bands of width U{0..freq_width} over the bins.
    """
    device = n_frames.device
    b = n_frames.shape[0]
    keep = torch.ones(b, max_frames, n_bins, dtype=torch.bool, device=device)
    t_idx = torch.arange(max_frames, device=device)[None, :]
    f_idx = torch.arange(n_bins, device=device)[None, :]
    for _ in range(time_masks):
        width = torch.randint(0, time_width + 1, (b,), generator=generator).to(device)
        start = (torch.rand(b, generator=generator).to(device) * n_frames.clamp_min(1)).long()
        band = (t_idx >= start[:, None]) & (t_idx < (start + width)[:, None])  # (B, T)
        keep &= ~band[:, :, None]
    for _ in range(freq_masks):
        width = torch.randint(0, freq_width + 1, (b,), generator=generator).to(device)
        start = (torch.rand(b, generator=generator).to(device) * (n_bins - width + 1)).long()
        band = (f_idx >= start[:, None]) & (f_idx < (start + width)[:, None])  # (B, F)
        keep &= ~band[:, None, :]
    return keep


class _ConvBlock2d(nn.Module):
    """Conv2d 3×3 (same padding) → BatchNorm2d → ReLU → zero at padded frames → MaxPool (2 over mel, ``time_pool`` over time).

    x (B, C, F, T) zero at padded frames, mask (B, T) bool valid → (B, C', F // 2, ceil(T / time_pool))
    zero at padded frames, mask (B, ceil(T / time_pool)). Padded frames are zero before every
    convolution (so a valid frame next to the padding sees what zero padding of the lone utterance
    gives it): the input holds that, and so does the output, for the next block: it is zeroed after
    the ReLU (valid values are >= 0, so a pooling window that straddles the end keeps the max of its
    valid frames: ceil mode, as for the lone utterance), and a pooling window wholly in the padding
    holds only zeros. The mask and the ReLU work in place on BatchNorm's output (relu(x · m) =
    relu(x) · m for m in {0, 1}): no new tensor of the block's largest size for either. In eval mode the block is therefore exactly padding-invariant; in training,
    BatchNorm's batch statistics also count the padded positions (small with length-bucketed batches
    of cropped utterances). Activations are channels-last (C the fastest dimension), the layout
    oneDNN's convolutions run fastest in on a CPU.
    """

    def __init__(self, c_in: int, c_out: int, time_pool: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c_out)
        self.time_pool = time_pool
        self.pool = nn.MaxPool2d((2, time_pool), ceil_mode=True)

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """T_out = ceil(T / time_pool)."""
        return torch.div(lengths + self.time_pool - 1, self.time_pool, rounding_mode="floor")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(self.conv(x.contiguous(memory_format=torch.channels_last)))  # (B, C', F, T)
        x = x.mul_(
            mask[:, None, None, :].to(x.dtype)
        ).relu_()  # relu(x)·m in place: BatchNorm's backward needs its input, not x
        x = self.pool(x[:, :, : 2 * (x.shape[2] // 2)])  # (B, C', F // 2, ceil(T / p))
        return x, lengths_to_mask(self.out_lengths(mask.sum(1)), x.shape[3])


class FbankBackbone(Backbone):
    """Log-mel filterbank → 2-D CNN → projection (→ transformer layers), trained from scratch (module docstring).

    The 2-D convolutions treat the log-mel as an image: a 3×3 kernel is shared over mel bins, so a
    pattern (a formant, a harmonic) is recognised wherever a speaker's pitch or vocal tract puts it,
    and BatchNorm keeps the activations' scale (a 1-D conv over 80 mel channels does neither).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.win_length = round(WIN_SECONDS * cfg.sample_rate)
        self.hop_length = round(HOP_SECONDS * cfg.sample_rate)
        # n_fft = window length: frame t covers exactly samples [t·hop, t·hop + win)
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=self.win_length,
            win_length=self.win_length,
            hop_length=self.hop_length,
            n_mels=cfg.n_mels,
            center=False,
            power=2.0,
        )
        # torchaudio keeps the window as a view of a longer buffer, which safetensors refuses to save
        self.melspec.spectrogram.window = self.melspec.spectrogram.window.clone()
        channels = (1, *cfg.fbank_channels)
        self.blocks = nn.ModuleList(
            _ConvBlock2d(c_in, c_out, pool)
            for c_in, c_out, pool in zip(channels[:-1], channels[1:], cfg.fbank_time_pools)
        )
        mel_out = cfg.n_mels // 2 ** len(cfg.fbank_channels)
        self.pitch_branch = PitchBranch(math.prod(cfg.fbank_time_pools)) if cfg.pitch else None
        pitch_dim = self.pitch_branch.out_dim if self.pitch_branch is not None else 0
        self.project = nn.Linear(cfg.fbank_channels[-1] * mel_out + pitch_dim, cfg.fbank_dim)
        self.dropout = nn.Dropout(cfg.fbank_dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                cfg.fbank_dim,
                cfg.fbank_heads,
                dim_feedforward=cfg.fbank_ff_mult * cfg.fbank_dim,
                dropout=cfg.fbank_dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(cfg.fbank_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.fbank_dim) if cfg.fbank_layers else nn.Identity()
        self.out_dim = cfg.fbank_dim
        self.frame_rate = cfg.sample_rate / self.hop_length / math.prod(cfg.fbank_time_pools)

    def mel_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Log-mel frames fully inside the signal: max(1, 1 + (L − win) // hop)."""
        return (torch.div(lengths - self.win_length, self.hop_length, rounding_mode="floor") + 1).clamp_min(1)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        n = self.mel_lengths(lengths)
        for block in self.blocks:
            n = block.out_lengths(n)
        return n

    def raw_log_mel(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel before normalisation: x = log(mel + 1e-6), (B, T, n_mels), with its valid-frame mask (B, T).

        Padded samples are zeroed first, so the valid frames of an utterance do not depend on the batch;
        padded frames hold arbitrary values (``log_mel`` zeroes them).
        """
        samples = lengths_to_mask(lengths, waves.shape[1])
        waves = waves * samples.to(waves.dtype)
        if waves.shape[1] < self.win_length:
            waves = nn.functional.pad(waves, (0, self.win_length - waves.shape[1]))
        with torch.autocast(device_type=waves.device.type, enabled=False):
            mel = self.melspec(waves.float())  # (B, n_mels, T)
        feats = torch.log(mel + LOG_MEL_FLOOR).transpose(1, 2)  # (B, T, n_mels)
        return feats, lengths_to_mask(self.mel_lengths(lengths), feats.shape[1])

    def log_mel(
        self,
        waves: torch.Tensor,
        lengths: torch.Tensor,
        speaker_stats: LogMelStatistics | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised log-mel (B, T, n_mels) with its valid-frame mask (B, T).

        x = ``raw_log_mel``, then per utterance over its valid frames (``fbank_norm``): "bin"
        (x − mean) / std with mean, std of shape (B, 1, n_mels); "bin_mean" x − mean, mean (B, 1, n_mels);
        "utterance" (x − mean) / std over all bins, shape (B, 1, 1); "speaker" (x − μ_s) / σ_s with the
        per-bin statistics of each utterance's speaker given in ``speaker_stats`` (mean, std (B, n_mels),
        ``ser_model.speaker_norm.speaker_statistics``). Padded frames are zero. ValueError when
        ``speaker_stats`` is missing in mode "speaker" or given in another mode.
        """
        feats, mask = self.raw_log_mel(waves, lengths)  # (B, T, n_mels), (B, T)
        mode = self.cfg.fbank_norm
        if (mode == "speaker") != (speaker_stats is not None):
            raise ValueError(
                "FbankBackbone: ModelConfig.fbank_norm='speaker' normalises each utterance by its speaker's log-mel "
                "statistics; give them as speaker_stats (ser_model.speaker_norm.speaker_statistics)"
                if speaker_stats is None
                else f"FbankBackbone: speaker_stats given but ModelConfig.fbank_norm={mode!r}; "
                "only fbank_norm='speaker' uses speaker statistics"
            )
        if speaker_stats is not None:
            b, _, f = feats.shape
            if speaker_stats.mean.shape != (b, f) or speaker_stats.std.shape != (b, f):
                raise ValueError(
                    f"FbankBackbone: speaker_stats of shapes {tuple(speaker_stats.mean.shape)} and "
                    f"{tuple(speaker_stats.std.shape)}; expected ({b}, {f}): one mean and one std per utterance and mel bin"
                )
            mean, std = speaker_stats.mean[:, None, :], speaker_stats.std[:, None, :]  # (B, 1, n_mels)
        elif mode == "utterance":
            b, t, f = feats.shape
            mean, std = masked_mean_std(
                feats.reshape(b, t * f), mask.repeat_interleave(f, dim=1), dim=1
            )  # (B, 1)
            mean, std = mean[:, :, None], std[:, :, None]  # (B, 1, 1)
        else:
            mean, std = masked_mean_std(feats, mask, dim=1)  # (B, 1, n_mels)
            if mode == "bin_mean":
                std = torch.ones_like(std)
        feats = (feats - mean.to(feats.dtype)) / std.to(feats.dtype) * mask[:, :, None].to(feats.dtype)
        return feats, mask

    def forward(
        self,
        waves: torch.Tensor,
        lengths: torch.Tensor,
        speaker_stats: LogMelStatistics | None = None,
        pitch: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``speaker_stats``: the per-utterance speaker statistics that ``fbank_norm="speaker"`` needs (``log_mel``).
        ``pitch``: with ``model.pitch``, the pitch features (B, T_p, 4) of the batch's waveforms (the cached
        tracks of training crops, ``ser_model.pitch_cache``), or None to compute them from ``waves``."""
        check_waveform_batch(waves, lengths)
        if self.pitch_branch is None and pitch is not None:
            raise ValueError("FbankBackbone: pitch features given, but model.pitch is false; leave them out")
        feats, mask = self.log_mel(waves, lengths, speaker_stats)  # (B, T, n_mels), (B, T)
        if self.pitch_branch is not None:
            pitch = frames_of_pitch(pitch, waves, lengths, self.cfg.sample_rate, feats.shape[1])  # (B, T, 4)
        if self.training:
            cfg = self.cfg
            keep = spec_augment_masks(
                mask.sum(1),
                feats.shape[2],
                feats.shape[1],
                time_masks=cfg.spec_time_masks,
                time_width=cfg.spec_time_width,
                freq_masks=cfg.spec_freq_masks,
                freq_width=cfg.spec_freq_width,
            )
            feats = feats * keep.to(feats.dtype)
            if pitch is not None:  # a time mask hides the frame's pitch too
                pitch = pitch * keep.any(2, keepdim=True).to(pitch.dtype)
        x = feats.transpose(1, 2)[:, None]  # (B, 1, n_mels, T)
        mel_mask = mask
        for block in self.blocks:
            x, mask = block(x, mask)  # (B, C, F', T'), (B, T')
        h = x.flatten(1, 2).transpose(1, 2)  # (B, T', C·F')
        if self.pitch_branch is not None:  # (B, T', C·F' + P)
            h = torch.cat([h, self.pitch_branch(pitch, mel_mask).to(h.dtype)], dim=2)
        h = self.project(h)  # (B, T', D)
        h = self.dropout(h) * mask[:, :, None].to(h.dtype)
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=~mask)
        h = self.final_norm(h) * mask[:, :, None].to(h.dtype)
        return h, mask
