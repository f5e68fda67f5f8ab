"""Per-question uncertainty signals from the graded samples of one question (SPEC sections 2 and 4).

Pure functions over a question's cluster keys (normalised final answers, `NO_ANSWER` where none was
extracted) and per-response correctness, as found on a `GradedSet`:

    sizes = cluster_sizes(g.keys)              # [(key, count), ...] largest first, ties by key
    h = entropy([c for _, c in sizes])         # Eq. 1, natural log
    A = accuracy(g.correct)                    # n_correct / n
    R = rejection(g.keys, g.correct)           # share of the most frequent incorrect answer

`stats.question_stats` calls these for every question; selection uses `incorrect_clusters` to pick
DPO / KTO negatives with the same tie rule as the rejection signal.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from east.records import NO_ANSWER


def sorted_counts(counter: Counter[str]) -> list[tuple[str, int]]:
    """(key, count) pairs, largest count first, ties by key (so the order never depends on input order)."""
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def cluster_sizes(keys: Sequence[str]) -> list[tuple[str, int]]:
    """The answer clusters of one question as (key, size), largest first, ties by key.

    `NO_ANSWER` responses share one key, so they form one cluster of their own (SPEC section 4).
    """
    return sorted_counts(Counter(keys))


def entropy(sizes: Sequence[int], base: float = math.e) -> float:
    """Eq. 1: -sum_j p_j log p_j over cluster shares p_j = size_j / n; natural log unless `base` is given.

    The paper writes ln, the official code log2; every mapping is invariant to the base (SPEC section 2).
    """
    if any(s < 0 for s in sizes):
        raise ValueError(f"cluster sizes must be >= 0, got {list(sizes)}")
    n = sum(sizes)
    if n == 0:
        raise ValueError("entropy of an empty question: no samples")
    h = -math.fsum((s / n) * math.log(s / n) for s in sizes if s > 0)
    # One cluster gives -(1 * log 1) = -0.0, and rounding can give -1e-17; report a plain 0.0.
    return (h if h > 0 else 0.0) / math.log(base)


def accuracy(correct: Sequence[bool]) -> float:
    """A = share of correct samples."""
    if len(correct) == 0:
        raise ValueError("accuracy of an empty question: no samples")
    return sum(bool(c) for c in correct) / len(correct)


def incorrect_clusters(keys: Sequence[str], correct: Sequence[bool]) -> list[tuple[str, int]]:
    """(key, count) of the INCORRECT responses' answers, NO_ANSWER excluded, largest first, ties by key.

    Counted over incorrect responses, not whole clusters: should a key hold both verdicts (the verifier
    accepted one rendering and not another), only its incorrect responses count against it.
    """
    check_same_length(keys, correct)
    return sorted_counts(Counter(k for k, ok in zip(keys, correct) if not ok and k != NO_ANSWER))


def most_frequent_incorrect(keys: Sequence[str], correct: Sequence[bool]) -> str | None:
    """The key of the most frequent incorrect answer (ties: smallest key), None if there is none."""
    clusters = incorrect_clusters(keys, correct)
    return clusters[0][0] if clusters else None


def rejection(keys: Sequence[str], correct: Sequence[bool]) -> float:
    """R = share, over all n samples, of the most frequent incorrect answer (NO_ANSWER excluded; 0 if none)."""
    if len(keys) == 0:
        raise ValueError("rejection of an empty question: no samples")
    clusters = incorrect_clusters(keys, correct)
    return clusters[0][1] / len(keys) if clusters else 0.0


def check_same_length(keys: Sequence[str], correct: Sequence[bool]) -> None:
    if len(keys) != len(correct):
        raise ValueError(f"{len(keys)} cluster keys but {len(correct)} verdicts: one of each per response")
