"""Answer extraction rules (strict and flexible) and gold extraction from dataset solutions."""

from __future__ import annotations

import pytest

from east.grading import extract_answer, gold_from_gsm8k_answer, gold_from_math_solution
from east.grading.extract import closing_brace, last_boxed, trim_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{\\frac{a}{\\sqrt{b}}}", "\\frac{a}{\\sqrt{b}}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{1} then \\fbox{3}", "3"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right."),  # escaped braces do not count
        ("\\boxed {7}", "7"),
        ("$\\boxed 7$", "7"),
        ("\\boxed{}", None),
        ("\\boxed{1} and then \\boxed{2", None),  # final box cut off: no answer
        ("no box", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_closing_brace():
    assert closing_brace("{a{b}c}", 0) == 6
    assert closing_brace("{a{b}c", 0) == -1
    assert closing_brace("{\\}}", 0) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" $12$. ", "12"),
        ("**12**", "12"),
        ("\\(x+1\\)", "x+1"),
        ("$$\\frac{1}{2}$$", "\\frac{1}{2}"),
        ("3.5.", "3.5"),
    ],
)
def test_trim_answer(text, expected):
    assert trim_answer(text) == expected


def test_strict_order_box_then_answer_is_then_hashes():
    assert extract_answer("The answer is 3.\n#### 4\n\\boxed{5}") == "5"
    assert extract_answer("#### 4\nThe answer is 3.") == "3"
    assert extract_answer("blah\n#### 4") == "4"
    assert extract_answer("I get 4 in the end") is None


def test_a_cut_final_box_does_not_fall_back_to_earlier_text():
    assert extract_answer("The answer is 3, so \\boxed{3") is None


def test_answer_is_stops_at_the_end_of_its_sentence():
    assert extract_answer("The answer is 7 apples. Then we rest.") == "7 apples"
    assert extract_answer("The answer is $\\frac{1}{2}$ since halves.") == "\\frac{1}{2}"
    assert extract_answer("So the answer is 5, because 2+3=5.") == "5"


def test_flexible_mode_takes_the_last_number():
    assert extract_answer("pay $1,200 then 3.5 more", mode="flexible") == "3.5"
    assert extract_answer("owes -$40", mode="flexible") == "-$40"
    assert extract_answer("nothing here", mode="flexible") is None
    with pytest.raises(ValueError):
        extract_answer("x", mode="loose")  # type: ignore[arg-type]


def test_gold_from_math_solution_takes_the_last_brace_matched_box():
    solution = "First $\\boxed{2}$ is wrong. So the result is $\\boxed{\\frac{\\sqrt{3}}{2}}$."
    assert gold_from_math_solution(solution) == "\\frac{\\sqrt{3}}{2}"
    assert gold_from_math_solution("We get $\\fbox{\\text{(B)}}$") == "\\text{(B)}"
    with pytest.raises(ValueError):
        gold_from_math_solution("no boxed answer")


def test_gold_from_gsm8k_answer():
    assert gold_from_gsm8k_answer("She has 3+4=7 plums.\n#### 7") == "7"
    assert gold_from_gsm8k_answer("Total 1000+200.\n#### 1,200") == "1200"
    assert gold_from_gsm8k_answer("Owes.\n#### -12 ") == "-12"
    with pytest.raises(ValueError):
        gold_from_gsm8k_answer("no marker")


def test_answer_is_keeps_the_result_of_plain_arithmetic_but_not_equations():
    assert extract_answer("The answer is 100 / 4 = 25.") == "25"
    assert extract_answer("The answer is $x^2 + y^2 = 1$.") == "x^2 + y^2 = 1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Each crate holds 6, so 3 crates hold 18.\nAnswer: 18", "18"),
        ("3 crates of 6 make 18.\nFinal Answer: 18", "18"),
        ("3 crates of 6 make 18.\nfinal answer: 18 crates", "18 crates"),
        ("3 crates of 6 make 18.\n\n**Final Answer:** 18", "18"),
        ("3 crates of 6 make 18.\n**Final Answer**: $18$", "18"),
        ("3 crates of 6 make 18.\n### Final Answer: 18", "18"),
        ("Q: How many?\nA: 26", "26"),
        ("3 crates of 6 make 18.\n**Final Answer**\n18", "18"),
        ("3 crates of 6 make 18.\nFinal Answer:\n$18$", "18"),
        ("3 crates of 6 make 18.\nAnswer: x = 18", "x = 18"),
    ],
)
def test_a_final_marker_line_is_an_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Answer: 18\nThen we also check the 20 crates.",  # the marker is not on the last line
        "Q: How many?\nA: 26\nQ: And then?",
        "All: 26",  # a word that starts with A is not "A:"
        "3 crates.\nAnswer:",  # a marker with nothing after it
        "3 crates.\nA\n26",  # a bare "A" line is a letter, not a marker
        "#### Step 2: add the crates\nSo 18 crates.",  # a markdown heading is not GSM8K's "####"
    ],
)
def test_marker_lookalikes_are_no_answer(text):
    assert extract_answer(text) is None


def test_hashes_take_a_bold_number_but_not_a_heading():
    assert extract_answer("so 18.\n#### **18**") == "18"
    assert extract_answer("#### **Step 2**\nso 18.") is None


def test_precedence_box_then_answer_is_then_hashes_then_final_line():
    assert extract_answer("The answer is 3.\nAnswer: 4") == "3"
    assert extract_answer("#### 3\nAnswer: 4") == "3"
    assert extract_answer("\\boxed{5}\nAnswer: 4") == "5"
    assert extract_answer("We get 4.\nAnswer: 4") == "4"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The roots are \\boxed{3} and \\boxed{5}.", "3, 5"),
        ("The roots are $\\boxed{3}$, $\\boxed{5}$.", "3, 5"),
        ("$x = \\boxed{-2}$ or $x = \\boxed{4}$", "4"),  # words between the boxes: the last box
        ("\\boxed{3} \\quad \\boxed{5} \\text{ and } \\boxed{7}", "3, 5, 7"),
        ("So \\boxed{12} \\boxed{12}", "12"),  # a repeated box is one answer
        ("First \\boxed{30} apples, then \\boxed{18}.", "18"),
        ("\\boxed{3} and \\boxed{5", None),  # the last box is cut: no answer
        ("\\boxed{3} and \\boxed{}", None),
    ],
)
def test_boxes_side_by_side_are_one_multi_value_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the change is \u22127 degrees", "\u22127"),
        ("the town has 10 000 people", "10 000"),
        ("the town has 10\u202f000 people", "10\u202f000"),
        ("in 2023 100 people came", "100"),  # a four-digit number does not start a group
    ],
)
def test_flexible_mode_reads_unicode_minus_and_spaced_thousands(text, expected):
    assert extract_answer(text, mode="flexible") == expected
