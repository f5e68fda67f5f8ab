"""DAST (difficulty-aware self-training, SPEC section 3): the pure logic, with sampling injected.

Difficulty levels come from the first round of samples of the initial model M0 (`question_levels`,
using `weighting.difficulty`). Two augmentations then give harder questions more or longer data:

DAST-P (data proportion): sample more for questions that lack their target number of DISTINCT correct
responses; the target grows with difficulty (`target_correct`). The caller supplies the sampler:

    def sample_more(question_ids, n_per_question, round_index) -> list[GradedSet]:
        ...  # sample n_per_question responses per question with its usual prompt, grade them
    levels = question_levels(graded, cfg)                     # levels of M0, from the first round
    merged, report = dast_p_rounds(graded, cfg, sample_more, levels=levels)
    stats = question_stats(merged, keep_all_correct=True, ...)   # the arm's weighting (uniform or EAST)
    rows = dast_p_sft_rows(merged, stats, levels, cfg, seed=0)   # up to target rows per question
    rows, counts = dast_p_dpo_rows(merged, stats, levels, cfg, seed=0)

DAST-L (length): questions of `cfg.long_levels` are sampled again with a prompt carrying the few-shot
examples with the most reasoning steps; their training responses come from that long-prompt set:

    shots = long_few_shot_examples(warmup_pool, cfg.few_shot, seed=0)
    ids = long_prompt_questions(levels, cfg)                  # sample cfg.n_long each with `shots`
    merged = merge_long(graded, graded_long, levels, cfg)     # plain prompt, long responses
    print(length_report(graded, merged, levels))

Decisions (the papers are silent):
- Levels are those of M0's first round and are never recomputed from merged sets: extra rounds sample
  more where the model fails, so merged accuracies are biased towards the hard side.
- Targets count distinct correct response TEXTS: a repeated text adds no new training example.
  "proportional": round(max_target * (1 - A)) clipped to [base_target, max_target], with A the
  sampled accuracy, or for a level the middle of its accuracy interval; unsolved questions get max_target.
- Budget: extra rounds never draw more than `global_budget` samples in total. Within a round, hardest
  level first, then input order, get samples; the last served question may get fewer than
  `round_size`. Each call of `sample_more` samples the same n for all its questions, so a round whose
  questions need different n (cap or budget remainders) becomes several calls; `round_index` counts
  calls (1, 2, ...), never repeats, and can seed each call freshly.
- Question filter for DAST arms: compute stats on the MERGED sets with keep_all_correct=True. Then
  every question with a correct response is kept: all-correct ("easiest") questions give base_target
  SFT rows, and unsolved questions that extra rounds solved give rows too. With an EAST weighting
  (power mapping, a > 0) all-correct questions have h = 0 and so weight 0 (SPEC section 4).
- DAST-L stores the PLAIN prompt (no few-shot examples) with the long-prompt responses, so training
  teaches the model to write the long reasoning without the examples in its context, which is the
  point of DAST-L (at test time there are no examples). Such a GradedSet's `prompt` is therefore not
  the prompt its responses were sampled from; keep the long-prompt SampleSets for provenance.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from east.records import NO_ANSWER, GradedSet, Question, QuestionStats
from east.selection import (
    Row,
    empty_counts,
    kept_questions,
    positive_texts,
    question_rng,
    shuffled_distinct_texts,
    usable_indices,
)
from east.weighting.difficulty import LEVELS, DifficultyCuts, difficulty_level, difficulty_levels, level_rank
from east.weighting.signals import incorrect_clusters
from east.weighting.stats import check_graded, check_unique_ids

SampleMore = Callable[[list[str], int, int], list[GradedSet]]
OUTCOMES: tuple[str, ...] = ("reached_target", "hit_cap", "stopped_by_budget")


class DastConfig(BaseModel):
    """DAST settings. Defaults suit the built-in arith task on CPU (first round sampling.n = 16)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    easy_above: float = Field(0.7, description="Sampled accuracy A > easy_above (and A < 1) is 'easy'; "
                                               "the cut itself is 'medium'.")
    medium_from: float = Field(0.4, description="A >= medium_from (up to easy_above) is 'medium'.")
    hard_above: float = Field(0.1, description="A > hard_above is 'hard'; 0 < A <= hard_above is 'hardest'.")
    use_greedy: bool = Field(False, description="A question with no correct sample but a correct greedy answer is "
                                                "'hardest', not 'unsolved' (needs M0's greedy verdicts).")
    target: Literal["proportional", "uniform"] = Field(
        "proportional", description="DAST-P target of distinct correct responses: proportional to 1 - accuracy "
                                    "(clipped to [base_target, max_target]), or base_target for every question; "
                                    "unsolved questions want max_target in both.")
    base_target: int = Field(1, ge=1, description="Distinct correct responses wanted for the easiest kept questions.")
    max_target: int = Field(4, ge=1, description="Distinct correct responses wanted for the hardest and unsolved "
                                                 "questions.")
    round_size: int = Field(4, ge=1, description="Samples drawn per question in each extra DAST-P round.")
    cap_per_question: int = Field(32, ge=1, description="Most samples per question, first round included.")
    global_budget: int = Field(2048, ge=0, description="Most extra samples over all questions (never exceeded).")
    few_shot: int = Field(3, ge=1, description="DAST-L: worked examples (most reasoning steps) in each long prompt.")
    long_levels: list[str] = Field(default_factory=lambda: ["medium", "hard", "hardest", "unsolved"],
                                   description="DAST-L: levels sampled again with the long few-shot prompt.")
    n_long: int = Field(8, ge=1, description="DAST-L: samples per question with the long prompt.")

    @field_validator("long_levels")
    @classmethod
    def _known_levels(cls, levels: list[str]) -> list[str]:
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown:
            raise ValueError(f"unknown levels {unknown}; levels are {', '.join(LEVELS)}")
        return levels

    @model_validator(mode="after")
    def _consistent(self) -> DastConfig:
        self.cuts()  # raises with the cut rule in its message
        if self.base_target > self.max_target:
            raise ValueError(f"base_target {self.base_target} > max_target {self.max_target}")
        return self

    def cuts(self) -> DifficultyCuts:
        return DifficultyCuts(easy_above=self.easy_above, medium_from=self.medium_from, hard_above=self.hard_above)


# ----------------------------------------------------------------------------------------------------
# Levels and targets


def question_levels(graded: Sequence[GradedSet], cfg: DastConfig,
                    greedy_correct: Mapping[str, bool] | None = None) -> dict[str, str]:
    """{question_id: level} from the first-round sampled accuracy (and greedy verdicts if cfg.use_greedy)."""
    if cfg.use_greedy and greedy_correct is None:
        raise ValueError("dast.use_greedy is set but no greedy verdicts were given; evaluate M0 greedily "
                         "on the training questions or set use_greedy: false")
    greedy = (greedy_correct or {}) if cfg.use_greedy else {}
    levels = {}
    for g in graded:
        check_graded(g)
        acc = sum(bool(c) for c in g.correct) / len(g.correct)
        levels[g.question_id] = difficulty_level(acc, greedy.get(g.question_id), cfg.cuts())
    return levels


def stats_levels(stats: Sequence[QuestionStats], cfg: DastConfig,
                 greedy_correct: Mapping[str, bool] | None = None) -> dict[str, str]:
    """{question_id: level} from first-round QuestionStats (same rule as `question_levels`)."""
    return difficulty_levels(stats, greedy_correct if cfg.use_greedy else None, cfg.cuts())


def level_accuracy(level: str, cfg: DastConfig) -> float:
    """A representative accuracy of a level: the middle of its interval under the cut points."""
    mids = {
        "easiest": 1.0,
        "easy": (cfg.easy_above + 1.0) / 2,
        "medium": (cfg.medium_from + cfg.easy_above) / 2,
        "hard": (cfg.hard_above + cfg.medium_from) / 2,
        "hardest": cfg.hard_above / 2,
        "unsolved": 0.0,
    }
    level_rank(level)
    return mids[level]


def target_correct(level_or_accuracy: str | float, cfg: DastConfig) -> int:
    """Distinct correct responses wanted for a question of this level (or sampled accuracy; 0 is unsolved).

    Unsolved questions want max_target in both modes: extra rounds are their only chance of data.
    """
    if isinstance(level_or_accuracy, str):
        acc = level_accuracy(level_or_accuracy, cfg)  # raises for unknown levels
    else:
        acc = float(level_or_accuracy)
        if not 0 <= acc <= 1:
            raise ValueError(f"accuracy must be in [0, 1], got {acc}")
    if level_or_accuracy == "unsolved" or acc == 0:
        return cfg.max_target
    if cfg.target == "uniform":
        return cfg.base_target
    # round half up: Python's round() goes to even, which would make targets jump unevenly with difficulty
    wanted = math.floor(cfg.max_target * (1.0 - acc) + 0.5)
    return min(cfg.max_target, max(cfg.base_target, wanted))


def level_histogram(levels: Mapping[str, str]) -> dict[str, int]:
    """{level: number of questions} for every level, easiest first (zeros included)."""
    counts = Counter(levels.values())
    unknown = sorted(set(counts) - set(LEVELS))
    if unknown:
        raise ValueError(f"unknown levels {unknown}; levels are {', '.join(LEVELS)}")
    return {lv: counts[lv] for lv in LEVELS}


# ----------------------------------------------------------------------------------------------------
# DAST-P: budgeted extra rounds


def distinct_correct(g: GradedSet) -> int:
    """Number of distinct correct response texts."""
    return len({r for r, ok in zip(g.responses, g.correct) if ok})


def question_outcome(g: GradedSet, target: int, cfg: DastConfig) -> str:
    """Why sampling stopped for a question: "reached_target", "hit_cap" or (neither) "stopped_by_budget"."""
    if distinct_correct(g) >= target:
        return "reached_target"
    if len(g.keys) >= cfg.cap_per_question:
        return "hit_cap"
    return "stopped_by_budget"


def dast_p_rounds(
    graded: Sequence[GradedSet],
    cfg: DastConfig,
    sample_more: SampleMore,
    *,
    levels: Mapping[str, str] | None = None,
    greedy_correct: Mapping[str, bool] | None = None,
) -> tuple[list[GradedSet], dict[str, Any]]:
    """The first-round sets merged with extra rounds of `sample_more`, in input order, and a report.

    `levels` defaults to `question_levels(graded, cfg, greedy_correct)`. `sample_more(ids, n, round_index)`
    must return one GradedSet per id with exactly n graded responses, sampled from the same prompt.
    """
    check_unique_ids(graded)
    for g in graded:
        check_graded(g)
    levels = dict(levels) if levels is not None else question_levels(graded, cfg, greedy_correct)
    missing = [g.question_id for g in graded if g.question_id not in levels]
    if missing:
        raise ValueError(f"no difficulty level for {len(missing)} questions, e.g. {missing[:5]}")
    merged = {g.question_id: copy_graded(g) for g in graded}
    targets = {qid: target_correct(levels[qid], cfg) for qid in merged}
    # hardest first, so a short budget goes where DAST wants more data; input order breaks ties
    priority = sorted(merged, key=lambda qid: -level_rank(levels[qid]))
    budget_left = cfg.global_budget
    calls = 0
    while budget_left > 0:
        plan = round_plan([q for q in priority if needs_more(merged[q], targets[q], cfg)], merged, cfg, budget_left)
        if not plan:
            break
        budget_left -= sum(plan.values())
        for n, ids in calls_of(plan):
            calls += 1
            for new in checked_samples(sample_more(ids, n, calls), ids, n, merged):
                merged[new.question_id] = concatenated(merged[new.question_id], new)
    merged_list = [merged[g.question_id] for g in graded]
    return merged_list, dast_p_report(graded, merged_list, levels, targets, cfg, calls)


def needs_more(g: GradedSet, target: int, cfg: DastConfig) -> bool:
    return distinct_correct(g) < target and len(g.keys) < cfg.cap_per_question


def round_plan(wanting: list[str], merged: Mapping[str, GradedSet], cfg: DastConfig,
               budget_left: int) -> dict[str, int]:
    """{question_id: samples} for one round: round_size each, less at the cap, cut where the budget ends
    (`wanting` holds only questions below the cap, so only the budget can make n zero)."""
    plan: dict[str, int] = {}
    for qid in wanting:
        n = min(cfg.round_size, cfg.cap_per_question - len(merged[qid].keys), budget_left)
        if n <= 0:
            break
        plan[qid] = n
        budget_left -= n
    return plan


def calls_of(plan: Mapping[str, int]) -> list[tuple[int, list[str]]]:
    """The plan as (n, question ids) groups, one per distinct n, largest n first (priority order kept within)."""
    groups: dict[int, list[str]] = {}
    for qid, n in plan.items():
        groups.setdefault(n, []).append(qid)
    return sorted(groups.items(), key=lambda item: -item[0])


def checked_samples(new: Sequence[GradedSet], ids: list[str], n: int,
                    merged: Mapping[str, GradedSet]) -> list[GradedSet]:
    """The sampler's answer, after checking it is exactly what was asked (else budgets and prompts go wrong)."""
    got = [g.question_id for g in new]
    if sorted(got) != sorted(ids):
        raise ValueError(f"sample_more was asked for {len(ids)} questions {ids[:5]} but returned "
                         f"{len(got)} {got[:5]}; it must return one GradedSet per requested id")
    for g in new:
        check_graded(g)
        if len(g.keys) != n:
            raise ValueError(f"sample_more returned {len(g.keys)} responses for {g.question_id}, asked for {n}")
        if g.prompt != merged[g.question_id].prompt:
            raise ValueError(f"sample_more sampled {g.question_id} from a different prompt than its first round; "
                             "DAST-P extra rounds must use the same prompt")
    return list(new)


def copy_graded(g: GradedSet) -> GradedSet:
    return replace(g, responses=list(g.responses), num_tokens=list(g.num_tokens), finished=list(g.finished),
                   answers=list(g.answers), keys=list(g.keys), correct=list(g.correct))


def concatenated(old: GradedSet, new: GradedSet) -> GradedSet:
    """One question's responses from both sets, old first (every per-response list concatenated)."""
    return replace(old, responses=old.responses + new.responses, num_tokens=old.num_tokens + new.num_tokens,
                   finished=old.finished + new.finished, answers=old.answers + new.answers,
                   keys=old.keys + new.keys, correct=old.correct + new.correct)


def dast_p_report(first: Sequence[GradedSet], merged: Sequence[GradedSet], levels: Mapping[str, str],
                  targets: Mapping[str, int], cfg: DastConfig, calls: int) -> dict[str, Any]:
    """Per level (and in total): questions, target, samples, distinct correct responses, kept, outcomes."""
    first_n = {g.question_id: len(g.keys) for g in first}
    per_level = {lv: empty_level_row() for lv in LEVELS}
    for g in merged:
        qid = g.question_id
        row = per_level[levels[qid]]
        n_distinct = distinct_correct(g)
        row["questions"] += 1
        row["samples_first"] += first_n[qid]
        row["samples_extra"] += len(g.keys) - first_n[qid]
        row["samples"] += len(g.keys)
        row["correct_distinct"] += n_distinct
        row["kept"] += min(n_distinct, targets[qid])
        row["solved"] += n_distinct > 0
        row[question_outcome(g, targets[qid], cfg)] += 1
    total = empty_level_row()
    for row in per_level.values():
        for key in total:
            total[key] += row[key]
    extra = total["samples_extra"]
    return {
        "levels": {lv: {"target": target_correct(lv, cfg), **row} for lv, row in per_level.items() if row["questions"]},
        "total": total,
        "budget": cfg.global_budget,
        "extra_samples": extra,
        "budget_left": cfg.global_budget - extra,
        "calls": calls,
    }


def empty_level_row() -> dict[str, int]:
    return {"questions": 0, "samples_first": 0, "samples_extra": 0, "samples": 0, "correct_distinct": 0, "kept": 0,
            "solved": 0, **{outcome: 0 for outcome in OUTCOMES}}


# ----------------------------------------------------------------------------------------------------
# DAST-P: training rows


def question_targets(graded: Sequence[GradedSet], levels: Mapping[str, str], cfg: DastConfig) -> dict[str, int]:
    missing = [g.question_id for g in graded if g.question_id not in levels]
    if missing:
        raise ValueError(f"no difficulty level for {len(missing)} questions, e.g. {missing[:5]}; "
                         "pass the first-round levels of every question")
    return {g.question_id: target_correct(levels[g.question_id], cfg) for g in graded}


def dast_p_sft_rows(
    graded: Sequence[GradedSet],
    stats: Sequence[QuestionStats],
    levels: Mapping[str, str],
    cfg: DastConfig,
    *,
    seed: int,
    boxed_only: bool = False,
) -> list[Row]:
    """Up to target distinct correct responses per kept question, {question_id, prompt, completion, weight}.

    The responses are drawn as `selection.sft_rows` draws them (same seed: the first row here is its "one"
    row), so harder questions get more rows; the weight is the question's `stats.weight`.
    """
    targets = question_targets(graded, levels, cfg)
    rows: list[Row] = []
    for g, s in kept_questions(graded, stats):
        texts = positive_texts(g, usable_indices(g, boxed_only), question_rng(seed, g.question_id))
        rows += [{"question_id": g.question_id, "prompt": g.prompt, "completion": t, "weight": float(s.weight)}
                 for t in texts[: targets[g.question_id]]]
    return rows


def dast_p_dpo_rows(
    graded: Sequence[GradedSet],
    stats: Sequence[QuestionStats],
    levels: Mapping[str, str],
    cfg: DastConfig,
    *,
    seed: int,
    boxed_only: bool = False,
    no_answer_negatives: bool = True,
) -> tuple[list[Row], dict[str, int]]:
    """Pairs {question_id, prompt, chosen, rejected, weight}: each of up to target distinct correct responses
    with an incorrect one, negatives taken most frequent incorrect answer first (cycled when fewer), and
    the question counts of `selection.dpo_rows`. All-correct questions have no negative ("no_incorrect")."""
    targets = question_targets(graded, levels, cfg)
    rows: list[Row] = []
    counts = empty_counts()
    for g, s in kept_questions(graded, stats):
        counts["kept"] += 1
        usable = usable_indices(g, boxed_only)
        rng = question_rng(seed, g.question_id)
        positives = positive_texts(g, usable, rng)[: targets[g.question_id]]
        if not positives:
            counts["no_correct"] += 1
            continue
        negatives, is_no_answer = ranked_negative_texts(g, usable, rng, no_answer_negatives)
        if not negatives:
            counts["no_incorrect"] += 1
            continue
        counts["no_answer_negative"] += is_no_answer
        counts["with_rows"] += 1
        counts["pairs"] += len(positives)
        rows += [{"question_id": g.question_id, "prompt": g.prompt, "chosen": p,
                  "rejected": negatives[i % len(negatives)], "weight": float(s.weight)}
                 for i, p in enumerate(positives)]
    counts["rows"] = len(rows)
    return rows, counts


def ranked_negative_texts(g: GradedSet, usable: list[int], rng, no_answer_negatives: bool) -> tuple[list[str], bool]:
    """Distinct incorrect texts, the most frequent incorrect answer's first (random order within an answer),
    and whether they are NO_ANSWER responses (used only when no incorrect response has an answer, as in
    `selection.negative_texts`, whose first draw this repeats)."""
    clusters = incorrect_clusters([g.keys[i] for i in usable], [g.correct[i] for i in usable])
    keys = [k for k, _ in clusters]
    is_no_answer = False
    if not keys and no_answer_negatives:
        keys, is_no_answer = [NO_ANSWER], True
    texts: list[str] = []
    for key in keys:
        texts += shuffled_distinct_texts(g, [i for i in usable if g.keys[i] == key and not g.correct[i]], rng)
    texts = list(dict.fromkeys(texts))
    return texts, is_no_answer and bool(texts)


# ----------------------------------------------------------------------------------------------------
# DAST-L: long few-shot prompts


def reasoning_steps(q: Question) -> int:
    """meta["steps"] where the task records it, else the number of non-empty solution lines."""
    if "steps" in q.meta:
        return int(q.meta["steps"])
    return sum(bool(line.strip()) for line in (q.solution or "").splitlines())


def long_few_shot_examples(pool: Sequence[Question], k: int, seed: int) -> list[Question]:
    """The k worked examples with the most reasoning steps, most first; ties by a seeded hash of the id."""
    labelled = [q for q in pool if q.solution]
    if k < 0 or len(labelled) < k:
        raise ValueError(f"asked for {k} long few-shot examples but the pool has {len(labelled)} with a worked solution")

    def tie(q: Question) -> str:
        return hashlib.sha256(f"{seed}:{q.question_id}".encode()).hexdigest()

    return sorted(labelled, key=lambda q: (-reasoning_steps(q), tie(q)))[:k]


def long_prompt_questions(stats_or_levels: Mapping[str, str] | Sequence[QuestionStats], cfg: DastConfig) -> list[str]:
    """Ids of the questions whose level is in cfg.long_levels, in the given order."""
    if isinstance(stats_or_levels, Mapping):
        levels = dict(stats_or_levels)
    else:
        levels = stats_levels(stats_or_levels, cfg)
    return [qid for qid, lv in levels.items() if lv in cfg.long_levels]


def merge_long(graded_short: Sequence[GradedSet], graded_long: Sequence[GradedSet],
               levels: Mapping[str, str], cfg: DastConfig) -> list[GradedSet]:
    """The short-prompt sets, with each long-level question's responses replaced by its long-prompt ones.

    The PLAIN prompt of the short set is kept, so training maps the plain question to long reasoning
    (see the module docstring). `graded_long` must hold exactly the long-level questions.
    """
    check_unique_ids(graded_long)
    long_ids = set(long_prompt_questions({g.question_id: levels[g.question_id] for g in graded_short}, cfg))
    by_id = {g.question_id: g for g in graded_long}
    if set(by_id) != long_ids:
        lacking, extra = sorted(long_ids - set(by_id)), sorted(set(by_id) - long_ids)
        raise ValueError(f"long-prompt sets must cover exactly the questions of levels {cfg.long_levels}: "
                         f"{len(lacking)} missing {lacking[:5]}, {len(extra)} unexpected {extra[:5]}")
    merged = []
    for g in graded_short:
        long = by_id.get(g.question_id)
        if long is None:
            merged.append(copy_graded(g))
        else:
            check_graded(long)
            merged.append(replace(copy_graded(long), prompt=g.prompt, gold=g.gold))
    return merged


def length_report(graded_before: Sequence[GradedSet], graded_after: Sequence[GradedSet],
                  levels: Mapping[str, str]) -> dict[str, Any]:
    """Per level (and "all"): correct responses, questions with one, and their mean length in characters and
    tokens (None where no correct response or no token counts), before and after."""
    before = {g.question_id: g for g in graded_before}
    after = {g.question_id: g for g in graded_after}
    absent = [qid for qid in levels if qid not in before or qid not in after]
    if absent:
        raise ValueError(f"{len(absent)} questions of `levels` lack a before or after set, e.g. {absent[:5]}")
    level_hist = level_histogram(levels)
    report: dict[str, Any] = {}
    for lv in [*LEVELS, "all"]:
        ids = [qid for qid, q_lv in levels.items() if lv in (q_lv, "all")]
        if lv != "all" and not level_hist[lv]:
            continue
        report[lv] = {"questions": len(ids), "before": correct_lengths([before[q] for q in ids]),
                      "after": correct_lengths([after[q] for q in ids])}
    return report


def correct_lengths(sets: Sequence[GradedSet]) -> dict[str, Any]:
    chars, tokens, solved = [], [], 0
    for g in sets:
        has_tokens = len(g.num_tokens) == len(g.responses)
        picked = [i for i, ok in enumerate(g.correct) if ok]
        solved += bool(picked)
        chars += [len(g.responses[i]) for i in picked]
        tokens += [g.num_tokens[i] for i in picked] if has_tokens else []
    return {"correct": len(chars), "questions_with_correct": solved,
            "mean_chars": sum(chars) / len(chars) if chars else None,
            "mean_tokens": sum(tokens) / len(tokens) if tokens else None}
