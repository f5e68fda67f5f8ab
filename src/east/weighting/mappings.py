"""Mapping functions from a per-question signal h (entropy by default) to training weights (SPEC section 2).

Every mapping returns a float64 array with weights >= 0 and mean 1 over the questions it is given,
which must be the KEPT questions only (`stats.question_stats` calls them that way):

    power_weights(h, a=1.5)            # Eq. 5-6, the EAST mapping: h^a * N / sum h^a
    linear_weights(h, linear_range=1)  # Eq. 4: a*h + b with output range R
    mean_weights(h)                    # Eq. 3: h / mean(h)
    uniform_weights(h)                 # all 1 (vanilla self-training)
    map_weights(h, "power", a=1.5)     # the same, chosen by name (the config's `mapping`)

`epsilon` (>= 0) is added to every signal value first; it exists for users who keep questions with
h = 0 (all samples agree) and want a <= 0, which is otherwise undefined (SPEC section 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Mapping = Literal["power", "linear", "mean", "uniform"]
MAPPINGS: tuple[str, ...] = ("power", "linear", "mean", "uniform")


def power_weights(h: Sequence[float], a: float = 1.0, epsilon: float = 0.0) -> np.ndarray:
    """Eq. 5-6: f(h_i) = h_i^a * N / sum_j h_j^a.

    a > 1 sharpens differences, 0 < a < 1 compresses them, a < 0 reverses the order, a = 0 is uniform.
    h = 0 gives weight 0 for a > 0 and is an error for a <= 0 (0^a is infinite, or 0^0 ambiguous).
    """
    x = shifted_signal(h, epsilon)
    if not np.isfinite(a):
        raise ValueError(f"power mapping exponent a must be finite, got {a}")
    zeros = np.flatnonzero(x == 0)
    if a <= 0 and zeros.size:
        raise ValueError(
            f"power mapping with a = {a} (<= 0) is undefined for signal 0, and {zeros.size} of {x.size} "
            f"questions have signal 0 (positions {zeros[:5].tolist()}{' ...' if zeros.size > 5 else ''}); "
            "drop all-correct questions (keep_all_correct=False) or set epsilon > 0"
        )
    if zeros.size == x.size:
        raise ValueError(
            f"power mapping: all {x.size} signal values are 0, so every weight would be 0 and the mean "
            "cannot be 1; drop all-correct questions (keep_all_correct=False) or set epsilon > 0"
        )
    # Work in log space and subtract the largest log-weight: h^a overflows for small h and very
    # negative a (or tiny epsilon) although the normalised weights are perfectly finite.
    with np.errstate(divide="ignore"):
        log_w = a * np.log(x)  # h = 0 with a > 0 gives -inf, i.e. weight 0
    w = np.exp(log_w - log_w.max())
    return normalised(w)


def linear_weights(h: Sequence[float], linear_range: float | None, epsilon: float = 0.0) -> np.ndarray:
    """Eq. 4: f(h) = a*h + b with a = R / (max h - min h), b = 1 - a * mean(h); R = `linear_range`.

    The weights then span exactly R (max weight - min weight = R) around mean 1. The smallest weight is
    1 - R * (mean - min) / (max - min), so R may not exceed (max - min) / (mean - min). When all h are
    equal the slope is undefined and there is no spread to map: every weight is 1.
    """
    if linear_range is None:
        raise ValueError("linear mapping needs linear_range (R, the max - min spread of the weights)")
    if not np.isfinite(linear_range) or linear_range < 0:
        raise ValueError(f"linear_range must be a finite number >= 0, got {linear_range}")
    x = shifted_signal(h, epsilon)
    lo, hi, mean = x.min(), x.max(), x.mean()
    if hi == lo:
        return np.ones_like(x)
    max_range = max_linear_range(x)
    # A relative tolerance, so R = the printed maximum (rounded) is not rejected for float noise.
    if linear_range > max_range * (1 + 1e-9):
        raise ValueError(
            f"linear mapping with range R = {linear_range} makes weights negative: for these signals "
            f"R may be at most (max - min) / (mean - min) = {max_range:.6g}"
        )
    slope = linear_range / (hi - lo)
    w = 1.0 + slope * (x - mean)  # = a*h + b with b = 1 - a*mean, written so the mean is 1 exactly
    return normalised(np.clip(w, 0.0, None))


def max_linear_range(h: Sequence[float]) -> float:
    """The largest R for which the linear mapping keeps every weight >= 0: (max - min) / (mean - min)."""
    x = np.asarray(h, dtype=np.float64)
    lo, hi, mean = x.min(), x.max(), x.mean()
    if hi == lo:
        return float("inf")
    return float((hi - lo) / (mean - lo))


def mean_weights(h: Sequence[float], epsilon: float = 0.0) -> np.ndarray:
    """Eq. 3: f(h) = h / mean(h)."""
    x = shifted_signal(h, epsilon)
    if x.mean() == 0:
        raise ValueError(
            f"mean-division mapping: all {x.size} signal values are 0, so the mean is 0; "
            "drop all-correct questions (keep_all_correct=False) or set epsilon > 0"
        )
    return normalised(x)


def uniform_weights(h: Sequence[float]) -> np.ndarray:
    """All weights 1: vanilla self-training."""
    return np.ones(len(as_signal(h)), dtype=np.float64)


def map_weights(
    h: Sequence[float],
    mapping: Mapping = "power",
    *,
    a: float = 1.0,
    linear_range: float | None = None,
    epsilon: float = 0.0,
) -> np.ndarray:
    """The weights of `mapping` ("power", "linear", "mean" or "uniform") for signal values h."""
    if mapping == "power":
        return power_weights(h, a=a, epsilon=epsilon)
    if mapping == "linear":
        return linear_weights(h, linear_range=linear_range, epsilon=epsilon)
    if mapping == "mean":
        return mean_weights(h, epsilon=epsilon)
    if mapping == "uniform":
        return uniform_weights(h)
    raise ValueError(f"unknown mapping {mapping!r}; choose one of {', '.join(MAPPINGS)}")


def as_signal(h: Sequence[float]) -> np.ndarray:
    """h as a 1-D float64 array, checked: non-empty, finite, >= 0 (entropy and the ablation signals are)."""
    x = np.asarray(h, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"signal must be a non-empty 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("signal values must be finite")
    if np.any(x < 0):
        raise ValueError(f"signal values must be >= 0, got min {x.min()}")
    return x


def shifted_signal(h: Sequence[float], epsilon: float) -> np.ndarray:
    """h + epsilon, checked."""
    if not np.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon}")
    return as_signal(h) + epsilon


def normalised(w: np.ndarray) -> np.ndarray:
    """w / mean(w): mean 1 to float precision, whatever the mapping's own normaliser would give."""
    return w / w.mean()
