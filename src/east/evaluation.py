"""Evaluation: greedy accuracy on a split, plus maj@k and pass@k from k sampled responses.

    east evaluate configs/demo.yaml --out runs/demo     (or as the last stage of `east run`)

Like lm-evaluation-harness, the per-question rows (prompt, response, extracted answer, verdict) and
the aggregate summary are separate artifacts: `eval-<split>.jsonl` and `eval-<split>.json`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from math import comb
from typing import Any

from east.grading import grade
from east.records import NO_ANSWER, Question

Generate = Callable[[list[str], int, float, int], list]  # (prompts, n, temperature, seed) -> generations


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(keys: Sequence[str], correct: Sequence[bool]) -> bool:
    """maj@k: the most frequent answer (no-answer excluded; ties -> first seen) is correct."""
    answered = [(k, c) for k, c in zip(keys, correct) if k != NO_ANSWER]
    if not answered:
        return False
    counts = Counter(k for k, _ in answered)
    top = max(counts.values())
    winner = next(k for k, _ in answered if counts[k] == top)
    return next(c for k, c in answered if k == winner)


def evaluate(
    questions: list[Question],
    prompts: list[str],
    generate: Generate,
    *,
    kind: str,
    k: int = 0,
    k_temperature: float = 1.0,
    seed: int = 0,
    timeout: float = 5.0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-question rows and the summary of greedy decoding (and of k samples when k > 0)."""
    greedy = generate(prompts, 1, 0.0, seed)
    grades = grade([g.texts[0] for g in greedy], [q.gold for q in questions], kind, timeout=timeout)
    rows = [
        {"question_id": q.question_id, "prompt": p, "response": g.texts[0], "gold": q.gold, "answer": gr.answer,
         "correct": gr.correct, "status": gr.status, "num_tokens": g.num_tokens[0], **level_fields(q),
         **({"flexible_correct": gr.flexible_correct} if gr.flexible_correct is not None else {})}
        for q, p, g, gr in zip(questions, prompts, greedy, grades)
    ]
    summary = summarise_rows(rows)
    if k > 0:
        add_sampled_metrics(rows, summary, questions, prompts, generate, kind, k, k_temperature, seed, timeout)
    return rows, summary


def level_fields(question: Question) -> dict[str, Any]:
    """MATH level / type (or arith steps) kept for the per-group breakdown."""
    return {key: question.meta[key] for key in ("level", "type", "steps") if key in question.meta}


def summarise_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    summary: dict[str, Any] = {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "no_answer": sum(r["status"] == "no_answer" for r in rows),
        "timeout": sum(r["status"] == "timeout" for r in rows),  # symbolic grading gave up: counted wrong
        "grading_error": sum(r["status"] == "error" for r in rows),
        "mean_tokens": sum(r["num_tokens"] for r in rows) / n if n else 0.0,
    }
    if rows and all("flexible_correct" in r for r in rows):  # GSM8K: last number in the response
        summary["accuracy_flexible"] = sum(r["flexible_correct"] for r in rows) / n
    for group in ("level", "type", "steps"):
        values = sorted({r[group] for r in rows if group in r}, key=str)
        if values:
            summary[f"accuracy_by_{group}"] = {
                str(v): sum(r["correct"] for r in rows if r.get(group) == v) / sum(r.get(group) == v for r in rows)
                for v in values
            }
    return summary


def add_sampled_metrics(rows, summary, questions, prompts, generate, kind, k, temperature, seed, timeout) -> None:
    sampled = generate(prompts, k, temperature, seed + 1)
    responses = [text for g in sampled for text in g.texts]
    golds = [q.gold for q, g in zip(questions, sampled) for _ in g.texts]
    grades = iter(grade(responses, golds, kind, timeout=timeout))
    for row, g in zip(rows, sampled):
        verdicts = [next(grades) for _ in g.texts]
        correct = [v.correct for v in verdicts]
        row[f"pass@{k}"] = pass_at_k(len(correct), sum(correct), k)
        row[f"maj@{k}"] = majority_correct([v.key for v in verdicts], correct)
        row["sample_accuracy"] = sum(correct) / len(correct)
    summary.update(sampled_summary(rows, k))


def sampled_summary(rows: list[dict[str, Any]], k: int) -> dict[str, float]:
    """pass@k, maj@k and sample accuracy averaged over rows that carry them."""
    return {f"pass@{k}": sum(r[f"pass@{k}"] for r in rows) / len(rows),
            f"maj@{k}": sum(r[f"maj@{k}"] for r in rows) / len(rows),
            "sample_accuracy": sum(r["sample_accuracy"] for r in rows) / len(rows)}


def summary_of(rows: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """The summary `evaluate` gives, from its per-question rows (east.executor merges evaluation shards so)."""
    summary = summarise_rows(rows)
    if k > 0:
        summary.update(sampled_summary(rows, k))
    return summary
