"""Every hand-written case in tests/fixtures/grading_{arith,gsm8k,math}.jsonl, graded in one batch per
kind (as the pipeline does): extracted answer and verdict must match; GSM8K also checks flexible mode."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from east.grading import Grade, grade

FIXTURES = Path(__file__).parent / "fixtures"
KINDS = ("arith", "gsm8k", "math")


def load(kind: str) -> list[dict]:
    with open(FIXTURES / f"grading_{kind}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@cache
def graded(kind: str) -> dict[str, Grade]:
    rows = load(kind)
    grades = grade([r["response"] for r in rows], [r["gold"] for r in rows], kind)
    return {r["id"]: g for r, g in zip(rows, grades)}


CASES = [pytest.param(kind, row, id=row["id"]) for kind in KINDS for row in load(kind)]


@pytest.mark.parametrize("kind", KINDS)
def test_fixture_files_have_enough_cases(kind):
    rows = load(kind)
    assert len(rows) >= 60
    assert len({r["id"] for r in rows}) == len(rows)
    assert any(r["expected_answer"] is None for r in rows)  # responses without an answer are covered
    assert any(r["expected_correct"] for r in rows) and not all(r["expected_correct"] for r in rows)


@pytest.mark.parametrize(("kind", "row"), CASES)
def test_fixture_case(kind, row):
    g = graded(kind)[row["id"]]
    assert g.answer == row["expected_answer"]
    assert g.correct is row["expected_correct"], (g, row["gold"])
    if row["expected_answer"] is None:
        assert g.status == "no_answer" and g.key == "<no answer>"
    else:
        assert g.status == "ok"
    if kind == "gsm8k":
        assert g.flexible_correct is row["expected_flexible_correct"]
