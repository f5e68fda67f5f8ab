"""Cluster keys, the distinct-pair cache, and grade_sample_sets."""

from __future__ import annotations

import importlib

import pytest

from east.grading import cluster_key, grade, grade_sample_sets, grade_with_stats
from east.records import NO_ANSWER, GradedSet, SampleSet

# `east.grading.grade` the attribute is the function; the module is reached by its import path.
grade_module = importlib.import_module("east.grading.grade")

HALF = ["\\frac{1}{2}", "1/2", "0.5", "\\dfrac12", "\\tfrac{1}{2}", "0.50", "\\frac{2}{4}", "$\\frac12$", "\\frac{1}{2}."]


@pytest.mark.parametrize("kind", ["arith", "gsm8k", "math"])
def test_spellings_of_one_half_share_a_key(kind):
    assert {cluster_key(s, kind) for s in HALF} == {"1/2"}


@pytest.mark.parametrize("gold", ["\\frac{1}{2}", "7"])  # one cluster whether right or wrong
def test_one_half_is_one_cluster_in_grades(gold):
    grades = grade([f"so $\\boxed{{{s}}}$" for s in HALF], [gold] * len(HALF), "math")
    assert len({g.key for g in grades}) == 1
    assert all(g.correct is (gold != "7") for g in grades)


def test_latex_keys_ignore_spacing_and_aliases():
    assert cluster_key("\\left( 1, \\dfrac{3}{2} \\right)", "math") == cluster_key("(1,\\frac32)", "math")
    assert cluster_key("2 \\sqrt 3", "math") != cluster_key("3\\sqrt{2}", "math")
    assert cluster_key("2\\sqrt3", "math") == cluster_key("2 \\sqrt{3}", "math")
    assert cluster_key("x = 5", "math") == "5"
    assert cluster_key(None, "math") == NO_ANSWER


def test_plain_text_keys_keep_spaces():
    assert cluster_key("2 4", "gsm8k") != cluster_key("24", "gsm8k")
    assert cluster_key("Eight", "gsm8k") == cluster_key("eight.", "gsm8k")


def test_correct_math_answers_merge_into_the_gold_cluster():
    gold = "\\frac{\\sqrt{2}}{2}"
    grades = grade(["\\boxed{\\frac{1}{\\sqrt{2}}}", "\\boxed{\\frac{\\sqrt2}{2}}", "\\boxed{\\sqrt{2}}"], [gold] * 3, "math")
    assert [g.correct for g in grades] == [True, True, False]
    assert grades[0].key == grades[1].key == cluster_key(gold, "math")
    assert grades[2].key != grades[0].key


def test_no_answer_is_its_own_cluster_and_never_correct():
    grades = grade(["I give up", "", "\\boxed{}"], ["3"] * 3, "arith")
    assert all(g.key == NO_ANSWER and g.status == "no_answer" and not g.correct for g in grades)


def test_unknown_kind_and_length_mismatch_are_errors():
    with pytest.raises(ValueError, match="kind"):
        grade(["\\boxed{1}"], ["1"], "physics")
    with pytest.raises(ValueError, match="golds"):
        grade(["\\boxed{1}"], ["1", "2"], "arith")


def counting(monkeypatch, name):
    calls = []
    original = getattr(grade_module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(grade_module, name, wrapper)
    return calls


def test_each_distinct_answer_gold_pair_is_graded_once(monkeypatch):
    fast = counting(monkeypatch, "fast_verdict")
    # 128 samples of one question: 4 spellings of 2 distinct values, plus unparseable responses.
    responses = (["\\boxed{12}"] * 60 + ["The answer is 12.00"] * 20 + ["\\boxed{13}"] * 30 + ["#### 13"] * 10 + ["hmm"] * 8)
    grades, stats = grade_with_stats(responses, ["12"] * 128, "arith")
    assert len(fast) == 2  # (12, gold) and (13, gold); spellings share a key, no-answer needs no verdict
    assert stats["distinct_pairs"] == 2 and stats["correct"] == 80 and stats["no_answer"] == 8


def test_math_verify_sees_each_distinct_pair_once(monkeypatch):
    symbolic = counting(monkeypatch, "_symbolic_verdicts")
    gold = "\\frac{\\sqrt{3}}{3}"
    responses = ["\\boxed{\\frac{1}{\\sqrt{3}}}"] * 50 + ["\\boxed{\\frac{1}{\\sqrt3}}"] * 14 + ["\\boxed{\\sqrt{3}}"] * 64
    grades, stats = grade_with_stats(responses, [gold] * 128, "math")
    assert len(symbolic) == 1
    assert len(symbolic[0][0]) == 2  # one batch of two pairs: the two spellings share a key
    assert stats["symbolic_pairs"] == 2 and stats["correct"] == 64


def test_grade_sample_sets_builds_graded_sets_and_counts():
    sets = [
        SampleSet("q1", "p1", ["\\boxed{4}", "\\boxed{5}", "no idea"], [3, 3, 2], [True, True, False]),
        SampleSet("q2", "p2", ["The answer is 9", "#### 9"], [4, 2], [True, True]),
    ]
    graded, counts = grade_sample_sets(sets, {"q1": "4", "q2": "9", "q3": "1"}, "arith")
    assert all(isinstance(g, GradedSet) for g in graded)
    assert graded[0].answers == ["4", "5", None]
    assert graded[0].keys == ["4", "5", NO_ANSWER]
    assert graded[0].correct == [True, False, False]
    assert graded[0].gold == "4" and graded[0].num_tokens == [3, 3, 2] and graded[0].prompt == "p1"
    assert graded[1].correct == [True, True]
    assert counts["questions"] == 2 and counts["responses"] == 5 and counts["correct"] == 3 and counts["no_answer"] == 1
    round_trip = GradedSet.from_dict(graded[0].to_dict())
    assert round_trip == graded[0]
    with pytest.raises(KeyError, match="gold"):
        grade_sample_sets(sets, {"q1": "4"}, "arith")


def test_gsm8k_reports_flexible_verdicts():
    grades, stats = grade_with_stats(["so 3 + 4 = 7 plums", "The answer is 7"], ["7", "7"], "gsm8k")
    assert [g.correct for g in grades] == [False, True]
    assert [g.flexible_correct for g in grades] == [True, True]
    assert stats["flexible_correct"] == 2 and stats["correct"] == 1


@pytest.mark.parametrize(
    ("kind", "response", "gold", "correct"),
    [
        # scale words: a multiplier, never a unit
        ("gsm8k", "The answer is 18 million.", "18", False),
        ("gsm8k", "The answer is 18 million.", "18000000", True),
        ("gsm8k", "The answer is 2.5 million.", "2500000", True),
        ("gsm8k", "The answer is 2.5 million.", "2.5", False),
        ("math", "$\\boxed{18\\text{ million}}$", "18", False),
        # a Unicode minus is a minus
        ("gsm8k", "The answer is \u22127.", "-7", True),
        ("gsm8k", "The answer is \u22127.", "7", False),
        ("math", "$\\boxed{\u2212\\frac{1}{2}}$", "-\\frac12", True),
        # a name assigned the answer
        ("gsm8k", "The answer is x = 18", "18", True),
        ("gsm8k", "The answer is x = 17", "18", False),
        ("arith", "\\boxed{n = 14}", "14", True),
        # several boxes side by side are one multi-value answer
        ("math", "The roots are \\boxed{3} and \\boxed{5}.", "3, 5", True),
        ("math", "The roots are \\boxed{3} and \\boxed{5}.", "5", False),
        ("math", "The roots are \\boxed{3} and \\boxed{4}.", "3, 5", False),
        # base subscripts: digits and base must agree (math-verify ignores the subscript)
        ("math", "\\boxed{52_{10}}", "52_8", False),
        ("math", "\\boxed{42}", "52_8", False),
        ("math", "\\boxed{52_{8}}", "52_8", True),
        ("math", "\\boxed{52}", "52_8", True),
        ("math", "\\boxed{1011_2}", "1011_{2}", True),
        ("math", "\\boxed{1011_2}", "11", False),
        # the percent sign is notation: 50% is 50, whatever the gold
        ("math", "\\boxed{50\\%}", "50", True),
        ("math", "\\boxed{50\\%}", "\\frac12", False),
        ("math", "\\boxed{15\\%}", "0.15", False),
        ("math", "\\boxed{15}", "15\\%", True),
        ("gsm8k", "The answer is 90%.", "0.9", False),
    ],
)
def test_rules_for_real_output_shapes(kind, response, gold, correct):
    assert grade([response], [gold], kind)[0].correct is correct


def test_percent_never_reaches_math_verify(monkeypatch):
    symbolic = counting(monkeypatch, "_symbolic_verdicts")
    assert grade(["\\boxed{15\\%}"], ["0.15"], "math")[0].correct is False
    assert symbolic[0][0] == [("15", "0.15")]


def test_a_whole_gsm8k_answer_text_as_gold_is_reduced_to_its_answer():
    gold = "Mia has 3 + 4 = 7 plums.\n#### 7"
    grades = grade(["The answer is 7.", "The answer is 8."], [gold, gold], "gsm8k")
    assert [g.correct for g in grades] == [True, False]
    sets = [SampleSet("q1", "p1", ["#### 7"], [2], [True])]
    graded, _ = grade_sample_sets(sets, {"q1": gold}, "gsm8k")
    assert graded[0].gold == "7" and graded[0].correct == [True]
    from east.errors import UserError

    with pytest.raises(UserError, match="no answer after it"):
        grade(["#### 7"], ["Mia has 7 plums.\n####  "], "gsm8k")
