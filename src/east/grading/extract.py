"""Final-answer extraction from a model response, and gold extraction from dataset solutions.

    from east.grading.extract import extract_answer
    extract_answer("... so she has 14 figs. \\boxed{14}")          # "14"
    extract_answer("She pays $1,200 in total.", mode="flexible")  # "1,200"

Strict mode (what grading and clustering use) looks, in order of precedence, for
1. `\\boxed{...}` / `\\fbox{...}` (braces matched, so `\\boxed{\\frac{1}{2}}` is whole): the last box, or,
   when the last boxes follow each other with only separators between them (`\\boxed{3} and
   \\boxed{5}`, `$\\boxed{3}$, $\\boxed{5}$`), all of them joined as "3, 5" (a multi-value answer;
   repeated equal boxes count once). A response with a box is judged by its boxes alone: an empty or
   cut final box is no answer, never a fall-back to the text before it;
2. the last "the answer is X";
3. the last "#### X" (GSM8K's own format) where X starts like a number (`-`, `$`, a digit): a
   markdown heading such as `#### Step 2: add` is not an answer;
4. a final line that starts with an answer marker: `Answer: X`, `Final Answer: X`, `A: X`, in any
   case, with markdown bold or a heading allowed (`**Final Answer:** X`, `### Final Answer: X`); or a
   marker line without the answer (`**Final Answer**`) followed by one last line that holds it.
   Only the last non-empty line counts, so a few-shot "A:" earlier in the text never does.
Flexible mode is lm-eval's GSM8K "flexible-extract": the last number anywhere in the text (a Unicode
minus sign counts as a minus, and "10 000" with a space or thin space between groups of three digits
is one number). Both are reported for GSM8K; only strict answers form clusters, since a last number
is often just the last number of the reasoning.

The returned answer is trimmed (spaces, `$...$`, `\\(...\\)`, markdown `**`, a final period) but not
normalised: `east.grading.grade.cluster_key` does that. None means the response has no answer.
"""

from __future__ import annotations

import re
from typing import Literal

_BOXED_MACROS = ("\\boxed", "\\fbox")
# "The answer is X", "the final answer is: X", case-insensitive; X runs to the end of its line.
_ANSWER_IS = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)
# GSM8K's "#### 42"; "#### Step 2" is a markdown heading, not an answer.
_HASHES = re.compile(r"####(?=[ \t]*(?:\*\*)?[ \t]*[-+\u2212$\\\d.])")
# A line that starts with an answer marker: "Answer:", "**Final Answer:**", "### Final answer:", "A:".
_MARKER = re.compile(
    r"^(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*(?P<word>final[ \t]+answer|answer|a)[ \t]*(?:\*\*|__)?[ \t]*"
    r"(?P<colon>:)?[ \t]*(?:\*\*|__)?",
    re.IGNORECASE,
)
# Text between two boxes of one multi-value answer: spaces, `$`, commas, "and", "or", `\quad`, ...
_BOX_SEPARATOR = re.compile(r"(?:\s|\$|,|;|&|\band\b|\bor\b|\\q?quad\b|\\[,;:! ]|\\text\{\s*(?:and|or|,)?\s*\})*")
# Where a sentence after the answer starts: ". Next", "; so", " because", " since".
_SENTENCE_END = re.compile(r"(?:\.\s|;\s|,\s+(?:since|because|which|so)\b|\s+(?:because|since)\b)")
# A number as lm-eval's flexible extraction finds it, plus a Unicode minus (U+2212) and groups of three
# digits after a space, no-break space or thin space ("10 000"), which would otherwise read as "000".
_LAST_NUMBER = re.compile(
    r"[-\u2212]?\$?(?:\d{1,3}(?:,\d{3})+|\d{1,3}(?:[ \u00a0\u2009\u202f]\d{3}(?!\d))+|\d+)(?:\.\d+)?"
)
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
    return box_at(text, start)[0]


def box_at(text: str, start: int) -> tuple[str | None, int]:
    """(content, end) of the box macro at `start`: content None if it is empty or never closed; `end`
    is the index just past the box."""
    i = start + 1  # past the backslash, then past the macro name
    while i < len(text) and text[i].isalpha():
        i += 1
    # `\boxed 5` (no braces) is valid TeX: the argument is one token.
    j = i
    while j < len(text) and text[j] in " \t":
        j += 1
    if j < len(text) and text[j] == "{":
        close = closing_brace(text, j)
        content, end = (text[j + 1 : close].strip(), close + 1) if close >= 0 else ("", len(text))
    elif j > i:
        token = re.match(r"[^\s$]+", text[j:])
        content = token.group(0) if token else ""
        end = j + len(content)
    else:
        content, end = "", i
    return content or None, end


def final_boxes(text: str) -> str | None:
    """The boxed answer: the last box, or the last run of boxes with only separators between them
    joined as "3, 5" (equal ones once); None if the last box is empty or cut."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    content, _ = box_at(text, start)
    if content is None:
        return None
    contents = [content]
    while (before := max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))) >= 0:
        previous, end = box_at(text, before)
        # A box inside the previous one (`\\boxed{\\boxed{5}}`), or words between them: the run ends.
        if previous is None or end > start or not _BOX_SEPARATOR.fullmatch(text, end, start):
            break
        contents.append(previous)
        start = before
    if len(contents) == 1:  # the usual case: one final box
        return trim_answer(content) or None
    distinct = [trim_answer(c) for c in dict.fromkeys(reversed(contents))]
    return ", ".join(c for c in distinct if c) or None


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
    return answer_in(text[last.end() : line_end if line_end >= 0 else len(text)])


def answer_in(tail: str) -> str | None:
    """The answer at the start of `tail`: up to the end of its sentence, trimmed, and for plain
    arithmetic such as "10 - 3 = 7" the result after the last `=`."""
    tail = tail.strip().lstrip("*").strip()
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


def final_line_answer(text: str) -> str | None:
    """X in a last line "Answer: X" / "**Final Answer:** X" / "A: X", or in the line after a last
    marker line that holds no answer ("**Final Answer**" then "X")."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    marker = _MARKER.match(lines[-1])
    if marker and marker.group("colon") and lines[-1][marker.end() :].strip():
        return answer_in(lines[-1][marker.end() :])
    if len(lines) >= 2 and bare_marker(lines[-2]) and not _MARKER.match(lines[-1]):
        return answer_in(lines[-1])
    return None


def bare_marker(line: str) -> bool:
    """Whether a line is only an answer marker: "Final Answer:", "**Final Answer**", "### Answer"
    (a bare "A" needs its colon: alone it is just a letter)."""
    marker = _MARKER.match(line)
    if not marker or line[marker.end() :].strip():
        return False
    return bool(marker.group("colon")) or marker.group("word").lower() != "a"


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
        return final_boxes(text)
    return answer_is(text) or after_hashes(text) or final_line_answer(text)


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
