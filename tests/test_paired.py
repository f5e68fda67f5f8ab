"""Paired comparisons over seeds and questions (east.paired): hand-computed values and coverage checks."""

import math
import random
from statistics import mean, stdev

import pytest

from east.paired import crossed_interval, differences, paired_difference, seed_interval, t80, t975


def rows(values):
    return {f"q{i}": v for i, v in enumerate(values)}


def test_differences_pair_on_shared_seeds_and_questions():
    arm = {0: {"a": 1, "b": 1, "c": 0}, 1: {"a": 0}}
    base = {0: {"a": 0, "b": 1}, 2: {"a": 1}}
    assert differences(arm, base) == {0: {"a": 1.0, "b": 0.0}}


def test_one_seed_is_the_question_level_paired_interval():
    d = {0: rows([1, 0, 0, -1, 1, 1, 0, 0])}
    found = crossed_interval(d)
    values = [1, 0, 0, -1, 1, 1, 0, 0]
    assert found["mean"] == pytest.approx(mean(values))
    assert found["ci95"] == pytest.approx(t975(7) * stdev(values) / math.sqrt(8))
    assert found["method"].startswith("one seed")


def test_crossed_interval_matches_the_anova_formula_by_hand():
    # 2 seeds x 3 questions
    grid = [[1, 0, 1], [0, 0, 1]]
    d = {s: rows(grid[s]) for s in range(2)}
    grand = 3 / 6
    seed_means, q_means = [2 / 3, 1 / 3], [0.5, 0.0, 1.0]
    ms_s = 3 * sum((m - grand) ** 2 for m in seed_means) / 1
    ms_q = 2 * sum((m - grand) ** 2 for m in q_means) / 2
    ms_e = sum((grid[i][j] - seed_means[i] - q_means[j] + grand) ** 2 for i in range(2) for j in range(3)) / 2
    combined = ms_s + ms_q - ms_e
    df = combined**2 / (ms_s**2 / 1 + ms_q**2 / 2 + ms_e**2 / 2)
    found = crossed_interval(d)
    assert found["mean"] == pytest.approx(grand)
    assert found["df"] == pytest.approx(df)
    assert found["ci95"] == pytest.approx(t975(df) * math.sqrt(combined / 6))
    assert found["mdd80"] == pytest.approx((t975(df) + t80(df)) * math.sqrt(combined / 6))


def test_no_question_effect_leaves_the_seed_term_with_its_own_degrees_of_freedom():
    # every question has the same mean over seeds: MS_question = 0 < MS_residual; the seeds differ
    grid = [[1, 0, 1], [0, 1, 0]]
    found = crossed_interval({s: rows(grid[s]) for s in range(2)})
    assert found["df"] == 1


def test_identical_arms_have_zero_difference_and_zero_width():
    same = {s: rows([1, 0, 1, 1]) for s in range(3)}
    found = paired_difference(same, same)
    assert found["mean"] == 0 and found["ci95"] == 0


def test_seed_only_interval_is_student_t_over_seed_means():
    d = {0: rows([1, 0]), 1: rows([0, 0]), 2: rows([1, 1])}
    found = seed_interval(d)
    means = [0.5, 0.0, 1.0]
    assert found["mean"] == pytest.approx(0.5)
    assert found["ci95"] == pytest.approx(t975(2) * stdev(means) / math.sqrt(3))


def simulate(rng, seeds, questions, effect, seed_sd):
    """Two arms on shared questions: question difficulty, a per-seed training shift of the difference, and
    a true effect on the accuracy difference."""
    p = [rng.random() for _ in range(questions)]
    arm, base = {}, {}
    for s in range(seeds):
        shift = rng.gauss(0, seed_sd)
        base[s] = {f"q{j}": float(rng.random() < p[j]) for j in range(questions)}
        arm[s] = {f"q{j}": float(rng.random() < min(1, max(0, p[j] + effect + shift))) for j in range(questions)}
    return arm, base


@pytest.mark.parametrize("seed_sd", [0.0, 0.03])
def test_crossed_interval_covers_the_true_difference_about_95_percent(seed_sd):
    # The true difference in expectation is `effect` (clipping aside, p stays inside [0.05, 0.95] mostly)
    rng = random.Random(7)
    covered, trials = 0, 200
    for _ in range(trials):
        arm, base = simulate(rng, seeds=4, questions=200, effect=0.0, seed_sd=seed_sd)
        found = paired_difference(arm, base)
        covered += abs(found["mean"]) <= found["ci95"]
    # a broken interval (e.g. dropping the seed term, or dividing by S Q twice) falls far from 95%
    assert 0.88 <= covered / trials <= 1.0
