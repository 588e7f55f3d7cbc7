"""MLL terms against references written here, and the switches of the weighted sum."""

import math

import pytest
import torch

from ser_model.config import LossConfig
from ser_model.losses import center_loss, focal_loss, frame_views, multi_loss, soft_kl_loss, supcon_loss
from ser_model.model import SEROutput

torch.set_num_threads(2)

B, C, E, T, D = 6, 4, 8, 9, 12


def _logits_targets(seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, generator=g) * 3
    targets = torch.softmax(torch.randn(B, C, generator=g) * 2, dim=1)
    targets[0] = torch.nn.functional.one_hot(torch.tensor(1), C).float()  # exact zeros in a target row
    return logits, targets


def _softmax_row(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("seed", range(3))
def test_kl_matches_definition(seed):
    logits, y = _logits_targets(seed)
    total = 0.0
    for b in range(B):
        p = _softmax_row(logits[b].tolist())
        total += sum(yc * (math.log(yc) - math.log(pc)) for yc, pc in zip(y[b].tolist(), p) if yc > 0)
    assert float(soft_kl_loss(logits, y)) == pytest.approx(total / B, rel=1e-5)


def test_perfect_prediction_minimises_kl():
    _, y = _logits_targets(0)
    y = y.clamp_min(1e-6)
    y = y / y.sum(1, keepdim=True)
    perfect = soft_kl_loss(torch.log(y), y)
    assert float(perfect) == pytest.approx(0.0, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        assert soft_kl_loss(torch.randn(B, C, generator=g), y) > perfect


@pytest.mark.parametrize("seed", range(3))
def test_focal_with_gamma_zero_is_soft_cross_entropy(seed):
    logits, y = _logits_targets(seed)
    ce = (
        -sum(
            yc * math.log(pc)
            for b in range(B)
            for yc, pc in zip(y[b].tolist(), _softmax_row(logits[b].tolist()))
        )
        / B
    )
    assert float(focal_loss(logits, y, gamma=0.0)) == pytest.approx(ce, rel=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_focal_matches_reference(gamma):
    logits, y = _logits_targets(3)
    ref = 0.0
    for b in range(B):
        p = _softmax_row(logits[b].tolist())
        ref -= sum(yc * (1 - pc) ** gamma * math.log(pc) for yc, pc in zip(y[b].tolist(), p))
    assert float(focal_loss(logits, y, gamma)) == pytest.approx(ref / B, rel=1e-5)
    assert focal_loss(logits, y, gamma) <= focal_loss(logits, y, 0.0)  # (1 − p)^γ <= 1 down-weights


def test_center_loss_matches_reference_and_is_zero_at_the_centers():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(C, E, generator=g)
    labels = torch.randint(0, C, (B,), generator=g)
    emb = torch.randn(B, E, generator=g)
    ref = sum(0.5 * sum((emb[b, k] - centers[labels[b], k]) ** 2 for k in range(E)) for b in range(B)) / B
    assert float(center_loss(emb, labels, centers)) == pytest.approx(float(ref), rel=1e-5)
    assert float(center_loss(centers[labels], labels, centers)) == 0.0


def naive_supcon(z: torch.Tensor, labels: list[int], tau: float) -> float:
    n = len(labels)
    losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(n) if a != i)
        losses.append(
            -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in positives) / len(positives)
        )
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", range(4))
def test_supcon_matches_naive_double_loop(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(10, 5, generator=g), dim=1).double()
    labels = [0, 0, 1, 1, 1, 2, 3, 3, 0, 4]  # classes 2 and 4 have no positive: excluded anchors
    tau = [0.07, 0.1, 0.5, 1.0][seed]
    assert float(supcon_loss(z, torch.tensor(labels), tau)) == pytest.approx(
        naive_supcon(z.float(), labels, tau), rel=1e-4
    )


def test_supcon_without_positives_is_zero_with_a_gradient():
    z = torch.nn.functional.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    loss = supcon_loss(z, torch.arange(4), 0.1)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_supcon_gradient_is_finite():
    z = torch.nn.functional.normalize(torch.randn(8, 3), dim=1).requires_grad_()
    supcon_loss(z, torch.tensor([0, 0, 1, 1, 2, 2, 3, 4]), 0.07).backward()
    assert torch.isfinite(z.grad).all()


def test_frame_views_blend_a_valid_frame_with_the_valid_mean():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 4, 9, 2, 5, 3])
    frames = torch.randn(B, T, D, generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    frames[~mask] = float("nan")  # padding must never be read
    frames_ok = torch.nan_to_num(frames, nan=0.0)
    views = frame_views(torch.where(mask[:, :, None], frames, 0.0), mask, 7, torch.Generator().manual_seed(1))
    assert views.shape == (B, 7, D) and torch.isfinite(views).all()
    for b in range(B):
        n = int(lengths[b])
        mean = frames_ok[b, :n].mean(0)
        candidates = 0.5 * frames_ok[b, :n] + 0.5 * mean  # (n, D)
        for v in views[b]:
            assert torch.isclose(candidates, v[None], atol=1e-6).all(1).any()


def _output(seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, generator=g, requires_grad=True)
    emb = torch.randn(B, E, generator=g, requires_grad=True)
    frames = torch.randn(B, T, D, generator=g, requires_grad=True)
    mask = torch.arange(T)[None, :] < torch.tensor([9, 3, 5, 1, 9, 2])[:, None]
    return SEROutput(logits, emb, frames, mask, frames.mean(1))


@pytest.mark.parametrize(
    "switches",
    [
        dict(),
        dict(kl=False),
        dict(focal=False),
        dict(center=False),
        dict(supcon=False),
        dict(center=False, supcon=False, focal=False),
    ],
)
def test_multi_loss_is_the_weighted_sum_of_switched_on_terms(switches):
    cfg = LossConfig(w_kl=0.7, w_focal=1.3, w_center=0.2, w_supcon=0.4, supcon_views=3, **switches)
    out = _output(0)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    y = torch.nn.functional.one_hot(labels, C).float()
    centers = torch.randn(C, E)
    proj = torch.nn.Linear(D, 5)
    total, terms = multi_loss(out, y, labels, centers, proj, cfg, torch.Generator().manual_seed(0))
    on = [name for name in ("kl", "focal", "center", "supcon") if getattr(cfg, name)]
    assert sorted(terms) == sorted(on)
    with torch.no_grad():
        expected = 0.0
        if cfg.kl:
            expected += 0.7 * float(soft_kl_loss(out.logits, y))
        if cfg.focal:
            expected += 1.3 * float(focal_loss(out.logits, y, 2.0))
        if cfg.center:
            expected += 0.2 * float(center_loss(out.embedding, labels, centers))
        if cfg.supcon:
            views = frame_views(out.frames, out.frame_mask, 3, torch.Generator().manual_seed(0))
            z = torch.nn.functional.normalize(proj(views), dim=-1).flatten(0, 1)
            expected += 0.4 * float(supcon_loss(z, labels.repeat_interleave(3), 0.07))
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert (
        out.embedding.grad is not None
    ) == cfg.center  # the embedding reaches the loss only via the center term
    assert (out.frames.grad is not None) == cfg.supcon


def test_switched_off_terms_need_no_parameters():
    out = _output(1)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    y = torch.nn.functional.one_hot(labels, C).float()
    total, terms = multi_loss(out, y, labels, None, None, LossConfig(center=False, supcon=False))
    assert sorted(terms) == ["focal", "kl"]
    with pytest.raises(ValueError, match="center is on but no centers"):
        multi_loss(out, y, labels, None, None, LossConfig(supcon=False))
