"""east.backbone.competence: B1/B2 of docs/testbed.md measured on the shipped backbone, small sizes."""

import json

import pytest

from east.backbone.competence import competence, main
from east.config import load_config


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
