"""Number normalisation: turn an extracted answer string into an exact `fractions.Fraction`, or say
it is not a plain number.

    from east.grading.numeric import parse_number, number_key
    parse_number("$1,234.00")        # Fraction(1234, 1)
    parse_number("\\dfrac{3}{4}")    # Fraction(3, 4)
    number_key(Fraction(1, 2))       # "1/2"

This is the fast path of grading: most sampled answers (all of arith and GSM8K, many of MATH) are
numbers, and comparing two Fractions is exact and costs microseconds, where math-verify costs about
a millisecond and needs a process pool. Nothing here evaluates the string: it is matched against a
small grammar (integer, decimal, thousands-grouped, `a/b`, `\\frac{a}{b}`) and converted with
`int()` / `Fraction()` on the matched digits only.
"""

from __future__ import annotations

import re
from fractions import Fraction

from east.grading.extract import closing_brace

# Wrappers whose content is the answer: `\text{12}`, `\textbf{12}`, `\mathrm{12}`, `\mbox{12}`.
_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|boxed)\s*\{")
# Trailing unit in a text wrapper: `5\text{ cm}`, `12 \mbox{dollars}`, `3\,\mathrm{kg}`.
_TEXT_UNIT = re.compile(r"\s*\\(?:text|textrm|mathrm|mbox)\s*\{\s*[A-Za-z][A-Za-z .\-/]*\}\s*$")
# Trailing plain unit words after whitespace: `18 dollars`, `7 hours per week` (arith / GSM8K only).
# A single letter needs a space before it, so `2x` stays an expression.
_WORD_UNITS = re.compile(r"(?<=[\d.])(?:\s+[A-Za-z]+\.?|[A-Za-z]{2,}\.?)(?:\s+[A-Za-z]+\.?)*\s*$")
# Spacing macros and thousands braces that LaTeX writers put inside numbers: `1\,000`, `1{,}000`.
_LATEX_SPACING = re.compile(r"\\[,!;: ]|~")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_PERCENT = re.compile(r"\\?%$")
_DOLLARS = re.compile(r"\\?\$")

_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)"
_GROUPED = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?"
_REAL = re.compile(rf"([+-]?)\s*({_GROUPED}|{_DECIMAL})")
_SLASH = re.compile(rf"([+-]?)\s*({_DECIMAL})\s*/\s*([+-]?)\s*({_DECIMAL})")
# \frac{a}{b}, \dfrac12, \tfrac{1}2 ... with an optional sign before the macro or inside the braces.
_FRAC = re.compile(
    rf"([+-]?)\\[dt]?frac\s*(?:\{{\s*([+-]?)\s*({_DECIMAL})\s*\}}|(\d))\s*(?:\{{\s*([+-]?)\s*({_DECIMAL})\s*\}}|(\d))"
)


def strip_answer_dressing(text: str, unit_words: bool = True) -> str:
    """The answer with what does not change its value removed: `$`, `\\text{}` wrappers, spacing
    macros, a leading `+`, a trailing `%` / degree sign / period, and units after the number.

    `unit_words` also strips bare words after a number (`18 dollars`); MATH answers keep them off so
    that an expression such as `2 x` is never read as the number 2.
    """
    s = text.strip()
    for _ in range(4):  # nested dressing: `$\text{\$12}$`, `\text{12} \text{cm}`
        before = s
        s = _DOLLARS.sub("", s).strip()
        s = unwrap(s)
        s = _LATEX_SPACING.sub("", s).replace("{,}", ",")
        s = _DEGREES.sub("", s)
        s = _TEXT_UNIT.sub("", s).strip()
        if s == before:
            break
    if unit_words:
        s = _WORD_UNITS.sub("", s)
    s = s.strip().rstrip(".").strip()
    s = _PERCENT.sub("", s).strip()
    return s


def unwrap(s: str) -> str:
    """The content of `{...}` or `\\text{...}` (and similar) when that group spans the whole string."""
    if s.startswith("{") and closing_brace(s, 0) == len(s) - 1:  # a bare group: `{18}`
        return s[1:-1].strip()
    wrapped = _WRAPPER.match(s)
    if wrapped and s.endswith("}") and closing_brace(s, wrapped.end() - 1) == len(s) - 1:
        return s[wrapped.end() : -1].strip()
    return s


def _decimal(sign: str, digits: str) -> Fraction:
    """The exact value of a sign and a digit string (thousands commas allowed)."""
    value = Fraction(digits.replace(",", ""))
    return -value if sign == "-" else value


def _sign_product(*signs: str) -> str:
    return "-" if sum(sign == "-" for sign in signs) % 2 else "+"


def parse_number(text: str | None, unit_words: bool = True) -> Fraction | None:
    """The exact value of an answer that is a plain number, a simple fraction or a LaTeX fraction;
    None for anything else (expressions, tuples, intervals, text, a zero denominator)."""
    if text is None or len(text) > 400:  # a long answer is not a plain number; bounds regex work
        return None
    s = strip_answer_dressing(text, unit_words)
    if not s or len(s) > 200:
        return None
    try:
        if m := _REAL.fullmatch(s):
            return _decimal(m.group(1), m.group(2))
        if m := _SLASH.fullmatch(s):
            numerator, denominator = Fraction(m.group(2)), Fraction(m.group(4))
            sign = _sign_product(m.group(1), m.group(3))
        elif m := _FRAC.fullmatch(s):
            numerator = Fraction(m.group(3) or m.group(4))
            denominator = Fraction(m.group(6) or m.group(7))
            sign = _sign_product(m.group(1), m.group(2) or "", m.group(5) or "")
        else:
            return None
    except ValueError:  # e.g. an integer string over Python's digit limit
        return None
    if denominator == 0:
        return None
    value = numerator / denominator
    return -value if sign == "-" else value


def number_key(value: Fraction) -> str:
    """The canonical string of a number: `42`, `-3/4` (so 0.5, 1/2 and \\frac{1}{2} share `1/2`)."""
    return str(value)


def is_exact_literal(text: str) -> bool:
    """Whether an answer is written without a decimal point, so equality with it is exact in any
    grader (a decimal such as 0.333333 may be a rounding of 1/3, which math-verify accepts)."""
    return "." not in strip_answer_dressing(text, unit_words=False)
