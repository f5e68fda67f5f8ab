"""Step verification for the built-in arith task: a response counts as correct only when its written
working is sound, not just its final answer (`grading.verify_steps: true`).

    from east.grading.steps import step_error
    step_error("12+7=19\\n19-5=14\\n\\boxed{14}")   # None: sound
    step_error("16-3=14\\n14-1=13\\n\\boxed{13}")   # "line 1: 16-3 is 13, not 14"

Why: answer-only verification (the paper's) admits samples whose lines are wrong but whose final
answer happens to match the gold (`16-3=14 ... \\boxed{13}`). A character-level backbone memorises
arithmetic facts, so self-training on such samples teaches it wrong facts; on the shipped backbone
they were 11% of all correct samples and 28% of the SFT rows (docs/testbed.md). Checking every line
is the miniature of process supervision, and it only ever turns a "correct" verdict into "incorrect":
it can remove false positives, never add one.

A response is sound when it is well formed and every line checks out:
- every line but the last is one equation `A op B = C` with integers A, B, C and op one of + - * /
  (spaces around the symbols are allowed); there is at least one such line;
- the last line is `\\boxed{N}` and N is the result of the last equation;
- each equation's arithmetic is right (`/` must divide exactly) and each equation after the first
  starts from the previous result, as the task's worked solutions do.
Nothing is evaluated: the lines are matched by a regular expression and the integers compared.
"""

from __future__ import annotations

import re

from east.tasks.arith import apply_symbol

_EQUATION = re.compile(r"^\s*(-?\d{1,12})\s*([+\-*/])\s*(-?\d{1,12})\s*=\s*(-?\d{1,12})\s*$")
_BOXED = re.compile(r"^\s*\\boxed\{\s*(-?\d{1,12})\s*\}\s*$")


def step_error(response: str) -> str | None:
    """Why the response's working is unsound (one short phrase naming the line), or None if it is sound."""
    lines = [line for line in response.strip().split("\n") if line.strip()]
    if len(lines) < 2:
        return "no working: expected equation lines and then \\boxed{N}"
    boxed = _BOXED.match(lines[-1])
    if boxed is None:
        return "the last line is not \\boxed{N}"
    previous = None
    for number, line in enumerate(lines[:-1], start=1):
        match = _EQUATION.match(line)
        if match is None:
            return f"line {number} is not an equation A op B = C"
        a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        if previous is not None and a != previous:
            return f"line {number} starts from {a}, not from the previous result {previous}"
        result = apply_symbol(a, op, b)
        if result != c:
            return f"line {number}: {a}{op}{b} is {result if result is not None else 'not an integer'}, not {c}"
        previous = c
    if int(boxed[1]) != previous:
        return f"the boxed answer {boxed[1]} is not the last result {previous}"
    return None


def steps_sound(response: str) -> bool:
    return step_error(response) is None
