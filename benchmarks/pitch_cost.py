"""What the pitch track (ser_model.pitch) costs: CPU time per hour of audio, its size per hour, and
its ratio to the log-mel front end and to the whole fbank model on the same audio, measured in one run.

    OMP_NUM_THREADS=1 python benchmarks/pitch_cost.py --files 40

Reads real RAVDESS utterances (whole, as decoded), computes on each alone (batch of one, as a cache
fills) the pitch features, the fbank backbone's log-mel, and the `cpu-fbank` model's forward pass in
eval mode, taking turns (`common.interleaved_medians`), and prints each side's real-time factor
(CPU seconds per second of audio), the pitch track's CPU time per hour of audio and its float32 bytes
per hour (4 channels at 100 frames/s).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ser_model.audio import load_audio
from ser_model.model import SERModel
from ser_model.pitch import PITCH_CHANNELS, pitch_features, track_pitch
from ser_model.presets import DEFAULT_PRESET, experiment_config
from ser_stack.settings import SHARED_RAVDESS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, interleaved_medians, load_average  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(SHARED_RAVDESS), help="RAVDESS root (official layout)")
    parser.add_argument("--files", type=int, default=40, help="utterances to time (every 30th file)")
    parser.add_argument("--repeats", type=int, default=3)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
