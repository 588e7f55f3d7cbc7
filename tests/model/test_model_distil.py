"""The student's loss (ser_model.distil) against a per-sample reference written here, and its limits."""

from __future__ import annotations

import math

import pytest
import torch

from ser_model.distil import averaged_probabilities, distillation_loss, soften


def reference_loss(z, teacher, labels, alpha, tau):
    """Per sample, in Python floats: soften p̄ by p^(1/τ) / Σ p^(1/τ); KL to softmax(z/τ); CE to the label."""
    total = 0.0
    for row, p, y in zip(z.tolist(), teacher.tolist(), labels.tolist()):
        powered = [v ** (1.0 / tau) for v in p]
        target = [v / sum(powered) for v in powered]
        scaled = [v / tau for v in row]
        log_q = [v - math.log(sum(math.exp(s) for s in scaled)) for v in scaled]
        kl = sum(t * (math.log(t) - lq) for t, lq in zip(target, log_q) if t > 0)
        ce = -(row[y] - math.log(sum(math.exp(v) for v in row)))
        total += alpha * tau * tau * kl + (1 - alpha) * ce
    return total / len(labels)


@pytest.mark.parametrize(("alpha", "tau"), [(0.5, 1.0), (0.9, 2.0), (1.0, 4.0), (0.0, 3.0)])
def test_loss_equals_the_per_sample_reference(alpha, tau):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 8, generator=g, dtype=torch.float64) * 3
    teacher = averaged_probabilities(torch.randn(2, 6, 8, generator=g) * 2)
    labels = torch.randint(0, 8, (6,), generator=g)
    loss, terms = distillation_loss(z, teacher, labels, alpha=alpha, temperature=tau)
    assert float(loss) == pytest.approx(reference_loss(z.float(), teacher, labels, alpha, tau), rel=1e-5)
    assert set(terms) == {"distil_kl", "ce"}


def test_the_average_is_the_mean_of_the_members_softmax_and_tau_one_keeps_it():
    logits = torch.tensor([[[2.0, 0.0, -1.0]], [[0.0, 1.0, 0.0]]])  # (M=2, B=1, C=3)
    mean = (torch.softmax(logits[0], -1) + torch.softmax(logits[1], -1)) / 2
    assert torch.allclose(averaged_probabilities(logits), mean)
    assert torch.allclose(soften(mean, 1.0), mean, atol=1e-6)
    flat = soften(mean, 1000.0)
    assert torch.allclose(flat, torch.full_like(flat, 1 / 3), atol=1e-3)  # a high temperature flattens


def test_a_student_that_matches_the_teacher_has_zero_soft_term():
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    z = torch.log(teacher) * 1.0  # softmax(z / τ) = soften(p̄, τ) for every τ
    for tau in (1.0, 2.5):
        loss, terms = distillation_loss(z, teacher, torch.tensor([0, 2]), alpha=1.0, temperature=tau)
        assert float(terms["distil_kl"]) == pytest.approx(0.0, abs=1e-6)
        assert float(loss) == pytest.approx(0.0, abs=1e-5)


def test_bad_settings_are_refused_with_the_value():
    z, p, y = torch.zeros(2, 3), torch.full((2, 3), 1 / 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="alpha 1.5"):
        distillation_loss(z, p, y, alpha=1.5, temperature=1.0)
    with pytest.raises(ValueError, match="temperature 0"):
        distillation_loss(z, p, y, alpha=0.5, temperature=0.0)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        distillation_loss(torch.zeros(2, 4), p, y, alpha=0.5, temperature=1.0)
