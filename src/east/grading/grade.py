"""Grading: extract each response's final answer, give it a cluster key, and decide whether it
matches the gold answer. The entry points are re-exported by `east.grading`:

    from east.grading import grade, grade_sample_sets
    grades = grade(responses, golds, kind="arith")          # one Grade per response
    graded, counts = grade_sample_sets(sample_sets, golds_by_id, kind="math")

How a verdict is reached (cheapest first):
1. no extractable answer -> status "no_answer", key NO_ANSWER, incorrect (SPEC section 4);
   (a gold that is a whole GSM8K answer text, rationale and "#### 42", is first reduced to "42");
2. a numeral with a base subscript on either side (`52_8`) -> same digits, and the same base where
   both give one (`52_{10}` is wrong for `52_8`, `52` is right); never math-verify, which ignores
   subscripts;
3. both answer and gold are plain numbers (`numeric.parse_number`, which also reads a name assigned
   a number, `x = 18`, as that number, for every kind) -> exact Fraction comparison.
   For kind "arith" / "gsm8k" this is the only comparison (a non-numeric gold falls back to
   normalised-string equality). For kind "math" an unequal pair where either side is a decimal is
   passed on, since math-verify accepts roundings (0.333333 for 1/3). A percent sign is notation,
   not a factor (`50\\%` is 50, so it is right for gold 50 and wrong for gold `\\frac12` or 0.5):
   it is removed from both sides before math-verify, which would otherwise read `15\\%` as 0.15;
4. kind "math": equal normalised LaTeX keys -> correct; otherwise math-verify `parse` + `verify` in a
   worker process with a hard wall-clock timeout (`east.grading.symbolic`). A timeout or a parse
   failure is incorrect, with status "timeout" / "error" and its own count.
Verdicts are cached per distinct (cluster key, gold) pair: the 128 samples of a question usually
carry a handful of distinct answers, so grading cost scales with distinct answers, not samples.

Cluster keys (the grouping behind the entropy, SPEC section 2): a plain number's key is its exact
value (`1/2` for 0.5, 1/2, \\frac{1}{2}, \\dfrac12); anything else gets a normalised LaTeX string
(no spaces or `$`, `\\dfrac` -> `\\frac`, `\\left`/`\\right` dropped, `\\frac12` -> `\\frac{1}{2}`, ...).
For kind "math" one more merge uses the verdicts we have anyway: every correct answer takes the
gold's key, so `\\frac{\\sqrt2}{2}` and `\\frac{1}{\\sqrt{2}}` are one cluster when they are right.
Distinct wrong answers are not compared with each other (that costs k^2 math-verify calls per
question); wrong answers equal as numbers or as normalised strings already share a key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from fractions import Fraction
from functools import lru_cache
from typing import Literal

from east.errors import UserError
from east.grading.extract import extract_answer, gold_from_gsm8k_answer
from east.grading.numeric import (
    base_numeral,
    is_exact_literal,
    number_key,
    parse_number,
    plain_digits,
    strip_percent,
    unwrap,
    without_assignment,
)
from east.grading.steps import steps_sound
from east.records import NO_ANSWER, GradedSet, SampleSet

KINDS = ("arith", "gsm8k", "math")
Status = Literal["ok", "no_answer", "timeout", "error"]


@dataclass(frozen=True)
class Grade:
    answer: str | None  # the extracted final answer (strict mode), None if there is none
    key: str  # cluster key; NO_ANSWER when answer is None
    correct: bool
    status: Status  # "ok" | "no_answer" | "timeout" | "error"
    flexible_correct: bool | None = None  # GSM8K only: verdict of the last number in the text
    step_rejected: bool = False  # verify_steps: the final answer matched the gold but the working did not check out


# --- cluster keys -----------------------------------------------------------------------------

_LATEX_DROP = re.compile(r"\\left|\\right|\\displaystyle|\\[,!;: ]|~|\s+")
_FRAC_ALIASES = re.compile(r"\\[dt]frac")
_BINOM_ALIASES = re.compile(r"\\[dt]binom")
_SHORT_FRAC = re.compile(r"\\frac(\d)(\d)")
_SHORT_SQRT = re.compile(r"\\sqrt(\d)")
_DEGREES = re.compile(r"\^\{?\\circ\}?")
_TRAILING_TEXT_UNIT = re.compile(r"(?<=.)\\(?:text|mbox|mathrm)\{[A-Za-z][A-Za-z .]*\}$")
_ASSIGNMENT = re.compile(r"^[A-Za-z]\s*=\s*(?=[^=]+$)")


def latex_key(answer: str) -> str:
    """A normalised LaTeX string: spacing, `$`, `\\left`/`\\right`, aliases and a trailing unit removed."""
    s = unwrap(answer.strip().replace("$", "").replace("\u2212", "-").strip())
    s = _ASSIGNMENT.sub("", s)  # "x = 5" answers the same question as "5"
    s = _TRAILING_TEXT_UNIT.sub("", s.strip())
    s = _LATEX_DROP.sub("", s)
    s = _FRAC_ALIASES.sub(r"\\frac", s)
    s = _BINOM_ALIASES.sub(r"\\binom", s)
    s = _SHORT_FRAC.sub(r"\\frac{\1}{\2}", s)
    s = _SHORT_SQRT.sub(r"\\sqrt{\1}", s)
    s = _DEGREES.sub("", s).replace("\\%", "").rstrip(".")
    return s or answer.strip()


_SPACES = re.compile(r"\s+")


def text_key(answer: str) -> str:
    """A normalised plain-text answer (arith / GSM8K): `$`, case and repeated spaces do not count.
    Spaces are kept, unlike in LaTeX: `2 4` is not 24."""
    s = unwrap(answer.replace("\\$", "").replace("$", "").strip()).rstrip(".").strip()
    return _SPACES.sub(" ", s).lower() or answer.strip()


def _number(answer: str, kind: str) -> Fraction | None:
    """The answer's exact value if it is a plain number; MATH answers keep bare words (`2 x`)."""
    return _cached_number(answer, kind != "math")


@lru_cache(maxsize=1 << 16)
def _cached_number(answer: str, unit_words: bool) -> Fraction | None:
    value = parse_number(answer, unit_words)
    if value is None and (assigned := without_assignment(answer)) is not None:
        value = parse_number(assigned, unit_words)  # "x = 18"
    return value


@lru_cache(maxsize=1 << 16)
def cluster_key(answer: str | None, kind: str) -> str:
    """The cluster key of an extracted answer: NO_ANSWER for None, the exact value for a plain number
    (`1/2`), otherwise a normalised LaTeX string. Kind-level merges (see module docstring) come on top."""
    _check_kind(kind)
    if answer is None:
        return NO_ANSWER
    value = _number(answer, kind)
    if value is not None:
        return number_key(value)
    if numeral := base_numeral(answer):
        return f"{numeral[0]}_{{{numeral[1]}}}"
    if kind != "math":
        return text_key(answer)
    key = latex_key(answer)
    value = _number(key, kind)  # e.g. `x = 5`, `1,\!000`
    return number_key(value) if value is not None else key


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


# --- verdicts ---------------------------------------------------------------------------------


def fast_verdict(answer: str, gold: str, kind: str) -> bool | None:
    """The verdict reachable without math-verify, or None when math-verify must decide (kind "math")."""
    if base_numeral(answer) or base_numeral(gold):
        return same_numeral(answer, gold)
    answer_value, gold_value = _number(answer, kind), _number(gold, kind)
    if answer_value is not None and gold_value is not None:
        if answer_value == gold_value:
            return True
        if kind != "math" or (is_exact_literal(answer) and is_exact_literal(gold)):
            return False
        return None
    same_key = cluster_key(answer, kind) == cluster_key(gold, kind)
    if kind != "math" or same_key:
        return same_key
    return None


def same_numeral(answer: str, gold: str) -> bool:
    """Whether two answers, one at least with a base subscript, are the same numeral: the same digits,
    and the same base if both state one (the question states the base an unmarked answer is in)."""
    ours, theirs = base_numeral(answer), base_numeral(gold)
    ours_digits = ours[0] if ours else plain_digits(answer)
    theirs_digits = theirs[0] if theirs else plain_digits(gold)
    if ours_digits is None or ours_digits != theirs_digits:
        return False
    return ours is None or theirs is None or ours[1] == theirs[1]


def gold_answer(gold: str) -> str:
    """The gold to compare with: a whole GSM8K answer text (rationale, then "#### 42") gives "42"."""
    if "####" not in gold:
        return gold
    try:
        return gold_from_gsm8k_answer(gold)
    except ValueError:
        raise UserError(f"gold answer {gold[-80:]!r} has '####' but no answer after it; give the final "
                        "answer alone, or the whole GSM8K answer text ending in '#### <answer>'") from None


def _symbolic_verdicts(pairs: list[tuple[str, str]], timeout: float, workers: int | None) -> list[tuple[str, bool]]:
    """(status, correct) per (answer, gold) pair from math-verify in the timed worker pool."""
    from east.grading.symbolic import verify_pairs  # imported lazily: arith / GSM8K never need it

    return verify_pairs(pairs, timeout=timeout, workers=workers)


def grade_with_stats(
    responses: Sequence[str],
    golds: Sequence[str],
    kind: str,
    *,
    timeout: float = 5.0,
    workers: int | None = None,
    verify_steps: bool = False,
) -> tuple[list[Grade], dict[str, int]]:
    """`grade` plus counts: responses, correct, no_answer, timeout, error, distinct_pairs (verdicts
    computed), symbolic_pairs (of those, sent to math-verify), for GSM8K flexible_correct, and with
    `verify_steps` step_rejected (right final answer, unsound working: `east.grading.steps`)."""
    _check_kind(kind)
    if verify_steps and kind != "arith":
        raise ValueError(f"verify_steps checks the built-in arith task's equation lines; kind {kind!r} has none")
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
    golds = [gold_answer(gold) for gold in golds]
    answers = [extract_answer(text) for text in responses]
    keys = [cluster_key(answer, kind) for answer in answers]

    # One verdict per distinct (key, gold); the first answer seen with a key stands for it.
    verdicts: dict[tuple[str, str], tuple[str, bool]] = {}
    pending: dict[tuple[str, str], str] = {}
    for answer, key, gold in zip(answers, keys, golds):
        if answer is None or (key, gold) in verdicts or (key, gold) in pending:
            continue
        verdict = fast_verdict(answer, gold, kind)
        if verdict is None:
            pending[(key, gold)] = answer
        else:
            verdicts[(key, gold)] = ("ok", verdict)
    if pending:
        pairs = list(pending)
        sent = [(strip_percent(pending[pair]), strip_percent(pair[1])) for pair in pairs]  # % is notation
        results = _symbolic_verdicts(sent, timeout, workers)
        verdicts.update(zip(pairs, results))

    flexible = _flexible_verdicts(responses, golds) if kind == "gsm8k" else [None] * len(responses)
    grades = []
    for text, answer, key, gold, flexible_correct in zip(responses, answers, keys, golds, flexible):
        if answer is None:
            grades.append(Grade(None, NO_ANSWER, False, "no_answer", flexible_correct))
            continue
        status, correct = verdicts[(key, gold)]
        if correct and kind == "math":
            key = cluster_key(gold, kind)  # every right answer is one cluster (module docstring)
        # The cluster key stays the final answer's: the entropy measures disagreement between answers.
        rejected = verify_steps and correct and not steps_sound(text)
        grades.append(Grade(answer, key, correct and not rejected, status, flexible_correct, rejected))  # type: ignore[arg-type]

    stats = {
        "responses": len(grades),
        "correct": sum(g.correct for g in grades),
        "no_answer": sum(g.status == "no_answer" for g in grades),
        "timeout": sum(g.status == "timeout" for g in grades),
        "error": sum(g.status == "error" for g in grades),
        "distinct_pairs": len(verdicts),
        "symbolic_pairs": len(pending),
    }
    if verify_steps:
        stats["step_rejected"] = sum(g.step_rejected for g in grades)
    if kind == "gsm8k":
        stats["flexible_correct"] = sum(bool(f) for f in flexible)
    return grades, stats


def _flexible_verdicts(responses: Sequence[str], golds: Sequence[str]) -> list[bool]:
    """GSM8K flexible-extract verdicts: the last number in the text against the gold, exactly."""
    cache: dict[tuple[str | None, str], bool] = {}
    verdicts = []
    for text, gold in zip(responses, golds):
        answer = extract_answer(text, mode="flexible")
        if (answer, gold) not in cache:
            cache[(answer, gold)] = answer is not None and fast_verdict(answer, gold, "gsm8k") is True
        verdicts.append(cache[(answer, gold)])
    return verdicts


def grade(
    responses: list[str],
    golds: list[str],
    kind: str,
    *,
    timeout: float = 5.0,
    workers: int | None = None,
    verify_steps: bool = False,
) -> list[Grade]:
    """One Grade per response against the gold at the same index. kind: "arith" | "gsm8k" | "math".
    `timeout` is the wall-clock limit per math-verify comparison; `workers` the math-verify processes
    (default: up to 2, the cores of this machine); `verify_steps` (arith only) also requires sound working."""
    return grade_with_stats(responses, golds, kind, timeout=timeout, workers=workers, verify_steps=verify_steps)[0]


def grade_sample_sets(
    sample_sets: list[SampleSet],
    golds: dict[str, str],
    kind: str,
    *,
    timeout: float = 5.0,
    workers: int | None = None,
    verify_steps: bool = False,
) -> tuple[list[GradedSet], dict[str, int]]:
    """Grade every response of every question (golds keyed by question_id) in one batch, so the
    distinct-pair cache and the worker pool are shared. Returns the GradedSets and the counts of
    `grade_with_stats` plus `questions`."""
    missing = [s.question_id for s in sample_sets if s.question_id not in golds]
    if missing:
        raise KeyError(f"no gold answer for {len(missing)} question(s), e.g. {missing[:3]}")
    golds = {qid: gold_answer(gold) for qid, gold in golds.items()}
    responses = [text for s in sample_sets for text in s.responses]
    flat_golds = [golds[s.question_id] for s in sample_sets for _ in s.responses]
    grades, stats = grade_with_stats(responses, flat_golds, kind, timeout=timeout, workers=workers,
                                     verify_steps=verify_steps)
    graded, start = [], 0
    for s in sample_sets:
        mine = grades[start : start + len(s.responses)]
        start += len(s.responses)
        graded.append(
            GradedSet(
                **{f.name: getattr(s, f.name) for f in fields(SampleSet)},
                gold=golds[s.question_id],
                answers=[g.answer for g in mine],
                keys=[g.key for g in mine],
                correct=[g.correct for g in mine],
                step_rejected=[g.step_rejected for g in mine] if verify_steps else [],
            )
        )
    stats["questions"] = len(graded)
    return graded, stats

