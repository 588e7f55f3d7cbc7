"""Speaker-level normalisation of the fbank log-mel (``ModelConfig.fbank_norm = "speaker"``, docs/METHOD.md).

Per-utterance normalisation ("bin") removes each utterance's mean spectrum, which carries emotion
(spectral tilt, loudness across bins) as well as the speaker. Speaker-level normalisation removes
the speaker's mean spectrum instead: each mel bin f of an utterance of speaker s becomes

    x̂_t,f = (x_t,f − μ_s,f) / σ_s,f

with μ_s, σ_s the mean and standard deviation of bin f over every valid frame of every utterance of
speaker s (``speaker_statistics``). The statistics are unlabelled: they need the speaker of each
utterance, never its emotion. Each split gets its speakers' statistics from its own utterances:
training speakers from the training rows, validation and test speakers from theirs, and at
inference the speaker's given files; a result that normalised its test speakers this way says so
(``result.json``: ``uses_test_speaker_statistics``).

The frames are those the model sees: the decoded, silence-trimmed (``ModelConfig.trim_db``) whole
utterance, through ``FbankBackbone.raw_log_mel``. A training crop and an EAM mixture use the statistics
of the whole utterances of the primary utterance's speaker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ser_model.backbones import NORM_EPS
from ser_model.config import ModelConfig
from ser_model.errors import MissingSpeakersError
from ser_model.fbank_backbone import FbankBackbone, LogMelStatistics

__all__ = [
    "speaker_statistics",
    "row_statistics",
    "split_statistics",
    "MissingSpeakersError",
    "require_speakers",
]

log = logging.getLogger(__name__)


def require_speakers(
    model_config: ModelConfig, speakers: Sequence[str] | None, n_inputs: int, where: str
) -> None:
    """Check the speakers given for ``n_inputs`` inputs of a model with ``model_config``:
    MissingSpeakersError when the model uses speaker statistics and none were given, ValueError when
    their number differs from the inputs'. A model that does not use them accepts speakers and ignores them."""
    if speakers is None:
        if model_config.uses_speaker_statistics:
            raise MissingSpeakersError(
                f"{where}: the model normalises the log-mel by each speaker's statistics (model.fbank_norm='speaker'), "
                "so it needs the speaker of every input: give speakers (Predictor: speakers=[...], one per input; "
                "`ser predict --speaker NAME` for files of one speaker; the pyfunc: a 'speaker' column). "
                "It never falls back to per-utterance statistics"
            )
        return
    if len(speakers) != n_inputs:
        raise ValueError(
            f"{where}: got {len(speakers)} speakers for {n_inputs} inputs; expected one per input"
        )
    empty = [i for i, s in enumerate(speakers) if not isinstance(s, str) or not s]
    if empty:
        raise ValueError(
            f"{where}: input {empty[0]} has speaker {speakers[empty[0]]!r}; expected a non-empty name"
        )


@torch.no_grad()
def speaker_statistics(
    backbone: FbankBackbone,
    waves: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    speakers: Sequence[str],
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> dict[str, LogMelStatistics]:
    """Per-speaker log-mel statistics: {speaker s: (μ_s, σ_s)}, each (n_mels,) float32.

    With x_u,t the raw log-mel frame t of utterance u (``FbankBackbone.raw_log_mel``; its valid frames
    only) and N_s = Σ_{u ∈ s} T_u the frames of all of s's utterances:

        μ_s = (1/N_s) Σ_{u ∈ s} Σ_t x_u,t
        σ_s = sqrt((1/N_s) Σ_{u ∈ s} Σ_t (x_u,t − μ_s)² + NORM_EPS)      (floored as ``masked_mean_std``)

    accumulated in float64 as Σx and Σx² over batches of ``batch_size`` utterances. ``waves``: the
    mono waveforms at the model's rate as the model sees them (silence-trimmed, whole), or a function
    index → waveform (read one at a time); ``speakers`` (N,): the speaker of each.
    """
    n_mels = backbone.cfg.n_mels
    names = sorted(set(speakers))
    slot = {name: i for i, name in enumerate(names)}
    count = torch.zeros(len(names), dtype=torch.float64)
    total = torch.zeros(len(names), n_mels, dtype=torch.float64)
    squares = torch.zeros(len(names), n_mels, dtype=torch.float64)
    read = waves if callable(waves) else waves.__getitem__
    for start in range(0, len(speakers), batch_size):
        chunk = [
            np.asarray(read(i), dtype=np.float32)
            for i in range(start, min(start + batch_size, len(speakers)))
        ]
        lengths = torch.tensor([len(w) for w in chunk], dtype=torch.long)
        batch = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.float32)
        for row, w in enumerate(chunk):
            batch[row, : len(w)] = torch.from_numpy(w)
        feats, mask = backbone.raw_log_mel(batch.to(device), lengths.to(device))  # (B, T, F), (B, T)
        feats, mask = feats.double().cpu(), mask.cpu()
        owner = torch.tensor([slot[s] for s in speakers[start : start + len(chunk)]], dtype=torch.long)
        m = mask.double()[:, :, None]  # (B, T, 1)
        count.index_add_(0, owner, mask.sum(dim=1).double())
        total.index_add_(0, owner, (feats * m).sum(dim=1))
        squares.index_add_(0, owner, (feats.square() * m).sum(dim=1))
    mean = total / count[:, None]  # (S, F)
    var = (squares / count[:, None] - mean.square()).clamp_min(0.0)
    std = torch.sqrt(var + NORM_EPS)
    return {name: LogMelStatistics(mean[i].float(), std[i].float()) for name, i in slot.items()}


def row_statistics(by_speaker: dict[str, LogMelStatistics], speakers: Sequence[str]) -> LogMelStatistics:
    """The statistics of each row's speaker, stacked: mean, std (N, n_mels)."""
    return LogMelStatistics(
        torch.stack([by_speaker[s].mean for s in speakers]),
        torch.stack([by_speaker[s].std for s in speakers]),
    )


def split_statistics(
    backbone: FbankBackbone,
    read: Callable[[int], np.ndarray],
    speakers: Sequence[str],
    name: str,
    *,
    device: torch.device | str = "cpu",
) -> LogMelStatistics:
    """Row statistics (N, n_mels) of a split whose speakers get statistics from the split's own
    utterances (``read(i)``: utterance i as the model sees it, whole), with a log line of what it took."""
    started = time.perf_counter()
    by_speaker = speaker_statistics(backbone, read, speakers, device=device)
    log.info(
        "%s: log-mel statistics of %d speakers from their %d utterances (%.1f s)",
        name,
        len(by_speaker),
        len(speakers),
        time.perf_counter() - started,
    )
    return row_statistics(by_speaker, speakers)
