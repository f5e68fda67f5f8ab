"""Evaluation metrics against hand-computed values."""

from math import comb

import pytest

from east.evaluation import majority_correct, pass_at_k, summarise_rows
from east.records import NO_ANSWER


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - comb(3, 2) / comb(5, 2))  # 0.7
    assert pass_at_k(3, 1, 3) == 1.0


def test_pass_at_k_needs_enough_samples():
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_majority_ignores_no_answer_and_breaks_ties_by_first_seen():
    keys = [NO_ANSWER, NO_ANSWER, NO_ANSWER, "4", "5", "5"]
    assert majority_correct(keys, [False, False, False, False, True, True]) is True
    assert majority_correct(["4", "5"], [True, False]) is True
    assert majority_correct([NO_ANSWER], [False]) is False


def test_summary_breaks_down_by_level():
    rows = [{"correct": True, "status": "ok", "num_tokens": 3, "level": "Level 1"},
            {"correct": False, "status": "no_answer", "num_tokens": 5, "level": "Level 1"},
            {"correct": True, "status": "ok", "num_tokens": 4, "level": "Level 2"}]
    summary = summarise_rows(rows)
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["no_answer"] == 1
    assert summary["accuracy_by_level"] == {"Level 1": 0.5, "Level 2": 1.0}


def test_evaluate_reports_greedy_maj_and_pass_from_samples():
    from east.evaluation import evaluate
    from east.records import Question
    from east.sampling import Generation

    questions = [Question("q1", "?", "4", meta={"level": "Level 1"}), Question("q2", "?", "7", meta={"level": "Level 2"})]
    answers = {  # (greedy, samples) per prompt
        "p1": ("\\boxed{4}", ["\\boxed{4}", "\\boxed{5}", "\\boxed{4}", "no idea"]),
        "p2": ("\\boxed{6}", ["\\boxed{6}", "\\boxed{6}", "\\boxed{7}", "\\boxed{6}"]),
    }

    def generate(prompts, n, temperature, seed):
        texts = [[answers[p][0]] if temperature == 0 else answers[p][1] for p in prompts]
        return [Generation(t, [3] * len(t), [True] * len(t)) for t in texts]

    rows, summary = evaluate(questions, ["p1", "p2"], generate, kind="arith", k=4)
    assert [r["correct"] for r in rows] == [True, False]
    assert summary["accuracy"] == 0.5
    assert summary["accuracy_by_level"] == {"Level 1": 1.0, "Level 2": 0.0}
    assert rows[0]["maj@4"] is True and rows[1]["maj@4"] is False
    assert summary["pass@4"] == 1.0  # each question has a correct sample among its 4
    assert summary["sample_accuracy"] == pytest.approx((2 / 4 + 1 / 4) / 2)


def test_gsm8k_reports_strict_and_flexible_accuracy():
    from east.evaluation import evaluate
    from east.records import Question
    from east.sampling import Generation

    questions = [Question("q1", "?", "12"), Question("q2", "?", "5")]
    texts = {"p1": "3*4=12, so the answer is 12", "p2": "I think it is 5"}  # only q1 has a strict answer

    def generate(prompts, n, temperature, seed):
        return [Generation([texts[p]], [3], [True]) for p in prompts]

    _, summary = evaluate(questions, ["p1", "p2"], generate, kind="gsm8k")
    assert summary["accuracy"] == 0.5
    assert summary["accuracy_flexible"] == 1.0
    assert summary["no_answer"] == 1 and summary["timeout"] == 0
