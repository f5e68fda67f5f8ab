"""Tests of the built-in arith task: determinism, split disjointness, worked solutions, difficulty knob.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_arith.py -q
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from east.tasks.arith import ARITH_DEFAULT, ARITH_HARD, SPLITS, ArithSpec, make_questions, split_of

LINE = re.compile(r"^(-?\d+)([-+*/])(\d+)=(-?\d+)$")


def _evaluate(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def check_solution(question) -> list[int]:
    """Asserts the worked solution is a correct chain ending in \\boxed{gold}; returns all values seen."""
    *lines, last = question.solution.split("\n")
    assert last == f"\\boxed{{{question.gold}}}"
    assert len(lines) == question.meta["steps"] >= 1
    values, previous = [], None
    for line in lines:
        a, op, b, result = LINE.match(line).groups()
        a, b, result = int(a), int(b), int(result)
        if op == "/":
            assert a % b == 0, line
        assert _evaluate(a, op, b) == result, line
        if previous is not None:
            assert a == previous, "each step must continue from the previous result"
        values += [a, result]
        previous = result
    assert str(previous) == question.gold
    return values


def test_same_seed_same_questions_and_prefix_stable():
    first = make_questions("test", 50, ARITH_DEFAULT, seed=3)
    assert first == make_questions("test", 50, ARITH_DEFAULT, seed=3)
    assert first[:20] == make_questions("test", 20, ARITH_DEFAULT, seed=3)
    assert first != make_questions("test", 50, ARITH_DEFAULT, seed=4)


def test_question_ids_and_fields():
    questions = make_questions("train", 12, ARITH_DEFAULT, seed=0)
    assert [q.question_id for q in questions] == [f"arith-train-{i:05d}" for i in range(12)]
    for q in questions:
        assert q.gold.isdigit() and q.solution and "steps" in q.meta
        assert q.question.endswith("How many now?")


def test_splits_disjoint_by_text_and_computation_across_seeds():
    by_split = {s: make_questions(s, 400 if s != "warmup" else 3000, ARITH_DEFAULT, seed=s == "test") for s in SPLITS}
    texts = {s: {q.question for q in qs} for s, qs in by_split.items()}
    keys = {s: {q.meta["key"] for q in qs} for s, qs in by_split.items()}
    for i, a in enumerate(SPLITS):
        assert len(texts[a]) == len(by_split[a]), "no duplicate texts within a split"
        for b in SPLITS[i + 1 :]:
            assert not texts[a] & texts[b]
            assert not keys[a] & keys[b]
    assert all(split_of(k) == s for s, ks in keys.items() for k in ks)


def test_hard_preset_disjoint_from_default_splits():
    hard_test = {q.meta["key"] for q in make_questions("test", 200, ARITH_HARD, seed=0)}
    warm = {q.meta["key"] for q in make_questions("warmup", 2000, ARITH_HARD, seed=0)}
    assert not hard_test & warm


@pytest.mark.parametrize("spec", [ARITH_DEFAULT, ARITH_HARD], ids=["default", "hard"])
def test_solutions_are_correct_and_within_spec(spec):
    for q in make_questions("test", 300, spec, seed=1):
        values = check_solution(q)
        assert spec.min_steps <= q.meta["steps"] <= spec.max_steps
        assert all(0 <= v <= spec.max_value for v in values)
        assert spec.start_min <= values[0] <= spec.start_max


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    min_steps=st.integers(1, 4),
    extra=st.integers(0, 3),
    negative=st.booleans(),
    ops=st.sampled_from([("add",), ("sub", "mul"), ("add", "sub", "mul", "div"), ("add", "div")]),
)
def test_any_spec_gives_correct_solutions(seed, min_steps, extra, negative, ops):
    spec = ArithSpec(min_steps=min_steps, max_steps=min_steps + extra, ops=ops, allow_negative=negative, factors=(2, 3))
    for q in make_questions("train", 10, spec, seed=seed):
        values = check_solution(q)
        if not negative:
            assert min(values) >= 0
        assert {op for op in q.meta["ops"]} <= set(ops)


def test_difficulty_knob_changes_steps_and_sizes():
    easy = make_questions("test", 300, ARITH_DEFAULT, seed=0)
    hard = make_questions("test", 300, ARITH_HARD, seed=0)
    mean_steps = lambda qs: sum(q.meta["steps"] for q in qs) / len(qs)  # noqa: E731
    assert mean_steps(hard) > mean_steps(easy) + 1
    assert max(int(q.gold) for q in hard) > max(int(q.gold) for q in easy)
    assert any("div" in q.meta["ops"] for q in hard) and not any("div" in q.meta["ops"] for q in easy)


def test_spec_rejects_unknown_fields_and_bad_ranges():
    with pytest.raises(ValidationError):
        ArithSpec(steps=3)
    with pytest.raises(ValidationError):
        ArithSpec(min_steps=4, max_steps=2)
    with pytest.raises(ValidationError):
        ArithSpec(ops=("mul",))
    with pytest.raises(ValueError):
        make_questions("dev", 3, ARITH_DEFAULT, seed=0)


def test_texts_stay_short():
    questions = make_questions("warmup", 500, ARITH_DEFAULT, seed=0)
    assert max(len(q.question) for q in questions) <= 90
    assert max(len(q.solution) for q in questions) <= 48
