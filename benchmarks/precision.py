"""Numerics of `precision: bf16`: the built-in backbone's answers in fp32 and in bf16, side by side.

    .venv/bin/python benchmarks/precision.py                       # 1,000 test questions, 8 samples each
    .venv/bin/python benchmarks/precision.py --questions 200 --samples 4

On --questions test questions of the built-in arith task (the testbed's prompts), the shipped backbone
answers greedily and draws --samples samples at temperature 1, once loaded in fp32 and once in bf16
(what `precision: bf16` samples and evaluates with; same seed, same sampler). It prints
- greedy agreement: the share of questions whose greedy completion is the same text in both, and whose
  extracted answer is the same;
- greedy accuracy and mean sampled accuracy in each, and their paired difference (bf16 - fp32) with a
  95% interval over questions (east.paired, one seed: the question-level paired t interval).
The same conclusions in both means the difference's interval covers 0 and is small beside the effects
the testbed measures (docs/testbed.md). Sampled texts differ more than greedy ones by construction: one
rounding flip in a draw changes the rest of the sample, so only the accuracies are compared there.
Nothing here asserts; the seconds each took are printed as well (bf16 is slow on a CPU without native bf16).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from east.backbone import builtin_checkpoint  # noqa: E402
from east.grading import grade_sample_sets  # noqa: E402
from east.models import load_model_and_tokenizer  # noqa: E402
from east.paired import paired_difference  # noqa: E402
from east.precision import cpu_description  # noqa: E402
from east.sampling.hf import sample  # noqa: E402
from east.tasks.arith import make_questions  # noqa: E402
from east.tasks.prompts import render_prompt  # noqa: E402

MAX_NEW_TOKENS = 64  # the testbed's (configs/table1.yaml)


def answers(dtype: str, questions, samples: int, seed: int) -> dict:
    """Greedy texts, answers and verdicts, and per-question sampled accuracy, for the backbone in `dtype`."""
    model, tokenizer = load_model_and_tokenizer(builtin_checkpoint(), dtype=dtype)
    prompts = [render_prompt(tokenizer, q) for q in questions]
    golds = {q.question_id: q.gold for q in questions}
    start = time.process_time()
    greedy = sample(model, tokenizer, prompts, 1, temperature=0, max_new_tokens=MAX_NEW_TOKENS)
    drawn = sample(model, tokenizer, prompts, samples, temperature=1.0, max_new_tokens=MAX_NEW_TOKENS, seed=seed)
    seconds = time.process_time() - start
    graded_greedy, _ = grade_sample_sets([g.to_sample_set(q.question_id, p) for q, p, g in zip(questions, prompts, greedy)],
                                         golds, "arith", workers=1)
    graded_drawn, _ = grade_sample_sets([g.to_sample_set(q.question_id, p) for q, p, g in zip(questions, prompts, drawn)],
                                        golds, "arith", workers=1)
    return {
        "texts": [g.texts[0] for g in greedy],
        "answers": [g.answers[0] for g in graded_greedy],
        "greedy": {g.question_id: float(g.correct[0]) for g in graded_greedy},
        "sampled": {g.question_id: sum(g.correct) / len(g.correct) for g in graded_drawn},
        "seconds": seconds,
    }


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    questions = make_questions("test", args.questions)
    print(f"built-in backbone, {args.questions} arith test questions, greedy + {args.samples} samples at T=1; "
          f"torch {torch.__version__}, {args.threads} thread(s); {cpu_description()}", flush=True)
    found = {name: answers(dtype, questions, args.samples, args.seed)
             for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16"))}
    fp32, bf16 = found["fp32"], found["bf16"]
    same_text = sum(a == b for a, b in zip(fp32["texts"], bf16["texts"])) / len(questions)
    same_answer = sum(a == b for a, b in zip(fp32["answers"], bf16["answers"])) / len(questions)
    print(f"greedy agreement fp32 vs bf16: same completion {percent(same_text)}, same answer {percent(same_answer)}")
    for metric in ("greedy", "sampled"):
        acc = {name: sum(f[metric].values()) / len(questions) for name, f in found.items()}
        diff = paired_difference({0: bf16[metric]}, {0: fp32[metric]})
        print(f"{metric} accuracy: fp32 {percent(acc['fp32'])}, bf16 {percent(acc['bf16'])}; bf16 - fp32 "
              f"{100 * diff['mean']:+.2f} points, 95% CI +/- {100 * diff['ci95']:.2f} ({diff['method']})")
    print(f"CPU seconds (greedy + samples): fp32 {fp32['seconds']:.1f}, bf16 {bf16['seconds']:.1f}")


if __name__ == "__main__":
    main()
