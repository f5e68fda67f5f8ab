"""How competent a backbone is before any self-training, on the two criteria docs/testbed.md fixes for DAST-L's
backbone: B1, greedy zero-shot accuracy on a config's test questions (graded as `east run` evaluates them), and B2,
the step-verified share of correct samples on its first training questions under the zero-shot prompt and under
DAST-L's long few-shot prompt (the `dast.few_shot` worked examples with the most steps, as earlier chat turns).

    python -m east.backbone.competence runs/backbone --config configs/dast.yaml --out competence.json
    python -m east.backbone.competence builtin --b2-questions 100 --samples 8      # the shipped backbone

It draws with the configured sampler and grades with the pipeline's graders, in this process, and writes one JSON
object (atomically, when --out is given). Only the arith task has the worked examples DAST-L's prompt needs.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from east.records import GradedSet, Question


def competence(backbone: str | Path, config, *, b2_questions: int = 400, samples: int = 16, seed: int = 0) -> dict[str, Any]:
    """B1 and B2 of the backbone at `backbone` ("builtin": the shipped one) under `config` (a RunConfig)."""
    from east.backbone import builtin_checkpoint
    from east.dast import long_few_shot_examples
    from east.pipeline import backend_for
    from east.tasks.loaders import load_questions
    from east.tasks.prompts import render_prompt

    if config.task.name != "arith":
        raise ValueError("competence needs the arith task: DAST-L's prompt takes its worked examples from its warm-up split")
    path = str(builtin_checkpoint()) if str(backbone) == "builtin" else str(backbone)
    backend = backend_for(config, path)
    loaded = backend.load()
    tokenizer = loaded[1]
    system = config.prompt.system
    start = time.process_time()

    test = load_questions(config.task, "test")
    greedy = graded(backend, loaded, test, [render_prompt(tokenizer, q, system) for q in test], 1, config,
                    temperature=0.0, seed=seed, max_new_tokens=config.evaluation.max_new_tokens)
    train = load_questions(config.task, "train")[:b2_questions]
    shots = long_few_shot_examples([q for q in load_questions(config.task, "warmup") if q.solution],
                                   config.dast.few_shot, seed=0)
    zero = graded(backend, loaded, train, [render_prompt(tokenizer, q, system) for q in train], samples, config,
                  temperature=1.0, seed=seed)
    long = graded(backend, loaded, train, [render_prompt(tokenizer, q, system, shots) for q in train], samples, config,
                  temperature=1.0, seed=seed)
    return {
        "backbone": path,
        "b1_greedy_accuracy": share(greedy, "answer"),
        "b1_greedy_accuracy_step_verified": share(greedy, "steps"),
        "b1_questions": len(test),
        "b2_zero_shot_share": share(zero, "steps"),
        "b2_long_prompt_share": share(long, "steps"),
        **b2_difference(zero, long),
        "b2_zero_shot_questions_solved": solved(zero),
        "b2_long_prompt_questions_solved": solved(long),
        "b2_questions": len(train),
        "b2_samples": samples,
        "few_shot_steps": [q.meta.get("steps") for q in shots],
        "seed": seed,
        "cpu_seconds": round(time.process_time() - start, 1),
        "machine": machine(),
    }


def graded(backend, loaded, questions: list[Question], prompts: list[str], n: int, config, *, temperature: float,
           seed: int, max_new_tokens: int | None = None) -> list[GradedSet]:
    """Each question's samples graded with step verification; a sample right by its final answer alone is one
    that is correct or step-rejected (east.grading), so one grading gives both verdicts."""
    from east.grading import grade_sample_sets

    generations = backend.draw(loaded, prompts, n, seed=seed, temperature=temperature, max_new_tokens=max_new_tokens)
    sets = [g.to_sample_set(q.question_id, p) for q, p, g in zip(questions, prompts, generations)]
    golds = {q.question_id: q.gold for q in questions}
    return grade_sample_sets(sets, golds, config.grading_kind(), timeout=config.grading.timeout, verify_steps=True)[0]


def share(sets: list[GradedSet], verdict: str) -> float:
    """Percentage of all samples judged correct, by final answer ("answer") or with step verification ("steps")."""
    right = sum(c or (verdict == "answer" and r) for g in sets for c, r in zip(g.correct, g.step_rejected))
    return round(100.0 * right / max(sum(len(g.correct) for g in sets), 1), 2)


def b2_difference(zero: list[GradedSet], long: list[GradedSet]) -> dict[str, float | None]:
    """Long-prompt minus zero-shot step-verified share, in points, with the 95% t half-width over questions.

    Each question is one paired unit (its samples under both prompts), so the half-width is how precisely this
    build's B2 difference is measured by these questions and samples: the measurement's own noise, which a verdict
    per build cannot tell from a difference between builds (docs/testbed.md, the 12,000-row measurement)."""
    from east.paired import t_interval

    per_question = [100.0 * (fraction(b) - fraction(a)) for a, b in zip(zero, long, strict=True)]
    interval = t_interval(per_question)
    half = interval["ci95"]
    return {"b2_difference": None if interval["mean"] is None else round(interval["mean"], 2),
            "b2_difference_ci95": None if half is None else round(half, 2)}


def fraction(graded_set: GradedSet) -> float:
    """Share of this question's samples that are step-verified correct."""
    return sum(graded_set.correct) / max(len(graded_set.correct), 1)


def solved(sets: list[GradedSet]) -> int:
    """Questions with at least one step-verified correct sample."""
    return sum(any(g.correct) for g in sets)


def machine() -> dict[str, Any]:
    import torch

    from east.precision import cpu_description

    return {"processor": cpu_description(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> None:
    from east import io
    from east.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backbone", help='a backbone directory, or "builtin" for the shipped one')
    parser.add_argument("--config", default="configs/dast.yaml", help="task, prompt, sampling and dast settings")
    parser.add_argument("--b2-questions", type=int, default=400)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the JSON here (atomically)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. task.test_size=200")
    args = parser.parse_intermixed_args(argv)
    result = competence(args.backbone, load_config(args.config, args.overrides), b2_questions=args.b2_questions,
                        samples=args.samples, seed=args.seed)
    if args.out:
        io.write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
