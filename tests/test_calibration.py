"""The shipped backbone stays calibrated for EAST (issue: greedy test accuracy in [30%, 65%], and at n = 16,
T = 1.0 at least 40% of self-training questions have both correct and incorrect samples)."""

from east.backbone import builtin_checkpoint
from east.grading import grade
from east.models import load_model_and_tokenizer
from east.sampling.hf import sample
from east.tasks.arith import make_questions
from east.tasks.prompts import render_prompt


def test_shipped_backbone_is_in_the_calibration_bands():
    model, tokenizer = load_model_and_tokenizer(str(builtin_checkpoint()))
    test = make_questions("test", 200, seed=0)
    greedy = sample(model, tokenizer, [render_prompt(tokenizer, q) for q in test], 1, temperature=0, max_new_tokens=48)
    accuracy = sum(g.correct for g in grade([x.texts[0] for x in greedy], [q.gold for q in test], "arith")) / len(test)
    assert 0.30 <= accuracy <= 0.65, accuracy

    train = make_questions("train", 60, seed=0)
    sampled = sample(model, tokenizer, [render_prompt(tokenizer, q) for q in train], 16, temperature=1.0,
                     max_new_tokens=48, seed=0)
    mixed = 0
    for q, g in zip(train, sampled):
        verdicts = [v.correct for v in grade(g.texts, [q.gold] * len(g.texts), "arith")]
        mixed += any(verdicts) and not all(verdicts)
    assert mixed / len(train) >= 0.40, mixed / len(train)
