"""EAM: the docs/METHOD.md invariants, and agreement with a naive per-sample reference."""

import math

import numpy as np
import pytest
import torch

from ser_model.config import EAMConfig
from ser_model.eam import energy_adaptive_mixup, random_partner

torch.set_num_threads(2)


def _batch(seed: int, b: int = 8, max_len: int = 4000, n_classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, max_len + 1, (b,), generator=g)
    lengths[0] = max_len
    waves = torch.randn(b, max_len, generator=g) * torch.rand(b, 1, generator=g)
    waves = waves * (torch.arange(max_len)[None, :] < lengths[:, None])
    labels = torch.randint(0, n_classes, (b,), generator=g)
    targets = torch.nn.functional.one_hot(labels, n_classes).float()
    return waves, lengths, targets


def _mix(waves, lengths, targets, seed=0, **cfg):
    return energy_adaptive_mixup(
        waves, lengths, targets, generator=torch.Generator().manual_seed(seed), config=EAMConfig(**cfg)
    )


def naive_eam(waves, lengths, targets, partner, s_i, l_mix, s_j, snr_db, degenerate_db=-30.0):
    """docs/METHOD.md steps 4-6, one sample at a time in numpy float64, from the drawn segment/SNR; a segment
    whose power is at or below 10^(degenerate_db/10) times its utterance's mean power is degenerate."""
    x = waves.numpy().astype(np.float64)
    utt_power = [np.mean(x[b, : int(lengths[b])] ** 2) for b in range(len(x))]
    ratio = 10.0 ** (degenerate_db / 10.0)
    y = targets.numpy().astype(np.float64)
    out, soft, lams = x.copy(), y.copy(), np.zeros(len(x))
    for i in range(len(x)):
        j = int(partner[i])
        n = int(l_mix[i])
        if n == 0:
            continue
        a_i = x[i, s_i[i] : s_i[i] + n]
        a_j = x[j, s_j[i] : s_j[i] + n]
        p_i, p_j = np.mean(a_i**2), np.mean(a_j**2)
        if p_i <= ratio * utt_power[i] or p_j <= ratio * utt_power[j]:
            continue
        snr = 10.0 ** (float(snr_db[i]) / 10.0)
        g = math.sqrt(p_i / (snr * p_j))
        out[i, s_i[i] : s_i[i] + n] = a_i + g * a_j
        p_j2 = p_i / snr
        lam = (n / int(lengths[i])) * p_j2 / (p_i + p_j2)
        lams[i] = lam
        soft[i] = (1 - lam) * y[i] + lam * y[j]
    return out, soft, lams


@pytest.mark.parametrize("seed", range(6))
def test_matches_naive_reference(seed):
    waves, lengths, targets = _batch(seed)
    targets = torch.softmax(
        torch.randn(targets.shape, generator=torch.Generator().manual_seed(seed)), 1
    )  # soft labels too
    r = _mix(waves, lengths, targets, seed)
    out, soft, lam = naive_eam(
        waves,
        lengths,
        targets,
        r.partner,
        r.segment[:, 0],
        r.segment[:, 1],
        r.partner_start,
        r.snr_db.double(),
    )
    np.testing.assert_allclose(r.waves.numpy(), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.targets.numpy(), soft, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.lam.numpy(), lam, rtol=1e-5, atol=1e-7)
    assert r.mixed.any()


@pytest.mark.parametrize("seed", range(10))
def test_draws_obey_the_algorithm(seed):
    waves, lengths, targets = _batch(seed, b=16)
    r = _mix(waves, lengths, targets, seed)
    s_i, l_mix = r.segment[:, 0], r.segment[:, 1]
    m = r.mixed
    l_j = lengths[r.partner]
    assert torch.all(l_mix[m] >= 1)
    assert torch.all(l_mix[m] < torch.div(lengths[m], 2, rounding_mode="floor"))  # strictly less than half
    assert torch.all(l_mix[m] <= l_j[m])
    assert torch.all(s_i[m] + l_mix[m] <= lengths[m])
    assert torch.all(r.partner_start[m] + l_mix[m] <= l_j[m])
    assert torch.all((r.snr_db >= -5.0) & (r.snr_db <= 10.0))
    assert torch.all(l_mix[~m] == 0)


def test_partner_is_a_permutation_without_fixed_points():
    for b in (2, 3, 16):
        for seed in range(20):
            p = random_partner(b, torch.Generator().manual_seed(seed))
            assert sorted(p.tolist()) == list(range(b))
            assert torch.all(p != torch.arange(b))


@pytest.mark.parametrize("seed", range(10))
def test_lambda_range_and_soft_labels_sum_to_one(seed):
    waves, lengths, targets = _batch(seed, b=16)
    r = _mix(waves, lengths, targets, seed)
    assert torch.all(r.lam >= 0) and torch.all(r.lam < 0.5)
    torch.testing.assert_close(r.targets.sum(1), torch.ones(16))
    assert torch.all(r.lam[~r.mixed] == 0)
    assert torch.all(r.lam[r.mixed] > 0)


@pytest.mark.parametrize("seed", range(5))
def test_realised_snr_equals_drawn(seed):
    waves, lengths, targets = _batch(seed, b=16)
    r = _mix(waves, lengths, targets, seed)
    for i in torch.nonzero(r.mixed).flatten().tolist():
        s, n = r.segment[i].tolist()
        a_i = waves[i, s : s + n].double()
        added = r.waves[i, s : s + n].double() - a_i
        realised = 10 * math.log10(float(a_i.pow(2).mean() / added.pow(2).mean()))
        assert realised == pytest.approx(float(r.snr_db[i]), abs=1e-3)


@pytest.mark.parametrize("seed", range(5))
def test_only_the_mixed_segment_changes(seed):
    waves, lengths, targets = _batch(seed, b=16)
    r = _mix(waves, lengths, targets, seed)
    for i in range(16):
        s, n = r.segment[i].tolist()
        outside = torch.ones(waves.shape[1], dtype=torch.bool)
        outside[s : s + n] = False
        assert torch.equal(r.waves[i, outside], waves[i, outside])  # bit-identical, padding included


def test_zero_energy_leaves_audio_bit_identical():
    waves, lengths, targets = _batch(1, b=4)
    waves[1] = 0.0  # silent primary (P'_i = 0) and silent partner (P'_j = 0) for whoever draws it
    waves[2, :] = -0.0  # signed zeros must survive too
    r = _mix(waves, lengths, targets, 3)
    silent_partner = (r.partner == 1) | (r.partner == 2)
    for i in range(4):
        if i in (1, 2) or silent_partner[i]:
            assert not r.mixed[i] and r.lam[i] == 0
            assert torch.equal(r.waves[i], waves[i])
            assert torch.equal(torch.signbit(r.waves[i]), torch.signbit(waves[i]))
            assert torch.equal(r.targets[i], targets[i])


@pytest.mark.parametrize("level_db, mixed", [(-45.0, False), (-15.0, True)])
def test_a_near_silent_segment_relative_to_its_utterance_is_degenerate(level_db, mixed):
    """A quiet stretch far below its utterance's level (digital near-silence at the edges of a clip)
    is not boosted to the drawn SNR, nor does it move the label, at any absolute scale."""
    n = 4000
    for scale in (1e-4, 1.0):
        g = torch.Generator().manual_seed(0)
        waves = torch.randn(2, n, generator=g) * scale  # (2, n); the first half of each is quiet
        waves[:, : n // 2] *= 10 ** (level_db / 20)
        lengths = torch.full((2,), n)
        targets = torch.eye(2)
        for seed in range(500):  # a seed whose primary and partner segments both lie in the quiet half
            draw = _mix(waves, lengths, targets, seed, degenerate_db=-100.0)
            s, span = draw.segment[0].tolist()
            if draw.mixed[0] and s + span <= n // 2 and int(draw.partner_start[0]) + span <= n // 2:
                break
        else:
            pytest.fail("no seed drew both segments inside the quiet half")
        r = _mix(waves, lengths, targets, seed)  # the default rule, same draws
        assert bool(r.mixed[0]) is mixed, (scale, level_db)
        if not mixed:
            assert torch.equal(r.waves[0], waves[0]) and torch.equal(r.targets[0], targets[0])


@pytest.mark.parametrize("cfg", [dict(enabled=False), dict(mix_prob=0.0)])
def test_no_mixing_is_bit_identical(cfg):
    waves, lengths, targets = _batch(2, b=8)
    waves[:, -5:] = -0.0
    r = _mix(waves, lengths, targets, 0, **cfg)
    assert torch.equal(r.waves, waves) and torch.equal(torch.signbit(r.waves), torch.signbit(waves))
    assert torch.equal(r.targets, targets)
    assert torch.all(r.lam == 0) and not r.mixed.any()


def test_mix_prob_mixes_about_that_fraction():
    _, _, targets = _batch(4, b=200, max_len=400)
    waves, lengths = (
        torch.randn(200, 400, generator=torch.Generator().manual_seed(4)),
        torch.full((200,), 400),
    )
    r = _mix(waves, lengths, targets, 0, mix_prob=0.5)
    assert 60 < int(r.mixed.sum()) < 140


def test_short_utterances_are_not_mixed():
    waves, lengths, targets = _batch(5, b=6, max_len=100)
    lengths[:] = torch.tensor([1, 2, 3, 4, 100, 100])
    waves = waves + 1.0  # non-zero energy everywhere
    for seed in range(20):
        r = _mix(waves, lengths, targets, seed)
        assert not r.mixed[:3].any()  # floor(l/2) <= 1 for l <= 3: no l_mix in [1, floor(l/2))
        assert torch.equal(r.waves[:3], waves[:3])
        assert r.mixed[4:].all() and r.segment[3, 1] in (0, 1)  # l = 4 allows only l_mix = 1


def test_batch_of_one_is_not_mixed():
    waves, lengths, targets = _batch(6, b=1)
    r = _mix(waves, lengths, targets, 0)
    assert not r.mixed.any() and torch.equal(r.waves, waves)


def test_deterministic_given_the_generator():
    waves, lengths, targets = _batch(7, b=16)
    a, b = _mix(waves, lengths, targets, 11), _mix(waves, lengths, targets, 11)
    c = _mix(waves, lengths, targets, 12)
    for field in ("waves", "targets", "lam", "partner", "snr_db", "segment", "partner_start", "mixed"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.waves, c.waves)


def test_bad_shapes_are_rejected():
    waves, lengths, targets = _batch(0, b=4)
    with pytest.raises(ValueError, match="expected \\(B, L\\), \\(B,\\), \\(B, C\\)"):
        energy_adaptive_mixup(waves, lengths[:3], targets)


@pytest.mark.parametrize("which", ["waves 1-D", "targets 1-D", "waves 0-D"])
def test_wrong_ranks_are_rejected_with_the_expected_shapes(which):
    waves, lengths, targets = _batch(0, b=4)
    if which == "waves 1-D":
        waves = waves[0]
    elif which == "targets 1-D":
        targets = targets.argmax(dim=1)
    else:
        waves = waves[0, 0]
    with pytest.raises(ValueError, match="expected \\(B, L\\), \\(B,\\), \\(B, C\\)"):
        energy_adaptive_mixup(waves, lengths, targets)
