"""What the pitch track (ser_model.pitch) costs: CPU time per hour of audio, its size per hour, and
its ratio to the log-mel front end and to the whole fbank model on the same audio, measured in one run;
with ``--epochs``, what ``model.pitch`` adds to a training epoch of the `cpu-fbank` preset.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/pitch_cost.py --files 40 [--epochs 3 --rounds 2]

Reads real RAVDESS utterances (whole, as decoded), computes on each alone (batch of one, as a cache
fills) the pitch features, the fbank backbone's log-mel, and the `cpu-fbank` model's forward pass in
eval mode, taking turns (`common.interleaved_medians`), and prints each side's real-time factor
(CPU seconds per second of audio), the pitch track's CPU time per hour of audio and its float32 bytes
per hour (4 channels at 100 frames/s).

Epochs (``--epochs N``): fold ``--fold``'s training tracks are first cached (``ser_model.pitch_cache``:
CPU seconds to fill, bytes on disk), then ``fit`` trains the preset without and with ``model.pitch``
in turns, ``--rounds`` times each, ``N`` epochs a run, from that warm cache (test speakers not scored).
An epoch is its training and validation: wall seconds as ``fit`` records them, and this process's CPU
seconds between the ends of consecutive epochs (so epochs 2 … N). Printed: the median of each side
and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from data_contracts.ingest import run_ingest
from ser_model.audio import load_audio
from ser_model.data import UtteranceDataset
from ser_model.launch import METRICS_FILE
from ser_model.model import SERModel
from ser_model.pitch import PITCH_CHANNELS, pitch_features, track_pitch
from ser_model.pitch_cache import PitchTracks
from ser_model.presets import DEFAULT_PRESET, experiment_config
from ser_model.train import fit, training_splits
from ser_stack.settings import SHARED_RAVDESS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, interleaved_medians, load_average  # noqa: E402


class EpochClock:
    """A ``fit`` callback: this process's CPU seconds at the end of each epoch."""

    def __init__(self) -> None:
        self.cpu_at_end: list[float] = []

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        self.cpu_at_end.append(time.process_time())


def fill_cache(root: Path, fold: int, cache: Path) -> dict[str, float]:
    """Cache the fold's training tracks as ``fit`` does: CPU seconds, audio seconds, files, bytes on disk."""
    config = experiment_config("ravdess", DEFAULT_PRESET, overrides={"model.pitch": True})
    ingest = run_ingest("ravdess", root, progress=False)
    rows = training_splits(ingest.manifest, ingest.folds, fold)["train"]
    mc = config.model
    dataset = UtteranceDataset(
        rows,
        root,
        config.labels,
        sample_rate=mc.sample_rate,
        crop_seconds=None,
        random_crop=True,
        trim_db=mc.trim_db,
    )
    started = time.process_time()
    tracks = PitchTracks(cache, dataset, rows["sha256"].astype(str).tolist(), mc.trim_db)
    cpu = time.process_time() - started
    return {
        "files": len(rows),
        "audio_s": sum(len(dataset.full_wave(i)) for i in range(len(rows))) / mc.sample_rate,
        "cpu_s": cpu,
        "bytes": sum(f.stat().st_size for f in tracks.folder.rglob("*") if f.is_file()),
    }


def epoch_seconds(root: Path, fold: int, epochs: int, rounds: int, cache: Path, out: Path) -> dict[str, dict]:
    """``fit`` without and with ``model.pitch`` in turns (module docstring) → per side the wall seconds
    of every epoch and the CPU seconds of epochs 2 … N."""
    ingest = run_ingest("ravdess", root, progress=False)
    sides: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in ("without", "with")}
    for r in range(rounds):
        for name, pitch in (("without", False), ("with", True)):
            overrides = {"model.pitch": pitch, "train.epochs": epochs}
            config = experiment_config("ravdess", DEFAULT_PRESET, overrides=overrides)
            clock = EpochClock()
            run = out / f"{name}-{r}"
            fit(
                config,
                ingest.manifest,
                ingest.folds,
                fold,
                root,
                run,
                [clock],
                False,
                cache,
                score_test=False,
            )
            history = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines() if line]
            sides[name]["wall"] += [record["seconds"] for record in history if "seconds" in record]
            sides[name]["cpu"] += [b - a for a, b in zip(clock.cpu_at_end, clock.cpu_at_end[1:])]
    return sides


def print_epochs(root: Path, fold: int, epochs: int, rounds: int) -> None:
    """The epoch part (module docstring), printed."""
    with tempfile.TemporaryDirectory(prefix="pitch-epochs-") as tmp:
        cache = Path(tmp) / "cache"
        fill = fill_cache(root, fold, cache)
        print(
            f"cache fill, fold {fold}: {fill['files']} files, {fill['audio_s']:.0f} s of audio, CPU {fill['cpu_s']:.1f} s "
            f"({fill['cpu_s'] / fill['audio_s'] * 3600:.1f} s per hour), {fill['bytes'] / 2**20:.2f} MiB on disk "
            f"({fill['bytes'] / fill['audio_s'] * 3600 / 2**20:.1f} MiB per hour)"
        )
        sides = epoch_seconds(root, fold, epochs, rounds, cache, Path(tmp) / "runs")
    for unit in ("wall", "cpu"):
        medians = {name: statistics.median(side[unit]) for name, side in sides.items()}
        runs = "; ".join(
            f"{name}: " + ", ".join(f"{x:.1f}" for x in side[unit]) for name, side in sides.items()
        )
        print(
            f"epoch {unit} s, median without pitch {medians['without']:.2f}, with pitch {medians['with']:.2f}, "
            f"ratio {medians['with'] / medians['without']:.3f} ({runs})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(SHARED_RAVDESS), help="RAVDESS root (official layout)")
    parser.add_argument("--files", type=int, default=40, help="utterances to time (every 30th file)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=0, help="epochs per training run (0: no training)")
    parser.add_argument("--rounds", type=int, default=2, help="training runs per side, taken in turns")
    parser.add_argument("--fold", type=int, default=0, help="the fold the training runs train")
    args = parser.parse_args(argv)
    files = sorted(Path(args.root).glob("Actor_*/03-*.*"))[::30][: args.files]
    if not files:
        print(f"error: no RAVDESS audio (Actor_*/03-*) under {args.root}; pass --root DIR", file=sys.stderr)
        return 2
    config = experiment_config("ravdess", DEFAULT_PRESET)
    sr = config.model.sample_rate
    waves = [torch.from_numpy(load_audio(path, sr))[None] for path in files]
    lengths = [torch.tensor([w.shape[1]]) for w in waves]
    seconds = sum(w.shape[1] for w in waves) / sr
    model = SERModel(config).eval()

    @torch.no_grad()
    def run(fn) -> None:
        for wave, length in zip(waves, lengths):
            fn(wave, length)

    timings = interleaved_medians(
        {
            "pitch track": lambda: run(lambda w, n: pitch_features(track_pitch(w, n, sr))),
            "log-mel": lambda: run(lambda w, n: model.backbone.log_mel(w, n)),
            "fbank model": lambda: run(lambda w, n: model(w, n)),
        },
        repeats=args.repeats,
    )
    print(
        f"{len(files)} RAVDESS utterances, {seconds:.1f} s of audio; {cpu_model()}, "
        f"{torch.get_num_threads()} thread(s), load average {load_average()}"
    )
    for name, timing in timings.items():
        rtf = timing["median_cpu_s"] / seconds
        print(
            f"{name:12s} CPU {timing['median_cpu_s']:.3f} s, real-time factor {rtf:.4f}, "
            f"{rtf * 3600:.1f} s per hour of audio"
        )
    pitch = timings["pitch track"]["median_cpu_s"]
    print(
        f"pitch / log-mel {pitch / timings['log-mel']['median_cpu_s']:.2f}; "
        f"pitch / fbank model {pitch / timings['fbank model']['median_cpu_s']:.3f}"
    )
    print(
        f"track size: {PITCH_CHANNELS * 4 * 100 * 3600 / 2**20:.1f} MiB per hour of audio (float32, 100 frames/s)"
    )
    if args.epochs:
        print_epochs(Path(args.root), args.fold, args.epochs, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
