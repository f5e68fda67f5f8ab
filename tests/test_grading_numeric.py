"""Number normalisation: examples plus hypothesis properties (format a number the ways people and
models write it, parse it back exactly)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from east.grading import cluster_key, extract_answer
from east.grading.numeric import number_key, parse_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", Fraction(1234)),
        ("-1,234.50", Fraction(-2469, 2)),
        ("\\$5", Fraction(5)),
        ("+3", Fraction(3)),
        ("7.00", Fraction(7)),
        ("40\\%", Fraction(40)),
        ("90^\\circ", Fraction(90)),
        ("\\frac{-3}{4}", Fraction(-3, 4)),
        ("-\\frac{-3}{4}", Fraction(3, 4)),
        ("\\tfrac{1}{8}", Fraction(1, 8)),
        ("\\dfrac43", Fraction(4, 3)),
        ("3/-6", Fraction(-1, 2)),
        ("{12}", Fraction(12)),
        ("12\\text{ cm}", Fraction(12)),
        ("1\\,000\\,000", Fraction(1000000)),
    ],
)
def test_parse_number_examples(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize("text", ["1/0", "\\frac{1}{0}", "1,2", "12,00", "x", "2x", "1e5", "\\sqrt{4}", "(1,2)", "", "1.2.3"])
def test_not_plain_numbers(text):
    assert parse_number(text) is None


def test_unit_words_only_where_allowed():
    assert parse_number("18 dollars") == 18
    assert parse_number("18 dollars", unit_words=False) is None


def test_huge_digit_strings_do_not_raise():
    assert parse_number("9" * 5000) is None  # over the length guard
    assert parse_number("1" * 150) == int("1" * 150)


def with_commas(n: int) -> str:
    return f"{n:,}"


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=-(10**12), max_value=10**12),
    commas=st.booleans(),
    dollar=st.sampled_from(["", "$", "\\$"]),
    plus=st.booleans(),
    zeros=st.sampled_from(["", ".0", ".00"]),
    unit=st.sampled_from(["", " dollars", " apples per day", "\\text{ cm}", "\\%"]),
    wrap=st.sampled_from(["{}", " {} ", "${}$", "\\text{{{}}}", "{{{}}}"]),
)
def test_formatted_integers_parse_back(n, commas, dollar, plus, zeros, unit, wrap):
    digits = with_commas(abs(n)) if commas else str(abs(n))
    sign = "-" if n < 0 else ("+" if plus else "")
    text = wrap.format(f"{sign}{dollar}{digits}{zeros}{unit}")
    assert parse_number(text) == n
    assert cluster_key(text, "gsm8k") == str(n)


@settings(max_examples=200, deadline=None)
@given(p=st.integers(-999, 999), q=st.integers(1, 999))
def test_fraction_spellings_share_one_key(p, q):
    value = Fraction(p, q)
    spellings = [f"{p}/{q}", f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{p}}}{{{q}}}"]
    if p < 0:
        spellings.append(f"-\\frac{{{-p}}}{{{q}}}")
    if 0 <= p < 10 and q < 10:
        spellings.append(f"\\frac{p}{q}")
    if 10**6 % q == 0:  # terminating decimals
        spellings.append(str(float(value)) if value.denominator > 1 else str(value.numerator))
    keys = {cluster_key(s, "math") for s in spellings}
    assert keys == {number_key(value)}


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789.,-+$%/{}\\ abfrcxt\n#*")), max_size=60))
def test_arbitrary_text_never_raises(text):
    parse_number(text)
    for mode in ("strict", "flexible"):
        answer = extract_answer(text, mode=mode)  # type: ignore[arg-type]
        cluster_key(answer, "math")
        cluster_key(answer, "gsm8k")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18 million", 18_000_000),
        ("2.5 million", 2_500_000),
        ("2.5 Million dollars", 2_500_000),
        ("\\$3\\text{ billion}", 3_000_000_000),
        ("1.2 thousand", 1200),
        ("3 dozen eggs", 36),
        ("\u22127", -7),
        ("\u2212\\frac{1}{2}", Fraction(-1, 2)),
        ("10 000", 10000),
        ("10\u2009000", 10000),
        ("1\u00a0234\u00a0567.5", Fraction(2469135, 2)),
    ],
)
def test_scale_words_signs_and_spaced_thousands(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize("text", ["18 per million", "a million million", "5 hundredths", "2 4", "1,000 000", "10  000", "12 34"])
def test_scale_and_grouping_lookalikes_are_not_plain_numbers(text):
    assert parse_number(text) is None


def test_base_numerals_and_assignments():
    from east.grading.numeric import base_numeral, plain_digits, strip_percent, without_assignment

    assert base_numeral("52_8") == base_numeral("$52_{8}$") == ("52", 8)
    assert base_numeral("0011_{2}") == ("11", 2)
    assert base_numeral("(a3)_{16}") == ("A3", 16)
    assert [base_numeral(t) for t in ("x_1", "9_8", "52", "a_{12}", "5_1")] == [None] * 5
    assert plain_digits("$052$") == "52" and plain_digits("52.0") is None
    assert without_assignment("x = 18") == "18" and without_assignment("total = 18") == "18"
    assert without_assignment("x = y = 2") is None and without_assignment("2x = 4") is None
    assert strip_percent("15\\%") == strip_percent("15 %") == "15"
