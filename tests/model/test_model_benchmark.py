"""Training-step benchmark of the default fbank model on RAVDESS-sized batches (prints figures, asserts learning)."""

import time

import pytest
import torch

from ser_model.config import SERConfig
from ser_model.eam import energy_adaptive_mixup
from ser_model.losses import multi_loss
from ser_model.model import SERModel

SR = 16000


@pytest.mark.slow
def test_fbank_training_step_throughput_and_overfit():
    """16 utterances of 3-4 s (RAVDESS), full method (EAM + FLAM + all four losses), 2 threads.

    Prints utterances/s of the whole step (EAM, forward, loss, backward, Adam) and asserts the
    property a working step has: repeated steps on one batch lower the loss.
    """
    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = SERConfig(labels=tuple("abcdefgh")).with_overrides({"train.lr": 1e-3})
    model = SERModel(config).train()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3 * SR, 4 * SR + 1, (16,), generator=g)
    waves = torch.randn(16, int(lengths.max()), generator=g) * 0.1
    labels = torch.arange(16) % 8
    targets = torch.nn.functional.one_hot(labels, 8).float()
    optimizer = torch.optim.Adam(
        [{"params": model.main_parameters(), "lr": 1e-3}, {"params": model.center_parameters(), "lr": 5e-3}]
    )
    eam_gen, loss_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)

    def step() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        mixed = energy_adaptive_mixup(waves, lengths, targets, generator=eam_gen, config=config.eam)
        t_eam = time.perf_counter() - t0
        out = model(mixed.waves, lengths)
        total, _ = multi_loss(
            out, mixed.targets, labels, model.centers, model.supcon_proj, config.loss, loss_gen
        )
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        return float(total.detach()), t_eam, time.perf_counter() - t0

    first, _, _ = step()  # warm-up
    cpu0 = time.process_time()
    timings = [step() for _ in range(6)]
    cpu_seconds = time.process_time() - cpu0
    seconds = sum(t for _, _, t in timings)
    eam_ms = 1000 * sum(t for _, t, _ in timings) / len(timings)
    throughput = 16 * len(timings) / seconds
    print(
        f"\nfbank train step, B=16 x 3-4 s, 2 threads: {throughput:.1f} utt/s wall, "
        f"{16 * len(timings) / cpu_seconds:.1f} utt per CPU-second, EAM {eam_ms:.1f} ms/batch, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"
    )
    last_losses = [loss for loss, _, _ in timings[-3:]]
    assert max(last_losses) < first
