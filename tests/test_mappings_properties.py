"""Property tests of the mappings: weights are >= 0 with mean 1; power keeps (a > 0) or reverses (a < 0) the order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from east.weighting import linear_weights, max_linear_range, mean_weights, power_weights

# Signals are 0 or at least 1e-6: an entropy over n <= 10^5 samples is never smaller, and subnormal
# floats would only test float underflow, not the mappings.
positive = st.floats(min_value=1e-6, max_value=20.0, allow_nan=False)
signal_value = st.one_of(st.just(0.0), positive)
positive_signals = st.lists(positive, min_size=1, max_size=40)
signals = st.lists(signal_value, min_size=1, max_size=40).filter(lambda h: max(h) > 0)
exponents = st.floats(min_value=-3.0, max_value=3.0, allow_nan=False)

SETTINGS = settings(max_examples=150, deadline=None)


def assert_valid(w: np.ndarray, n: int) -> None:
    assert w.shape == (n,)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    assert abs(w.mean() - 1.0) < 1e-9


def assert_order(h: list[float], w: np.ndarray, sign: int) -> None:
    """For h_i < h_j: w_i <= w_j (sign 1) or w_i >= w_j (sign -1); equal only where rounding ties them."""
    order = np.argsort(h, kind="stable")
    assert np.all(sign * np.diff(w[order]) >= -1e-12)


@SETTINGS
@given(h=positive_signals, a=exponents)
def test_power_valid_and_monotone(h, a):
    w = power_weights(h, a=a)
    assert_valid(w, len(h))
    if a != 0:
        assert_order(h, w, 1 if a > 0 else -1)


@SETTINGS
@given(h=signals, a=st.floats(min_value=0.05, max_value=3.0))
def test_power_with_zero_signals_positive_a(h, a):
    w = power_weights(h, a=a)
    assert_valid(w, len(h))
    assert_order(h, w, 1)
    assert np.all(w[np.asarray(h) == 0] == 0)


@SETTINGS
@given(h=signals, a=exponents, eps=st.floats(min_value=1e-3, max_value=1.0))
def test_power_with_epsilon_is_always_defined(h, a, eps):
    assert_valid(power_weights(h, a=a, epsilon=eps), len(h))


@SETTINGS
@given(h=signals)
def test_mean_valid_and_monotone(h):
    w = mean_weights(h)
    assert_valid(w, len(h))
    assert_order(h, w, 1)


@SETTINGS
@given(h=signals, frac=st.floats(min_value=0.0, max_value=1.0))
def test_linear_valid_monotone_and_spans_range(h, frac):
    r = frac * min(max_linear_range(h), 5.0)
    w = linear_weights(h, linear_range=r)
    assert_valid(w, len(h))
    assert_order(h, w, 1)
    if max(h) > min(h):
        assert abs((w.max() - w.min()) - r) < 1e-6 * max(1.0, r)
