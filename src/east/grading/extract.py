"""Final-answer extraction from a model response, and gold extraction from dataset solutions.

    from east.grading.extract import extract_answer
    extract_answer("... so she has 14 figs. \\boxed{14}")          # "14"
    extract_answer("She pays $1,200 in total.", mode="flexible")  # "1,200"

Strict mode (what grading and clustering use) looks, in order, for
1. the last `\\boxed{...}` / `\\fbox{...}` (braces matched, so `\\boxed{\\frac{1}{2}}` is whole);
2. the last "the answer is X";
3. the last "#### X" (GSM8K's own format).
Flexible mode is lm-eval's GSM8K "flexible-extract": the last number anywhere in the text. Both are
reported for GSM8K; only strict answers form clusters, since a last number is often just the last
number of the reasoning.

The returned answer is trimmed (spaces, `$...$`, `\\(...\\)`, markdown `**`, a final period) but not
normalised: `east.grading.grade.cluster_key` does that. None means the response has no answer.
"""

from __future__ import annotations

import re
from typing import Literal

_BOXED_MACROS = ("\\boxed", "\\fbox")
# "The answer is X", "the final answer is: X", case-insensitive; X runs to the end of its line.
_ANSWER_IS = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)
_HASHES = re.compile(r"####")
# Where a sentence after the answer starts: ". Next", "; so", " because", " since".
_SENTENCE_END = re.compile(r"(?:\.\s|;\s|,\s+(?:since|because|which|so)\b|\s+(?:because|since)\b)")
_LAST_NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
# "the answer is 10 - 3 = 7": plain arithmetic before the last `=` is working, the result is the answer.
_ARITHMETIC = re.compile(r"[\d\s.,+\-*/×÷()$]+")
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))

Mode = Literal["strict", "flexible"]


def closing_brace(text: str, open_index: int) -> int:
    """Index of the `}` matching the `{` at `open_index`, or -1 if it is never closed.
    Escaped braces (`\\{`, `\\}`) are skipped: they are set delimiters, not groups."""
    depth = 0
    i = open_index
    n = len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}`; None if there is none, or if the last one
    is empty or never closed (a response cut inside its final answer has no answer: an earlier box is
    usually an intermediate result)."""
    start = max(text.rfind(macro) for macro in _BOXED_MACROS)
    if start < 0:
        return None
    i = start + 1  # past the backslash, then past the macro name
    while i < len(text) and text[i].isalpha():
        i += 1
    # `\boxed 5` (no braces) is valid TeX: the argument is one token.
    j = i
    while j < len(text) and text[j] in " \t":
        j += 1
    if j < len(text) and text[j] == "{":
        end = closing_brace(text, j)
        content = text[j + 1 : end].strip() if end >= 0 else ""
    elif j > i:
        token = re.match(r"[^\s$]+", text[j:])
        content = token.group(0) if token else ""
    else:
        content = ""
    return content or None


def trim_answer(text: str) -> str:
    """The answer without surrounding spaces, markdown bold, math delimiters or a final period."""
    s = text.strip()
    changed = True
    while changed and s:
        changed = False
        if s != s.strip("*").strip():
            s = s.strip("*").strip()
            changed = True
        for left, right in _MATH_DELIMITERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
                changed = True
                break
        if s.endswith(".") and not s.endswith("\\."):
            s = s[:-1].rstrip()
            changed = True
    return s


def _first_math_span(text: str) -> str:
    """When a sentence starts with `$...$`, that span is the answer (the rest is prose)."""
    if text.startswith("$$"):
        end = text.find("$$", 2)
        return text[: end + 2] if end > 0 else text
    if text.startswith("$"):
        end = text.find("$", 1)
        return text[: end + 1] if end > 0 else text
    return text


def _answer_after(pattern: re.Pattern[str], text: str) -> str | None:
    """The text after the last match of `pattern`, up to the end of its sentence, trimmed."""
    last = None
    for last in pattern.finditer(text):
        pass
    if last is None:
        return None
    line_end = text.find("\n", last.end())
    tail = text[last.end() : line_end if line_end >= 0 else len(text)].strip().lstrip("*").strip()
    tail = _first_math_span(tail)
    end = _SENTENCE_END.search(tail)
    if end:
        tail = tail[: end.start()]
    answer = trim_answer(tail)
    working, equals, result = answer.rpartition("=")
    if equals and result.strip() and _ARITHMETIC.fullmatch(working):
        answer = trim_answer(result)
    return answer or None


def answer_is(text: str) -> str | None:
    """X in the last "the answer is X"."""
    return _answer_after(_ANSWER_IS, text)


def after_hashes(text: str) -> str | None:
    """X in the last "#### X"."""
    return _answer_after(_HASHES, text)


def last_number(text: str) -> str | None:
    """The last number written in the text (lm-eval's GSM8K flexible extraction)."""
    last = None
    for last in _LAST_NUMBER.finditer(text):
        pass
    return last.group(0) if last else None


def extract_answer(text: str, mode: Mode = "strict") -> str | None:
    """The final answer of a response (see the module docstring for the rules), or None."""
    if mode == "flexible":
        return last_number(text)
    if mode != "strict":
        raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")
    if any(macro in text for macro in _BOXED_MACROS):
        # A response that boxes answers is judged by its last box alone: a truncated or empty final
        # box must not fall back to an earlier "the answer is" that the box was correcting.
        boxed = last_boxed(text)
        return trim_answer(boxed) or None if boxed is not None else None
    return answer_is(text) or after_hashes(text)


def gold_from_math_solution(solution: str) -> str:
    """The gold answer of a MATH solution: the content of its last `\\boxed{}` (or `\\fbox{}`)."""
    gold = last_boxed(solution)
    if gold is None:
        raise ValueError(f"no \\boxed{{}} answer in MATH solution: {solution[-200:]!r}")
    return gold


def gold_from_gsm8k_answer(answer: str) -> str:
    """The gold answer of a GSM8K answer field: the number after its last `####`, commas removed."""
    if "####" not in answer:
        raise ValueError(f"no '####' answer in GSM8K answer: {answer[-200:]!r}")
    gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise ValueError(f"empty '####' answer in GSM8K answer: {answer[-200:]!r}")
    return gold
