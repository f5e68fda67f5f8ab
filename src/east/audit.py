"""Should you trust the grader on your model's outputs? `east audit RUN_DIR` re-grades a run's samples
with two independent references and says where they disagree with ours, and what that would change.

    east audit runs/demo                      # prints the tables, writes runs/demo/audit.json
    from east.audit import audit_run
    report = audit_run(Path("runs/demo"))     # the same numbers as a dict

Every graded sample of every seed (`seed-*/graded.parquet`) is graded again by
- "math-verify": math-verify as it is commonly used, its own extraction from the whole response
  verified against the gold (`east.grading.symbolic.verify_responses`, in the timed worker pool);
- "last number": the last number in the text compared exactly with the gold (lm-eval's GSM8K
  flexible extraction, `east.grading.extract.last_number`).
Each sample falls in one class per grader: "correct", "incorrect" (an answer, but wrong) or
"no answer". The report has, per reference, the 3 x 3 table of our class against the reference's,
examples of every disagreeing cell, and, per seed and arm, how many training questions would change
their kept flag or their weight if the reference's verdicts and answers replaced ours (recomputed by
`east.weighting.question_stats` with the arm's own settings, its answers as cluster keys, its correct
answers as one cluster as in our grader). Any change of the kept set moves every weight a little
through the normaliser, so weights that move by more than 1% are counted apart.

Neither reference is ground truth: math-verify reads the first of several boxes and ignores base
subscripts; the last number is often just the last number of the reasoning.
Read the examples: the cells where the references agree with each other against us are the ones to
look at first. DAST arms train on augmented graded sets and are not recomputed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from east import io
from east.config import RunConfig, expand_arms
from east.errors import UserError
from east.grading.extract import last_number
from east.grading.grade import cluster_key, fast_verdict
from east.records import NO_ANSWER, GradedSet

CLASSES = ("correct", "incorrect", "no answer")
WEIGHT_TOLERANCE = 1e-6  # a weight "changes" when it moves by more than this
# Any change of the kept set moves every weight a little through the normaliser (mean 1 over kept
# questions); a move of more than 1% is counted apart, as a change of the question's own standing.
WEIGHT_SHIFT = 0.01
RESPONSE_TAIL = 240  # characters of a response shown in an example


@dataclass(frozen=True)
class Verdict:
    """One grader's reading of one sample."""

    answer: str | None
    correct: bool
    status: str = "ok"  # "ok" | "no_answer" | "timeout" | "error"

    @property
    def label(self) -> str:
        return "no answer" if self.answer is None else "correct" if self.correct else "incorrect"


@dataclass(frozen=True)
class Sample:
    seed: str
    question_id: str
    response: str
    gold: str
    ours: Verdict
    step_rejected: bool = False  # grading.verify_steps refused it: right final answer, unsound working


def graded_files(root: Path) -> list[Path]:
    """The run's seed-*/graded.parquet files, by seed; a one-line error if there are none."""
    files = sorted(root.glob("seed-*/graded.parquet"), key=lambda p: seed_number(p.parent.name))
    if not files:
        raise UserError(f"{root}: no graded samples (seed-*/graded.parquet); run `east grade CONFIG --out {root}` first")
    return files


def seed_number(name: str) -> int:
    tail = name.removeprefix("seed-")
    return int(tail) if tail.lstrip("-").isdigit() else 0


def read_graded_sets(path: Path) -> list[GradedSet]:
    try:
        return [GradedSet.from_dict(row) for row in io.read_parquet(path)]
    except (OSError, TypeError, KeyError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a graded table written by `east grade` ({reason}); rerun `east grade`") from None


def samples_of(seed: str, graded: Sequence[GradedSet]) -> list[Sample]:
    return [Sample(seed, g.question_id, response, g.gold, Verdict(answer, bool(ok)), bool(rejected))
            for g in graded
            for response, answer, ok, rejected in zip(g.responses, g.answers, g.correct,
                                                      g.step_rejected or [False] * len(g.responses))]


def step_rejected_disagreements(samples: Sequence[Sample], reference: Sequence[Verdict]) -> int:
    """Samples the reference calls correct that ours refused by step verification: a disagreement by
    design (the references check final answers only), not a grading error."""
    return sum(s.step_rejected and r.label == "correct" for s, r in zip(samples, reference))


def math_verify_verdicts(samples: Sequence[Sample], timeout: float, workers: int | None) -> list[Verdict]:
    """Plain per-response math-verify on each distinct (response, gold), in the timed worker pool."""
    from east.grading.symbolic import verify_responses

    distinct = list(dict.fromkeys((s.response, s.gold) for s in samples))
    found = dict(zip(distinct, verify_responses(distinct, timeout=timeout, workers=workers)))
    verdicts = []
    for s in samples:
        status, correct, answer = found[(s.response, s.gold)]
        verdicts.append(Verdict(answer, bool(correct) and answer is not None, status))
    return verdicts


def last_number_verdicts(samples: Sequence[Sample]) -> list[Verdict]:
    """The last number of each response, compared exactly with the gold (as GSM8K's flexible score)."""
    cache: dict[tuple[str | None, str], bool] = {}
    verdicts = []
    for s in samples:
        answer = last_number(s.response)
        if (answer, s.gold) not in cache:
            cache[(answer, s.gold)] = answer is not None and fast_verdict(answer, s.gold, "gsm8k") is True
        verdicts.append(Verdict(answer, cache[(answer, s.gold)], "ok" if answer is not None else "no_answer"))
    return verdicts


def disagreement_table(samples: Sequence[Sample], reference: Sequence[Verdict]) -> dict[str, dict[str, int]]:
    """{our class: {reference class: samples}} with every class present."""
    counts = Counter((s.ours.label, r.label) for s, r in zip(samples, reference))
    return {ours: {theirs: counts[(ours, theirs)] for theirs in CLASSES} for ours in CLASSES}


def disagreement_examples(samples: Sequence[Sample], reference: Sequence[Verdict], limit: int) -> dict[str, list[dict]]:
    """Up to `limit` samples per disagreeing cell ("ours incorrect, reference correct": [...]), one per
    distinct (our answer, reference answer, gold), in run order."""
    examples: dict[str, list[dict]] = {}
    seen: set[tuple] = set()
    for s, r in zip(samples, reference):
        if s.ours.label == r.label:
            continue
        cell = f"ours {s.ours.label}, reference {r.label}"
        key = (cell, s.ours.answer, r.answer, s.gold)
        if key in seen or len(examples.setdefault(cell, [])) >= limit:
            continue
        seen.add(key)
        examples[cell].append({"seed": s.seed, "question_id": s.question_id, "gold": s.gold, "ours": s.ours.answer,
                               "reference": r.answer, "response_end": s.response[-RESPONSE_TAIL:]})
    return examples


def reference_graded(graded: Sequence[GradedSet], verdicts: Sequence[Verdict], kind: str) -> list[GradedSet]:
    """The graded sets with a reference's verdicts and cluster keys in place of ours."""
    out, start = [], 0
    for g in graded:
        mine = verdicts[start : start + len(g.responses)]
        start += len(g.responses)
        gold_key = cluster_key(g.gold, kind)
        keys = [NO_ANSWER if v.answer is None else gold_key if v.correct else cluster_key(v.answer, kind) for v in mine]
        out.append(replace(g, answers=[v.answer for v in mine], keys=keys, correct=[v.correct for v in mine]))
    return out


def weight_changes(graded: Sequence[GradedSet], reference: Sequence[GradedSet], args: dict[str, Any]) -> dict[str, Any]:
    """How many questions change their kept flag, and how many kept ones their weight, when the
    reference's grading replaces ours under one arm's weighting settings."""
    from east.weighting import question_stats

    try:
        ours = question_stats(graded, **args)
        theirs = question_stats(reference, **args)
    except ValueError as exc:  # e.g. one grading leaves no question to train on
        return {"error": str(exc).splitlines()[0]}
    kept_changed = [a.question_id for a, b in zip(ours, theirs) if a.kept != b.kept]
    both = [(a, b) for a, b in zip(ours, theirs) if a.kept and b.kept]
    moved = [a.question_id for a, b in both if abs(a.weight - b.weight) > WEIGHT_TOLERANCE]
    shifted = [a.question_id for a, b in both if abs(a.weight - b.weight) > WEIGHT_SHIFT * max(a.weight, b.weight)]
    return {"questions": len(ours), "kept_ours": sum(s.kept for s in ours),
            "kept_reference": sum(s.kept for s in theirs), "kept_changed": len(kept_changed),
            "weight_changed": len(moved), "weight_changed_over_1pct": len(shifted),
            "max_weight_change": max((abs(a.weight - b.weight) for a, b in both), default=0.0),
            "examples": (kept_changed + shifted)[:5]}


def arm_settings(config: RunConfig) -> dict[str, dict[str, Any]]:
    """`question_stats` arguments of every arm trained on the plain graded samples, by arm label."""
    from east.pipeline import stats_args

    return {arm.label(): stats_args(config, arm) for arm in expand_arms(config.arms) if arm.data == "vanilla"}


def audit_run(root: Path, examples: int = 3, write: bool = True) -> dict[str, Any]:
    """Re-grade a run directory's samples with the references; the report as a dict, also written to
    `audit.json` (atomically) unless `write` is False."""
    from east.report import load_config

    root = Path(root)
    if not (root / "config.yaml").exists():
        raise UserError(f"{root}: not a run directory (no config.yaml)")
    config = load_config(root)
    kind = config.grading_kind()
    graded = {path.parent.name: read_graded_sets(path) for path in graded_files(root)}
    samples = [s for seed, sets in graded.items() for s in samples_of(seed, sets)]
    verdicts = {
        "math-verify": math_verify_verdicts(samples, config.grading.timeout, config.grading.workers),
        "last number": last_number_verdicts(samples),
    }
    settings = arm_settings(config)
    report: dict[str, Any] = {"run": str(root), "kind": kind, "seeds": list(graded), "samples": len(samples),
                              "ours": dict(Counter(s.ours.label for s in samples)),
                              "step_rejected": sum(s.step_rejected for s in samples), "references": {}}
    for name, found in verdicts.items():
        table = disagreement_table(samples, found)
        agree = sum(table[c][c] for c in CLASSES)
        arms: dict[str, dict[str, Any]] = {}
        start = 0
        for seed, sets in graded.items():
            mine = found[start : start + sum(len(g.responses) for g in sets)]
            start += len(mine)
            theirs = reference_graded(sets, mine, kind)
            arms[seed] = {arm: weight_changes(sets, theirs, args) for arm, args in settings.items()}
        report["references"][name] = {
            "table": table,
            "agree": agree,
            "agreement": agree / len(samples) if samples else None,
            "statuses": dict(Counter(v.status for v in found)),
            "step_rejected_reference_correct": step_rejected_disagreements(samples, found),
            "examples": disagreement_examples(samples, found, examples),
            "arms": arms,
        }
    if write:
        io.write_json(root / "audit.json", report)
    return report
