"""Per-question statistics and EAST weights: GradedSet rows in, QuestionStats rows out (SPEC sections 2, 4).

    stats = question_stats(graded, signal="entropy", mapping="power", a=1.5)
    print(summary_line(stats))          # the one-line demo print; summarise(stats) gives the numbers

For every question: answer clusters, entropy (Eq. 1, natural log), accuracy, rejection, then the filter
(all-wrong questions are always dropped, all-correct ones unless `keep_all_correct`; with
`official_filter` also those the official EAST preprocessing drops: no correct response containing
`\\boxed`, or incorrect responses none of which contains `\\boxed`, e.g. when the only wrong samples
have no answer), then the mapping
applied to the signal of the KEPT questions only. Dropped questions keep their statistics with weight
0.0, so reports can show what was dropped and why. Weights are computed once per call (one iteration)
and have mean 1 over the kept questions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from east.records import NO_ANSWER, GradedSet, QuestionStats
from east.weighting.mappings import MAPPINGS, Mapping, map_weights
from east.weighting.signals import accuracy, cluster_sizes, entropy, rejection

Signal = Literal["entropy", "accuracy", "rejection"]
SIGNALS: tuple[str, ...] = ("entropy", "accuracy", "rejection")
DROP_REASONS: tuple[str, ...] = ("all_wrong", "all_correct", "no_boxed_correct", "no_boxed_incorrect")
BOX_MARK = "\\boxed"  # what the official preprocessing's check_box looks for in a response


def question_stats(
    graded: Sequence[GradedSet],
    *,
    signal: Signal = "entropy",
    mapping: Mapping = "power",
    a: float = 1.0,
    linear_range: float | None = None,
    epsilon: float = 0.0,
    keep_all_correct: bool = False,
    official_filter: bool = False,
) -> list[QuestionStats]:
    """One QuestionStats per graded question, in input order, weighted over the kept questions."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; choose one of {', '.join(SIGNALS)}")
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown mapping {mapping!r}; choose one of {', '.join(MAPPINGS)}")
    check_unique_ids(graded)
    rows = [unweighted_stats(g, signal, keep_all_correct, official_filter) for g in graded]
    kept = [r for r in rows if r.kept]
    if not kept:
        raise ValueError(no_kept_message(rows, keep_all_correct))
    try:
        weights = map_weights([r.signal for r in kept], mapping, a=a, linear_range=linear_range, epsilon=epsilon)
    except ValueError as err:
        raise ValueError(f"{signal} signal, {mapping} mapping over {len(kept)} kept questions: {err}"
                         f"{zero_signal_ids(kept, epsilon)}") from err
    if not np.all(np.isfinite(weights)):
        bad = [r.question_id for r, w in zip(kept, weights) if not np.isfinite(w)]
        raise ValueError(f"{mapping} mapping with a = {a} gave non-finite weights for questions {bad[:5]}; "
                         "use a smaller |a| or a larger epsilon")
    for r, w in zip(kept, weights):
        r.weight = float(w)
    return rows


def unweighted_stats(g: GradedSet, signal: Signal, keep_all_correct: bool, official_filter: bool = False) -> QuestionStats:
    """A question's statistics and filter verdict, weight still 0.0."""
    check_graded(g)
    n = len(g.keys)
    clusters = cluster_sizes(g.keys)
    n_correct = sum(bool(c) for c in g.correct)
    acc = accuracy(g.correct)
    rej = rejection(g.keys, g.correct)
    h = entropy([size for _, size in clusters])
    drop_reason = "all_wrong" if n_correct == 0 else "all_correct" if n_correct == n and not keep_all_correct else None
    if drop_reason is None and official_filter:
        drop_reason = official_drop_reason(g)
    return QuestionStats(
        question_id=g.question_id,
        n=n,
        cluster_keys=[k for k, _ in clusters],
        cluster_sizes=[size for _, size in clusters],
        n_correct=n_correct,
        n_no_answer=sum(k == NO_ANSWER for k in g.keys),
        n_step_rejected=sum(bool(r) for r in g.step_rejected),
        entropy=h,
        accuracy=acc,
        rejection=rej,
        kept=drop_reason is None,
        drop_reason=drop_reason,
        signal={"entropy": h, "accuracy": 1.0 - acc, "rejection": rej}[signal],
        weight=0.0,
    )


def official_drop_reason(g: GradedSet) -> str | None:
    """Why the official EAST preprocessing would drop a question that has correct responses:
    none of them contains `\\boxed`, or it has incorrect responses and none of those does (an
    all-correct question kept with keep_all_correct has no incorrect response to check)."""
    if not g.responses:
        raise ValueError(f"question {g.question_id}: official_filter needs the response texts, the graded set has none")
    boxed = [BOX_MARK in r for r in g.responses]
    if not any(b and ok for b, ok in zip(boxed, g.correct)):
        return "no_boxed_correct"
    if not all(g.correct) and not any(b and not ok for b, ok in zip(boxed, g.correct)):
        return "no_boxed_incorrect"
    return None


def check_graded(g: GradedSet) -> None:
    """Reject a GradedSet whose per-response lists disagree: every statistic assumes one key and verdict per sample."""
    n = len(g.keys)
    if n == 0:
        raise ValueError(f"question {g.question_id} has no graded samples (keys is empty)")
    if len(g.correct) != n or (g.responses and len(g.responses) != n):
        raise ValueError(f"question {g.question_id}: {len(g.responses)} responses, {n} keys and "
                         f"{len(g.correct)} verdicts; grading must give one key and one verdict per response")
    if any(ok and k == NO_ANSWER for k, ok in zip(g.keys, g.correct)):
        raise ValueError(f"question {g.question_id}: a response without an answer ({NO_ANSWER}) is marked "
                         "correct; SPEC section 4 says such responses are never correct")


def check_unique_ids(graded: Sequence[GradedSet]) -> None:
    dupes = [qid for qid, c in Counter(g.question_id for g in graded).items() if c > 1]
    if dupes:
        raise ValueError(f"duplicate question_id in graded sets: {dupes[:5]}; rows are joined on question_id")


def no_kept_message(rows: Sequence[QuestionStats], keep_all_correct: bool) -> str:
    reasons = Counter(r.drop_reason for r in rows)
    official = "".join(f", {reasons[r]} {r.replace('_', ' ')} (official_filter)" for r in DROP_REASONS[2:] if reasons[r])
    msg = (f"no question left to train on: {len(rows)} questions, {reasons['all_wrong']} all wrong, "
           f"{reasons['all_correct']} all correct{official}. ")
    if reasons["all_correct"] and not keep_all_correct:
        msg += "Sample more responses per question or at a higher temperature, or keep_all_correct=True."
    else:
        msg += "The model solves none of them: use easier questions, more samples, or a stronger model."
    return msg


def zero_signal_ids(kept: Sequence[QuestionStats], epsilon: float) -> str:
    """' (signal 0: q1, q2)' naming the questions behind a zero-signal error, or ''."""
    ids = [r.question_id for r in kept if r.signal + epsilon == 0]
    if not ids:
        return ""
    return f" (signal 0: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''})"


def summarise(stats: Sequence[QuestionStats], quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> dict[str, Any]:
    """Counts kept / dropped by reason, and entropy and weight summaries over the kept questions."""
    kept = [s for s in stats if s.kept]
    reasons = Counter(s.drop_reason for s in stats if not s.kept)
    out: dict[str, Any] = {
        "questions": len(stats),
        "kept": len(kept),
        "dropped": {reason: reasons.get(reason, 0) for reason in DROP_REASONS},
        "samples_no_answer": sum(s.n_no_answer for s in stats),
        "samples_step_rejected": sum(s.n_step_rejected for s in stats),
        "samples": sum(s.n for s in stats),
    }
    if kept:
        h = np.array([s.entropy for s in kept])
        w = np.array([s.weight for s in kept])
        out["entropy"] = {"mean": float(h.mean()), "min": float(h.min()), "max": float(h.max())}
        out["weight"] = {"mean": float(w.mean()), "min": float(w.min()), "max": float(w.max()),
                         "quantiles": {f"q{round(q * 100)}": float(np.quantile(w, q)) for q in quantiles}}
    return out


def summary_line(stats: Sequence[QuestionStats]) -> str:
    """One line for the demo: kept / dropped, entropy and weight ranges."""
    s = summarise(stats)
    dropped = s["dropped"]
    official = "".join(f", {dropped[r]} {r.replace('_', ' ')}" for r in DROP_REASONS[2:] if dropped[r])
    line = (f"{s['kept']}/{s['questions']} questions kept "
            f"(dropped: {dropped['all_wrong']} all wrong, {dropped['all_correct']} all correct{official})")
    if s["kept"]:
        h, w = s["entropy"], s["weight"]
        qs = " ".join(f"{k}={v:.2f}" for k, v in w["quantiles"].items())
        line += (f"; entropy mean {h['mean']:.3f} [{h['min']:.3f}, {h['max']:.3f}] nats"
                 f"; weight mean {w['mean']:.3f} [{w['min']:.3f}, {w['max']:.3f}] {qs}")
    return line
