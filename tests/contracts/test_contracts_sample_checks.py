"""The sample checks (non-finite, silence, clipped) agree with a straightforward reference on any audio."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from data_contracts.audio import AudioChecks, _check_samples
from data_contracts.errors import AudioCheckError

CHECKS = AudioChecks(silence_peak=1e-4, clip_level=0.999, max_clipped_fraction=0.01)


def reference_check(samples: np.ndarray, name: str, checks: AudioChecks) -> None:
    """Every sample inspected in turn, in the documented order: non_finite, silence, clipped."""
    values = samples.ravel().tolist()
    bad = sum(1 for v in values if not np.isfinite(v))
    if bad:
        raise AudioCheckError("non_finite", f"{name}: {bad} NaN or infinite samples")
    peak = max(abs(v) for v in values)
    if peak <= checks.silence_peak:
        raise AudioCheckError(
            "silence", f"{name}: peak amplitude {peak:.3g} <= {checks.silence_peak} (silent audio)"
        )
    clipped = sum(1 for v in values if abs(v) >= checks.clip_level) / len(values)
    if clipped > checks.max_clipped_fraction:
        raise AudioCheckError(
            "clipped",
            f"{name}: {clipped:.2%} of samples at or above {checks.clip_level} full scale, "
            f"expected at most {checks.max_clipped_fraction:.2%}",
        )


def outcome(check, samples: np.ndarray) -> tuple[str, str] | None:
    try:
        check(samples, "x.wav", CHECKS)
    except AudioCheckError as err:
        return err.reason_code, str(err)
    return None


# values concentrated where the checks decide: silence, clipping, non-finite
special = st.sampled_from(
    [0.0, -0.0, 5e-5, -5e-5, 1e-4, 0.5, -0.5, 0.999, -0.999, 1.0, -1.0, np.nan, np.inf, -np.inf]
)
sample_value = st.one_of(special, st.floats(-1.0, 1.0, width=32))


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(
        np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=200), elements=sample_value
    ),
    st.floats(0.0, 1.0),
)
def test_sample_checks_match_the_reference(samples, rare_fraction):
    # thin out the non-finite values so that clean, silent and clipped arrays are all common
    finite = np.isfinite(samples)
    keep = np.random.default_rng(samples.size).random(samples.shape) < rare_fraction
    samples = np.where(finite | keep, samples, np.float32(0.25))
    assert outcome(_check_samples, samples) == outcome(reference_check, samples)


def test_each_reason_is_raised_where_the_reference_raises_it():
    clean = np.full((1000, 1), 0.3, dtype=np.float32)
    nan = clean.copy()
    nan[3] = np.nan
    inf = clean.copy()
    inf[7, 0] = -np.inf
    silent = np.full((1000, 2), 1e-5, dtype=np.float32)
    clipped = clean.copy()
    clipped[:20] = -1.0
    barely = clean.copy()
    barely[:10] = 1.0  # exactly max_clipped_fraction: allowed
    expected = {
        "clean": None,
        "nan": "non_finite",
        "inf": "non_finite",
        "silent": "silence",
        "clipped": "clipped",
        "barely": None,
    }
    for label, samples in dict(
        clean=clean, nan=nan, inf=inf, silent=silent, clipped=clipped, barely=barely
    ).items():
        got = outcome(_check_samples, samples)
        assert got == outcome(reference_check, samples), label
        assert (got and got[0]) == expected[label], label
