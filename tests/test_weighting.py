"""Signals, mappings (hand-computed values for every formula) and per-question statistics with filters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from east.records import NO_ANSWER, GradedSet, QuestionStats
from east.weighting import (
    accuracy,
    cluster_sizes,
    entropy,
    linear_weights,
    map_weights,
    max_linear_range,
    mean_weights,
    most_frequent_incorrect,
    power_weights,
    question_stats,
    rejection,
    summarise,
    summary_line,
    uniform_weights,
)

NA = NO_ANSWER


def graded(qid: str, keys: list[str], correct: list[bool]) -> GradedSet:
    return GradedSet(question_id=qid, prompt=f"P{qid}", responses=[f"r{i} {k}" for i, k in enumerate(keys)],
                     num_tokens=[1] * len(keys), finished=[True] * len(keys), gold="1",
                     answers=[None if k == NA else k for k in keys], keys=keys, correct=correct)


# ---- signals -------------------------------------------------------------------------------------


def test_cluster_sizes_sorted_by_size_then_key():
    assert cluster_sizes(["b", "a", "b", "a", "c"]) == [("a", 2), ("b", 2), ("c", 1)]
    assert cluster_sizes(["7", NA, NA, "7", NA]) == [(NA, 3), ("7", 2)]


def test_entropy_hand_values():
    assert entropy([2, 1, 1]) == pytest.approx(1.5 * math.log(2))
    assert entropy([2, 1, 1], base=2) == pytest.approx(1.5)
    assert entropy([1, 1]) == pytest.approx(math.log(2))
    assert entropy([3, 1]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert entropy([4]) == 0.0 and math.copysign(1, entropy([4])) == 1  # not -0.0
    assert entropy([5, 0]) == 0.0  # empty clusters contribute nothing
    with pytest.raises(ValueError):
        entropy([])


def test_no_answer_responses_form_one_cluster():
    keys = ["1", "1", NA, NA]
    assert cluster_sizes(keys) == [("1", 2), (NA, 2)]
    assert entropy([s for _, s in cluster_sizes(keys)]) == pytest.approx(math.log(2))
    assert entropy([s for _, s in cluster_sizes([NA] * 4)]) == 0.0


def test_accuracy_and_rejection():
    keys = ["5", "3", "3", "4", NA, NA, NA]
    correct = [True, False, False, False, False, False, False]
    assert accuracy(correct) == pytest.approx(1 / 7)
    assert rejection(keys, correct) == pytest.approx(2 / 7)  # NO_ANSWER (3) excluded; "3" is the top wrong answer
    assert most_frequent_incorrect(keys, correct) == "3"
    assert rejection(["1", "1"], [True, True]) == 0.0
    assert rejection(["1", NA], [True, False]) == 0.0  # only unparseable wrong answers: R = 0
    assert most_frequent_incorrect(["1", NA], [True, False]) is None


def test_most_frequent_incorrect_tie_goes_to_smallest_key():
    keys = ["9", "2", "9", "2", "1"]
    correct = [False, False, False, False, True]
    assert most_frequent_incorrect(keys, correct) == "2"
    assert rejection(keys, correct) == pytest.approx(2 / 5)


# ---- mappings: hand-computed values --------------------------------------------------------------

H = [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "a, expected",
    [
        (1.0, [0.5, 1.0, 1.5]),
        (2.0, [3 / 14, 12 / 14, 27 / 14]),
        (0.5, [3 * x / (1 + math.sqrt(2) + math.sqrt(3)) for x in (1, math.sqrt(2), math.sqrt(3))]),
        (-1.0, [3 * x / (1 + 1 / 2 + 1 / 3) for x in (1, 1 / 2, 1 / 3)]),
        (0.0, [1.0, 1.0, 1.0]),
    ],
)
def test_power_hand_values(a, expected):
    w = power_weights(H, a=a)
    assert w == pytest.approx(expected, rel=1e-12)
    assert w.mean() == pytest.approx(1.0, abs=1e-15)


def test_power_paper_behaviours():
    ratio = lambda w: w.max() / w.min()  # noqa: E731
    assert ratio(power_weights(H, a=1)) == pytest.approx(3)
    assert ratio(power_weights(H, a=2)) == pytest.approx(9)  # a > 1 sharpens
    assert ratio(power_weights(H, a=0.5)) == pytest.approx(math.sqrt(3))  # 0 < a < 1 compresses
    assert list(np.argsort(power_weights(H, a=-1.5))) == [2, 1, 0]  # a < 0 reverses the order
    assert list(np.argsort(power_weights(H, a=1.5))) == [0, 1, 2]


def test_power_zero_signal():
    assert power_weights([0.0, 1.0, 2.0], a=1) == pytest.approx([0, 1, 2])  # h = 0 -> weight 0 for a > 0
    for a in (0.0, -1.0):
        with pytest.raises(ValueError, match=r"undefined for signal 0.*all-correct.*epsilon"):
            power_weights([0.0, 1.0], a=a)
    with pytest.raises(ValueError, match="all 2 signal values are 0"):
        power_weights([0.0, 0.0], a=1)
    # epsilon shifts the signal: [1, 2] with a = -1 -> [1, 1/2] * 2 / 1.5
    assert power_weights([0.0, 1.0], a=-1, epsilon=1.0) == pytest.approx([4 / 3, 2 / 3])


def test_power_error_names_problem_and_fix():
    with pytest.raises(ValueError) as err:
        power_weights([0.0, 0.5], a=-2)
    msg = str(err.value)
    assert "a = -2" in msg and "signal 0" in msg and "all-correct" in msg and "epsilon" in msg


def test_power_does_not_overflow_for_tiny_signals():
    w = power_weights([1e-200, 1e-100, 1.0], a=-3)
    assert np.all(np.isfinite(w)) and w.mean() == pytest.approx(1.0)
    assert w[0] == pytest.approx(3.0) and w[2] == 0.0  # the others vanish next to 1e600


def test_linear_hand_values():
    h = [0.0, 1.0, 2.0, 5.0]  # min 0, max 5, mean 2
    assert max_linear_range(h) == pytest.approx(2.5)
    # R = 1: a = 1/5, b = 1 - 2/5
    assert linear_weights(h, linear_range=1.0) == pytest.approx([0.6, 0.8, 1.0, 1.6])
    # R = max allowed: the smallest weight is exactly 0
    assert linear_weights(h, linear_range=2.5) == pytest.approx([0.0, 0.5, 1.0, 2.5])
    assert linear_weights(h, linear_range=0.0) == pytest.approx([1, 1, 1, 1])


def test_linear_errors_and_constant_signal():
    with pytest.raises(ValueError, match="at most .* = 2.5"):
        linear_weights([0.0, 1.0, 2.0, 5.0], linear_range=3.0)
    with pytest.raises(ValueError, match="linear_range"):
        linear_weights([1.0, 2.0], linear_range=None)
    with pytest.raises(ValueError, match=">= 0"):
        linear_weights([1.0, 2.0], linear_range=-1.0)
    assert linear_weights([2.0, 2.0, 2.0], linear_range=5.0) == pytest.approx([1, 1, 1])


def test_mean_and_uniform_hand_values():
    assert mean_weights(H) == pytest.approx([0.5, 1.0, 1.5])
    assert mean_weights([0.0, 2.0]) == pytest.approx([0.0, 2.0])
    with pytest.raises(ValueError, match="mean is 0"):
        mean_weights([0.0, 0.0])
    assert mean_weights([0.0, 0.0], epsilon=0.5) == pytest.approx([1, 1])
    assert uniform_weights(H) == pytest.approx([1, 1, 1])


def test_map_weights_dispatch_and_bad_inputs():
    assert map_weights(H, "power", a=2) == pytest.approx(power_weights(H, a=2))
    assert map_weights(H, "linear", linear_range=1) == pytest.approx(linear_weights(H, 1))
    assert map_weights(H, "mean") == pytest.approx(mean_weights(H))
    assert map_weights(H, "uniform") == pytest.approx([1, 1, 1])
    with pytest.raises(ValueError, match="unknown mapping"):
        map_weights(H, "softmax")
    for bad in ([], [1.0, float("nan")], [-0.1, 1.0]):
        with pytest.raises(ValueError):
            power_weights(bad)
    with pytest.raises(ValueError, match="epsilon"):
        power_weights(H, epsilon=-1)


@pytest.mark.parametrize(
    "weights",
    [
        lambda h: power_weights(h, a=1.5),
        lambda h: power_weights(h, a=-1.25),
        lambda h: power_weights(h, a=0.2),
        lambda h: mean_weights(h),
        lambda h: linear_weights(h, linear_range=0.8),
    ],
)
def test_base_invariance(weights):
    counts = [[5, 3], [2, 2, 2, 1], [7, 1], [3, 3, 1, 1]]
    h_ln = [entropy(c) for c in counts]
    h_log2 = [entropy(c, base=2) for c in counts]
    assert weights(h_log2) == pytest.approx(weights(h_ln), rel=1e-12)


# ---- per-question statistics and filters ---------------------------------------------------------


def sample_sets() -> list[GradedSet]:
    return [
        graded("mixed", ["1", "1", "2", "3"], [True, True, False, False]),  # h = 1.5 ln 2
        graded("mostly", ["1", "1", "1", "2"], [True, True, True, False]),  # h = H(3/4, 1/4)
        graded("wrong", ["2", "3", NA, NA], [False] * 4),
        graded("right", ["1"] * 4, [True] * 4),
    ]


def test_question_stats_rows():
    stats = question_stats(sample_sets())
    assert [s.question_id for s in stats] == ["mixed", "mostly", "wrong", "right"]
    mixed, mostly, wrong, right = stats
    assert mixed.cluster_keys == ["1", "2", "3"] and mixed.cluster_sizes == [2, 1, 1]
    assert (mixed.n, mixed.n_correct, mixed.n_no_answer) == (4, 2, 0)
    assert mixed.entropy == pytest.approx(1.5 * math.log(2))
    assert (mixed.accuracy, mixed.rejection) == (0.5, 0.25)
    assert wrong.n_no_answer == 2 and wrong.cluster_keys == [NA, "2", "3"]
    assert (wrong.kept, wrong.drop_reason, wrong.weight) == (False, "all_wrong", 0.0)
    assert (right.kept, right.drop_reason, right.weight) == (False, "all_correct", 0.0)
    assert mixed.kept and mostly.kept and mixed.drop_reason is None
    h1, h2 = 1.5 * math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert mixed.weight == pytest.approx(2 * h1 / (h1 + h2))
    assert mostly.weight == pytest.approx(2 * h2 / (h1 + h2))
    assert mixed.signal == mixed.entropy
    assert QuestionStats.from_dict(mixed.to_dict()) == mixed


def test_weights_mean_one_over_kept_only():
    stats = question_stats(sample_sets(), a=1.5)
    kept = [s.weight for s in stats if s.kept]
    assert np.mean(kept) == pytest.approx(1.0, abs=1e-15)
    assert all(s.weight == 0.0 for s in stats if not s.kept)


def test_ablation_signals():
    acc = question_stats(sample_sets(), signal="accuracy")
    assert [s.signal for s in acc[:2]] == [0.5, 0.25]
    assert acc[0].weight == pytest.approx(2 * 0.5 / 0.75)
    rej = question_stats(sample_sets(), signal="rejection", a=2)
    assert [s.signal for s in rej[:2]] == [0.25, 0.25]
    assert rej[0].weight == pytest.approx(1.0)


def test_keep_all_correct():
    stats = question_stats(sample_sets(), keep_all_correct=True)
    right = stats[3]
    assert right.kept and right.drop_reason is None and right.weight == 0.0  # h = 0, a > 0
    assert stats[2].drop_reason == "all_wrong"  # all-wrong is always dropped
    with pytest.raises(ValueError, match=r"(?s)a = -1.*epsilon.*signal 0: right"):
        question_stats(sample_sets(), keep_all_correct=True, a=-1)
    eps = question_stats(sample_sets(), keep_all_correct=True, a=-1, epsilon=0.1)
    assert eps[3].weight > eps[0].weight > 0  # a < 0 favours confident questions
    assert np.mean([s.weight for s in eps if s.kept]) == pytest.approx(1.0)


def test_rejection_zero_on_kept_question_with_negative_a():
    sets = [graded("q1", ["1", NA], [True, False]), graded("q2", ["1", "2"], [True, False])]
    with pytest.raises(ValueError, match="signal 0: q1"):
        question_stats(sets, signal="rejection", a=-1)


def test_no_kept_question_error_counts_reasons():
    sets = [graded("w", ["2"], [False]), graded("r1", ["1"], [True]), graded("r2", ["1"], [True])]
    with pytest.raises(ValueError, match="3 questions, 1 all wrong, 2 all correct") as err:
        question_stats(sets)
    assert "keep_all_correct" in str(err.value)


def test_invalid_graded_sets():
    with pytest.raises(ValueError, match="never correct"):
        question_stats([graded("q", [NA, "1"], [True, False])])
    with pytest.raises(ValueError, match="one key and one verdict"):
        question_stats([graded("q", ["1", "2"], [True])])
    with pytest.raises(ValueError, match="no graded samples"):
        question_stats([graded("q", [], [])])
    with pytest.raises(ValueError, match="duplicate question_id"):
        question_stats([graded("q", ["1", "2"], [True, False])] * 2)
    with pytest.raises(ValueError, match="unknown signal"):
        question_stats(sample_sets(), signal="perplexity")


def test_linear_and_mean_mappings_in_stats():
    lin = question_stats(sample_sets(), mapping="linear", linear_range=0.5)
    w = [s.weight for s in lin[:2]]
    assert max(w) - min(w) == pytest.approx(0.5) and np.mean(w) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="linear_range"):
        question_stats(sample_sets(), mapping="linear")
    uni = question_stats(sample_sets(), mapping="uniform")
    assert [s.weight for s in uni] == [1.0, 1.0, 0.0, 0.0]


def test_summarise_and_summary_line():
    stats = question_stats(sample_sets())
    s = summarise(stats)
    assert (s["questions"], s["kept"], s["dropped"]) == (4, 2, {"all_wrong": 1, "all_correct": 1, "no_boxed_correct": 0,
                                                                 "no_boxed_incorrect": 0})
    assert s["samples"] == 16 and s["samples_no_answer"] == 2
    assert s["weight"]["mean"] == pytest.approx(1.0)
    assert s["entropy"]["max"] == pytest.approx(1.5 * math.log(2))
    assert set(s["weight"]["quantiles"]) == {"q10", "q50", "q90"}
    line = summary_line(stats)
    assert "\n" not in line and line.startswith("2/4 questions kept") and "1 all wrong" in line


def boxed_graded(qid: str, rows: list[tuple[str, bool, bool]]) -> GradedSet:
    """A graded set from (key, correct, boxed) per response; boxed responses end in \\boxed{key}."""
    g = graded(qid, [k for k, _, _ in rows], [ok for _, ok, _ in rows])
    g.responses = [f"r{i} so \\boxed{{{k}}}" if box else f"r{i} so the answer is {k}" for i, (k, _, box) in enumerate(rows)]
    return g


def test_official_filter_drops_what_the_official_preprocessing_drops():
    sets = [
        boxed_graded("both", [("1", True, True), ("2", False, True), ("2", False, False)]),
        boxed_graded("no_boxed_right", [("1", True, False), ("2", False, True), ("3", False, True)]),
        boxed_graded("wrong_only_unanswered", [("1", True, True), ("1", True, True), (NA, False, False)]),
        boxed_graded("wrong_unboxed", [("1", True, True), ("4", False, False), ("5", False, False)]),
        boxed_graded("also_both", [("1", True, True), ("1", True, False), ("6", False, True), ("7", False, True)]),
    ]
    plain = question_stats(sets)
    assert all(s.kept for s in plain)  # without the filter every question has right and wrong answers
    official = question_stats(sets, official_filter=True)
    assert [s.drop_reason for s in official] == [None, "no_boxed_correct", "no_boxed_incorrect", "no_boxed_incorrect", None]
    kept = [s for s in official if s.kept]
    assert np.mean([s.weight for s in kept]) == pytest.approx(1.0)  # the normaliser sees only the kept ones
    assert kept[0].weight != plain[0].weight
    assert summarise(official)["dropped"]["no_boxed_incorrect"] == 2
    assert "2 no boxed incorrect" in summary_line(official)
    with pytest.raises(ValueError, match=r"1 all wrong, 0 all correct, 1 no boxed correct \(official_filter\)"):
        question_stats([sets[1], graded("w", ["2"], [False])], official_filter=True)


def test_official_filter_with_keep_all_correct_keeps_all_correct_boxed_questions():
    sets = [boxed_graded("right", [("1", True, True)] * 2), boxed_graded("right_unboxed", [("1", True, False)] * 2),
            boxed_graded("mixed", [("1", True, True), ("2", False, True)])]
    stats = question_stats(sets, keep_all_correct=True, official_filter=True)
    assert [s.drop_reason for s in stats] == [None, "no_boxed_correct", None]
