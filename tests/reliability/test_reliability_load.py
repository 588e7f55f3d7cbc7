"""Load: concurrent prediction requests against the project's batch API (`Predictor`, what the
MLflow pyfunc and `ser predict` call) from a thread pool, all answered like sequential calls,
with bounded memory. Bounded in count (ROUNDS × REQUESTS) and time (pytest timeout, per-request
timeout); in-process, no network.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import soundfile as sf
import torch

from ser_model.inference import Predictor
from ser_model.model import SERModel
from tests.train.synthetic import tiny_config

REQUESTS = 32
ROUNDS = 3
THREADS = 8
RATES = (8000, 16000, 44100, 48000)
MAX_RSS_GROWTH = 1536 * 1024**2
"""Generous: the model is small; what this catches is memory growing with the number of requests."""


def make_requests(folder, seed: int = 0) -> list[dict]:
    """REQUESTS requests, each 1-3 waveforms (0.2-4 s, mixed rates and channel counts) or one to two files."""
    rng = np.random.default_rng(seed)
    requests = []
    for index in range(REQUESTS):
        items = []
        for _ in range(int(rng.integers(1, 4))):
            rate = int(rng.choice(RATES))
            channels = int(rng.integers(1, 3))
            items.append(
                (
                    (0.1 * rng.standard_normal((int(rate * rng.uniform(0.2, 4.0)), channels))).astype(
                        np.float32
                    ),
                    rate,
                )
            )
        if index % 4 == 0:
            paths = []
            for k, (wave, rate) in enumerate(items[:2]):
                path = folder / f"req{index}_{k}.wav"
                sf.write(path, wave, rate)
                paths.append(str(path))
            requests.append({"files": paths})
        else:
            requests.append({"arrays": items})
    return requests


def answer(predictor: Predictor, request: dict) -> list[dict]:
    if "files" in request:
        return predictor.predict_files(request["files"])
    return predictor.predict_arrays(request["arrays"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_concurrent_requests_are_all_answered_like_sequential_ones_with_bounded_memory(tmp_path):
    torch.manual_seed(0)
    SERModel(tiny_config()).save_pretrained(tmp_path / "model")
    predictor = Predictor.from_pretrained(tmp_path / "model")
    requests = make_requests(tmp_path)
    expected = [answer(predictor, r) for r in requests]
    process = psutil.Process()
    before = process.memory_info().rss
    per_round = []

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for _ in range(ROUNDS):
            futures = [pool.submit(answer, predictor, r) for r in requests]
            answers = [f.result(timeout=120) for f in futures]
            for got, want in zip(answers, expected):
                assert [a["label"] for a in got] == [w["label"] for w in want]
                for a, w in zip(got, want):
                    np.testing.assert_allclose(
                        list(a["probabilities"].values()), list(w["probabilities"].values()), atol=1e-5
                    )
            per_round.append(process.memory_info().rss)

    growth = max(per_round) - before
    figures = ", ".join(f"{(rss - before) / 2**20:+.0f} MiB" for rss in per_round)
    print(
        f"\n{ROUNDS * REQUESTS} concurrent requests on {THREADS} threads, all answered; RSS {before / 2**20:.0f} MiB before, after each round {figures}"
    )
    assert growth < MAX_RSS_GROWTH, (
        f"RSS grew by {growth / 2**20:.0f} MiB under load (bound {MAX_RSS_GROWTH / 2**20:.0f} MiB)"
    )
    assert per_round[-1] - per_round[0] < MAX_RSS_GROWTH / 3, (
        f"RSS keeps growing round after round: {figures}"
    )
