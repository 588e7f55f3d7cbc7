"""benchmarks/arithmetic_peak.py: the FLOP its bare operations claim are what the formulas of a
matrix product and a convolution's forward and backward give, and a rate is FLOP per second."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.scripts import load_script


@pytest.fixture(scope="module")
def peak():
    return load_script("benchmarks/arithmetic_peak.py", "bench_arithmetic_peak")


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_bare_operations_count_the_textbook_flop(peak, dtype):
    torch.set_num_threads(1)
    flop, call = peak.bare_matmul(dtype, n=64)
    assert flop == 2 * 64**3
    out = call()
    assert out.shape == (64, 64) and out.dtype == (dtype or torch.float32)
    flop, call = peak.bare_convolution(dtype)
    b, c_in, c_out, h, w = 16, 32, 64, 40, 150
    forward = 2 * b * c_out * h * w * c_in * 9  # a multiply and an add per tap, same padding
    assert flop == 3 * forward  # forward, the input's gradient, the weight's gradient


def test_rate_is_gflop_per_second(peak):
    assert peak.rate(3_000_000_000, 1.5) == pytest.approx(2.0)
