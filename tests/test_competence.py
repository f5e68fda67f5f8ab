"""east.backbone.competence: B1/B2 of docs/testbed.md measured on the shipped backbone, small sizes."""

import json

import pytest

from east.backbone.competence import b2_difference, competence, main
from east.config import load_config
from east.records import GradedSet


def test_shipped_backbone_is_competent_zero_shot_and_not_under_long_prompts(tmp_path):
    # The shipped backbone never saw a few-shot prompt in its warm-up: on 1,000 questions it gives no step-verified
    # correct sample under DAST-L's two-shot prompt (docs/testbed.md), while a third of its zero-shot samples are.
    config = load_config("configs/dast.yaml", ["task.test_size=60"])
    result = competence("builtin", config, b2_questions=24, samples=4)
    assert result["b1_questions"] == 60 and result["b2_questions"] == 24 and result["b2_samples"] == 4
    assert 30 <= result["b1_greedy_accuracy"] <= 70
    assert result["b1_greedy_accuracy_step_verified"] <= result["b1_greedy_accuracy"]
    assert result["b2_zero_shot_share"] >= 15 and result["b2_zero_shot_questions_solved"] >= 5
    assert result["b2_long_prompt_share"] <= 2
    assert result["few_shot_steps"] == [3, 3]  # dast.few_shot = 2 examples, the ones with the most steps
    # With equal samples per question the mean per-question difference is the difference of the shares.
    assert result["b2_difference"] == pytest.approx(result["b2_long_prompt_share"] - result["b2_zero_shot_share"], abs=0.02)
    assert result["b2_difference_ci95"] > 0


def graded_set(qid: str, correct: list[bool]) -> GradedSet:
    n = len(correct)
    return GradedSet(question_id=qid, prompt="p", responses=["r"] * n, num_tokens=[1] * n, finished=[True] * n,
                     correct=correct)


def test_b2_difference_is_paired_by_question_with_a_t_interval():
    # Question a: 2/4 zero-shot, 3/4 long (+25 points); b: 4/4, 2/4 (-50); c: 0/4, 1/4 (+25). Mean 0; the per-question
    # differences' sd is 43.3, so the half-width is t(2) 4.303 x 43.3 / sqrt(3) = 107.6 points.
    zero = [graded_set("a", [1, 1, 0, 0]), graded_set("b", [1, 1, 1, 1]), graded_set("c", [0, 0, 0, 0])]
    long = [graded_set("a", [1, 1, 1, 0]), graded_set("b", [1, 0, 1, 0]), graded_set("c", [0, 0, 1, 0])]
    result = b2_difference(zero, long)
    assert result["b2_difference"] == 0.0
    assert result["b2_difference_ci95"] == pytest.approx(4.303 * 43.30 / 3 ** 0.5, abs=0.1)
    # Unpaired lists are a bug in the caller, not a number.
    with pytest.raises(ValueError):
        b2_difference(zero, long[:2])


def test_command_writes_the_json_and_refuses_a_task_without_worked_examples(tmp_path):
    out = tmp_path / "c.json"
    main(["builtin", "--config", "configs/dast.yaml", "--b2-questions", "4", "--samples", "2", "--out", str(out),
          "task.test_size=8"])
    saved = json.loads(out.read_text())
    assert saved["b1_questions"] == 8 and saved["machine"]["processor"]
    config = load_config("configs/dast.yaml", ["task.name=gsm8k", "task.train_path=x.jsonl", "task.test_path=y.jsonl",
                                                "grading.verify_steps=false"])
    with pytest.raises(ValueError, match="arith"):
        competence("builtin", config)
