"""Pitch tracks computed once per audio file and cut into the training crops (``model.pitch``).

A training crop of an utterance is a window of its waveform (``UtteranceDataset.crop_start``: drawn
from (seed, epoch, row)). Its pitch features are the frames of the whole utterance's track that the
window covers: frames k … k + n − 1 with k = ⌊start / hop⌋ and n the crop's log-mel frame count, so
an epoch reads the track instead of running YIN on every crop. The crop's frames lie up to one hop
(10 ms) later than the cached frames it is given, its first and last frames see the audio around the
crop, and its log-F0 keeps the whole utterance's median (what inference on the whole utterance
removes). Evaluation and inference compute the track of the whole utterance in the forward pass
(``ser_model.pitch_branch.frames_of_pitch``): the same track as the cached one.

Disk: ``<feature cache root>/pitch/<digest>/`` as a feature cache's key folder
(``ser_model.feature_cache_folder``: key.json, index.json, entries/<audio sha256>.safetensors), one
entry per audio file (the manifest's ``sha256``) holding ``pitch`` (T, 4) float32 and ``samples``
(the decoded, trimmed length). The key holds every setting of the track (``ser_model.pitch.pitch_settings``),
the sample rate and the silence trimming, so another recipe never reads these tracks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ser_model.backbone_facts import HOP_SECONDS
from ser_model.data import UtteranceDataset
from ser_model.feature_cache_folder import (
    ENTRIES_DIR,
    KEY_FILE,
    IndexEntry,
    entry_path,
    key_digest,
    merge_index,
    read_index,
    write_key_file,
)
from ser_model.pitch import pitch_features, pitch_frame_lengths, pitch_settings, track_pitch
from ser_stack.files import write_atomically

__all__ = ["PITCH_CACHE_DIR", "pitch_cache_key", "PitchTracks"]

log = logging.getLogger(__name__)

PITCH_CACHE_DIR = "pitch"
FORMAT_VERSION = 1


def pitch_cache_key(sample_rate: int, trim_db: float | None) -> dict[str, Any]:
    """The key of a pitch key folder: the track's settings and the view of the audio it was computed on."""
    return {
        "format": FORMAT_VERSION,
        "kind": "pitch track",
        "pitch": pitch_settings(sample_rate),
        "view": {"sample_rate": sample_rate, "trim_db": trim_db, "computed": "whole utterance, alone"},
    }


class PitchTracks:
    """The whole-utterance pitch features of every row of ``dataset`` (the training split), read from
    ``root/pitch/<digest>/`` or computed and written there first; ``crops`` cuts the batch's windows."""

    def __init__(
        self,
        root: str | os.PathLike,
        dataset: UtteranceDataset,
        sha256s: Sequence[str],
        trim_db: float | None,
    ) -> None:
        self.dataset = dataset
        self.sample_rate = dataset.sample_rate
        self.hop = round(HOP_SECONDS * self.sample_rate)
        self.key = pitch_cache_key(self.sample_rate, trim_db)
        self.folder = Path(root) / PITCH_CACHE_DIR / key_digest(self.key)
        (self.folder / ENTRIES_DIR).mkdir(parents=True, exist_ok=True)
        if not (self.folder / KEY_FILE).is_file():
            write_key_file(self.folder, self.key, "ser_model.pitch")
        started = time.perf_counter()
        index = read_index(self.folder)
        by_sha: dict[str, tuple[torch.Tensor, int]] = {}
        computed: dict[str, IndexEntry] = {}
        for row, sha in enumerate(sha256s):
            if sha in by_sha:
                continue
            found = self._read(sha, index.get(sha), row)
            if found is None:
                found, computed[sha] = self._compute(sha, row)
            by_sha[sha] = found
        merge_index(self.folder, self.key, computed)
        self.tracks = [by_sha[sha][0] for sha in sha256s]  # (T_i, 4) per row
        self.samples = [by_sha[sha][1] for sha in sha256s]
        log.info(
            "pitch tracks %s: %d files, %d read, %d computed (%.1f s)",
            self.folder,
            len(by_sha),
            len(by_sha) - len(computed),
            len(computed),
            time.perf_counter() - started,
        )

    def _read(self, sha: str, entry: IndexEntry | None, row: int) -> tuple[torch.Tensor, int] | None:
        """An entry checked against the index, or None (absent, or corrupt: said, then recomputed)."""
        if entry is None:
            return None
        path = entry_path(self.folder, sha)
        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != entry.checksum:
                raise ValueError(f"file sha256 differs from the index's {entry.checksum[:12]}…")
            tensors = load_safetensors(data)
            pitch, samples = tensors["pitch"], int(tensors["samples"][0])
            if tuple(pitch.shape) != entry.shape:
                raise ValueError(f"track of shape {tuple(pitch.shape)}, the index says {entry.shape}")
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            log.warning(
                "pitch tracks %s: entry of %s is corrupt (%s); recomputing it",
                self.folder,
                self.dataset.utt_ids[row],
                err,
            )
            return None
        return pitch, samples

    def _compute(self, sha: str, row: int) -> tuple[tuple[torch.Tensor, int], IndexEntry]:
        """The track of row ``row``'s whole utterance (as decoded and trimmed), written as its entry."""
        wave = torch.from_numpy(self.dataset.full_wave(row).copy())[None]  # (1, L)
        pitch = pitch_features(track_pitch(wave, torch.tensor([wave.shape[1]]), self.sample_rate))[0]
        data = save_safetensors({"pitch": pitch.contiguous(), "samples": torch.tensor([wave.shape[1]])})
        write_atomically(entry_path(self.folder, sha), data)
        return (pitch, wave.shape[1]), IndexEntry(tuple(pitch.shape), hashlib.sha256(data).hexdigest())

    def batch(self, indices: Sequence[int] | torch.Tensor, width: int) -> torch.Tensor:
        """The pitch features (B, T, 4) of the training crops of rows ``indices`` in the dataset's
        current epoch (module docstring), in a batch padded to ``width`` samples (T its log-mel frames,
        ``pitch_frame_lengths``); zero past each crop's frames."""
        n_frames = int(pitch_frame_lengths(torch.tensor([width]), self.sample_rate)[0])
        out = torch.zeros(len(indices), n_frames, self.tracks[0].shape[1])
        crop = self.dataset.crop_samples
        for b, row in enumerate(int(i) for i in indices):
            samples = self.samples[row]
            start = self.dataset.crop_start(row, samples)
            length = samples if crop is None else min(samples, crop)
            n = int(pitch_frame_lengths(torch.tensor([length]), self.sample_rate)[0])
            window = self.tracks[row][start // self.hop : start // self.hop + n][:n_frames]
            out[b, : window.shape[0]] = window
        return out
