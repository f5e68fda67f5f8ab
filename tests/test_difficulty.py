"""DAST difficulty levels: the official GSM8K cut points, which side of each cut is inclusive, greedy rescue."""

from __future__ import annotations

import pytest

from east.records import QuestionStats
from east.weighting import GSM8K_CUTS, LEVELS, DifficultyCuts, difficulty_level, difficulty_levels, level_rank


@pytest.mark.parametrize(
    "acc, level",
    [
        (1.0, "easiest"),
        (127 / 128, "easy"),
        (0.7000001, "easy"),
        (0.7, "medium"),  # 0.7 belongs to medium
        (7 / 10, "medium"),
        (0.55, "medium"),
        (0.4, "medium"),  # 0.4 belongs to medium
        (0.3999999, "hard"),
        (0.25, "hard"),
        (0.1000001, "hard"),
        (0.1, "hardest"),  # 0.1 belongs to hardest
        (1 / 128, "hardest"),
        (0.0, "unsolved"),
    ],
)
def test_gsm8k_cut_points(acc, level):
    assert difficulty_level(acc) == level


def test_cut_points_hit_exactly_by_sample_fractions():
    # k / n equal to a cut lands on the same float as the literal, so the inclusive side applies.
    assert difficulty_level(14 / 20) == difficulty_level(28 / 40) == "medium"
    assert difficulty_level(8 / 20) == "medium"
    assert difficulty_level(2 / 20) == difficulty_level(16 / 160) == "hardest"


def test_greedy_correct_only_rescues_unsolved():
    assert difficulty_level(0.0, greedy_correct=True) == "hardest"
    assert difficulty_level(0.0, greedy_correct=False) == "unsolved"
    assert difficulty_level(0.0, greedy_correct=None) == "unsolved"
    assert difficulty_level(0.5, greedy_correct=False) == "medium"
    assert difficulty_level(1.0, greedy_correct=False) == "easiest"


def test_custom_cuts():
    cuts = DifficultyCuts(easy_above=0.8, medium_from=0.5, hard_above=0.2)
    assert [difficulty_level(a, cuts=cuts) for a in (0.8, 0.81, 0.5, 0.49, 0.2, 0.21)] == [
        "medium", "easy", "medium", "hard", "hardest", "hard"]
    single_medium = DifficultyCuts(easy_above=0.5, medium_from=0.5, hard_above=0.2)
    assert difficulty_level(0.5, cuts=single_medium) == "medium"
    assert difficulty_level(0.51, cuts=single_medium) == "easy"
    assert GSM8K_CUTS == DifficultyCuts(0.7, 0.4, 0.1)


@pytest.mark.parametrize("bad", [(0.4, 0.7, 0.1), (0.7, 0.4, 0.0), (1.0, 0.4, 0.1), (0.7, 0.1, 0.1)])
def test_invalid_cuts(bad):
    with pytest.raises(ValueError, match="difficulty cuts"):
        DifficultyCuts(*bad)


def test_accuracy_out_of_range():
    for acc in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError):
            difficulty_level(acc)


def test_level_rank_and_levels_from_stats():
    assert [level_rank(lv) for lv in LEVELS] == list(range(6))
    with pytest.raises(ValueError):
        level_rank("trivial")

    def row(qid, acc):
        return QuestionStats(question_id=qid, n=10, cluster_keys=[], cluster_sizes=[], n_correct=round(acc * 10),
                             n_no_answer=0, entropy=0.0, accuracy=acc, rejection=0.0, kept=True,
                             drop_reason=None, signal=0.0, weight=1.0)

    stats = [row("a", 1.0), row("b", 0.4), row("c", 0.0), row("d", 0.0)]
    assert difficulty_levels(stats, greedy_correct={"d": True}) == {
        "a": "easiest", "b": "medium", "c": "unsolved", "d": "hardest"}
