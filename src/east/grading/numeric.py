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

Rules a user could be surprised by, each chosen so that no wrong answer becomes right:
- a scale word multiplies: "2.5 million" is 2500000 and "18 million" is not 18 (hundred, thousand,
  million, billion, trillion, dozen; two scale words are not a plain number). Other words after a
  number are units and dropped ("18 dollars" is 18) where unit words are allowed;
- the percent sign is notation, not a factor: "50%" is 50, never 0.5, whatever the gold;
- a Unicode minus (U+2212) is a minus; thousands may be grouped by commas or by single spaces,
  no-break or thin spaces ("10 000"), never mixed;
- a base subscript (`52_8`, `1011_{2}`) makes the answer a numeral in that base (`base_numeral`):
  it is not a plain number here, and grading compares its digits and base, not its value.
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
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-"})
# A scale word right after a number, also inside a text wrapper: `2.5 million`, `3\text{ thousand}`.
_SCALE = re.compile(
    r"(?<=[\d.}])(?:\s|~|\\[,;:! ])*(?:\\(?:text|textrm|mathrm|mbox)\s*\{\s*)?"
    r"(?P<word>hundred|thousand|million|billion|trillion|dozen)s?\b",
    re.IGNORECASE,
)
SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12, "dozen": 12}
# Any scale word, or a fraction word ("5 hundredths" is 0.05, not 5 with a unit).
_ANY_SCALE_WORD = re.compile(
    r"\b(?:hundred|thousand|million|billion|trillion|dozen|tenth|hundredth|thousandth|millionth)s?\b", re.IGNORECASE
)
_EMPTY_WRAPPER = re.compile(r"\\(?:text|textrm|mathrm|mbox)\s*\{\s*\}")
# "x = 18", "total = 18": a name assigned the answer (only one `=`).
_ASSIGNMENT = re.compile(r"^\s*[A-Za-z][A-Za-z_]*\s*=\s*(?=[^=]+$)")
# A numeral with a base subscript: `52_8`, `1011_{2}`, `(A3)_{16}`; the digits include a decimal digit.
_BASE_NUMERAL = re.compile(r"\(?([0-9A-Za-z]*[0-9][0-9A-Za-z]*)\)?\s*_\s*(?:\{\s*\(?\s*(\d+)\s*\)?\s*\}|(\d))")
_PLAIN_DIGITS = re.compile(r"[0-9A-Za-z]*[0-9][0-9A-Za-z]*")
_TRAILING_PERCENT = re.compile(r"\s*(?:\\?%|\\text\{\s*\\?%\s*\})\s*$")

_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)"
_GROUPED = r"\d{1,3}(?:(?:,\d{3})+|(?:[ \u00a0\u2009\u202f]\d{3})+)(?:\.\d+)?"
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
    s = text.strip().translate(_MINUS_SIGNS)
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
    value = Fraction(re.sub(r"[, \u00a0\u2009\u202f]", "", digits))
    return -value if sign == "-" else value


def _sign_product(*signs: str) -> str:
    return "-" if sum(sign == "-" for sign in signs) % 2 else "+"


def parse_number(text: str | None, unit_words: bool = True) -> Fraction | None:
    """The exact value of an answer that is a plain number, a simple fraction or a LaTeX fraction;
    None for anything else (expressions, tuples, intervals, text, a zero denominator)."""
    if text is None or len(text) > 400:  # a long answer is not a plain number; bounds regex work
        return None
    text, scale = split_scale(text)
    if scale == 0:
        return None
    value = parse_plain_number(text, unit_words)
    return value * scale if value is not None else None


def split_scale(text: str) -> tuple[str, int]:
    """The answer without its scale word, and the factor: ("2.5 ", 1000000) for "2.5 million",
    (text, 1) without one, (text, 0) when a scale word is not right after the number ("18 per
    million") or there are two ("a million million"): then the answer is not a plain number."""
    words = _ANY_SCALE_WORD.findall(text)
    if not words:
        return text, 1
    found = _SCALE.search(text)
    if len(words) > 1 or found is None:
        return text, 0
    rest = text[: found.start("word")] + text[found.end() :]
    return _EMPTY_WRAPPER.sub("", rest), SCALES[found.group("word").lower()]


def parse_plain_number(text: str, unit_words: bool = True) -> Fraction | None:
    """`parse_number` without scale words."""
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


def without_assignment(text: str) -> str | None:
    """"18" for "x = 18" or "total = 18"; None when the answer is not a name assigned a value."""
    found = _ASSIGNMENT.match(text)
    return text[found.end() :] if found else None


def strip_percent(text: str) -> str:
    """The answer without a trailing percent sign (`15\\%` -> `15`): the sign is notation, not a factor."""
    return _TRAILING_PERCENT.sub("", text) or text


def base_numeral(text: str) -> tuple[str, int] | None:
    """(digits, base) of a numeral written with a base subscript, digits upper-case without leading
    zeros: ("52", 8) for `52_8` or `$52_{8}$`; None if the answer is not one (`x_1`, `52`, `9_8`)."""
    found = _BASE_NUMERAL.fullmatch(_DOLLARS.sub("", unwrap(text.strip())).strip())
    if not found:
        return None
    digits, base = found.group(1).upper(), int(found.group(2) or found.group(3))
    if not 2 <= base <= 36:
        return None
    try:
        int(digits, base)
    except ValueError:  # a digit the base does not have: not a numeral in that base
        return None
    return digits.lstrip("0") or "0", base


def plain_digits(text: str) -> str | None:
    """The digits of an answer written as a bare digit string (`52`, `$52$`), upper-case without
    leading zeros, for comparison with a numeral whose base the question gave; None otherwise."""
    s = _DOLLARS.sub("", unwrap(text.strip())).strip()
    return (s.upper().lstrip("0") or "0") if _PLAIN_DIGITS.fullmatch(s) else None


def number_key(value: Fraction) -> str:
    """The canonical string of a number: `42`, `-3/4` (so 0.5, 1/2 and \\frac{1}{2} share `1/2`)."""
    return str(value)


def is_exact_literal(text: str) -> bool:
    """Whether an answer is written without a decimal point, so equality with it is exact in any
    grader (a decimal such as 0.333333 may be a rounding of 1/3, which math-verify accepts)."""
    return "." not in strip_answer_dressing(text, unit_words=False)
