"""Training rows from graded samples and per-question weights, in TRL's standard (string) formats (SPEC section 2).

    stats = question_stats(graded, a=1.5)
    rows = sft_rows(graded, stats, seed=0)                  # {question_id, prompt, completion, weight}
    rows, counts = dpo_rows(graded, stats, seed=0)          # {question_id, prompt, chosen, rejected, weight}
    rows, counts = kto_rows(graded, stats, seed=0)          # {question_id, prompt, completion, label, weight}

Only kept questions (`QuestionStats.kept`) give rows; each row carries its question's weight, copied
unchanged, so the weights have mean 1 over kept questions, not over rows. `prompt` is the exact
rendered prompt the responses were sampled from.

Choices (the paper's, then ours where it is silent):
- positive: a random correct response (uniform over responses, so a frequent text is likelier);
- negative: a random response carrying the most frequent incorrect answer; ties between incorrect
  answers go to the smallest cluster key (the order of `signals.incorrect_clusters`, the same
  answer the rejection signal counts). Responses without an answer (NO_ANSWER) are used as the
  negative only when no incorrect response has an answer (`no_answer_negatives=True`, the
  default): a correct solution is still preferable to one that never reaches an answer. Such
  questions are counted as "no_answer_negative"; with False they are dropped as "no_incorrect";
- SFT "one" and the first DPO / KTO pair use the same random draws, so with the same seed the SFT
  completion is the DPO `chosen` and the KTO desirable completion (SFT uses the positive);
- several pairs: distinct (chosen text, rejected text) pairs, the first as above, the rest drawn
  uniformly without replacement from all distinct text pairs, up to the number available;
- `boxed_only=True` keeps only responses containing `\\boxed{` (the official preprocessing), before
  any choice; a question left without a positive (or negative) is dropped and counted.
Randomness: one `random.Random` per question, seeded from (seed, question_id), so rows do not depend
on the order or number of the other questions.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any, Literal

from east.records import NO_ANSWER, GradedSet, QuestionStats
from east.weighting.signals import incorrect_clusters

log = logging.getLogger(__name__)

BOXED = "\\boxed{"

Row = dict[str, Any]


def sft_rows(
    graded: Sequence[GradedSet],
    stats: Sequence[QuestionStats],
    *,
    mode: Literal["one", "all_distinct"] = "one",
    seed: int,
    boxed_only: bool = False,
) -> list[Row]:
    """Prompt-completion rows of correct responses: one random one per kept question ("one", the paper)
    or every distinct correct response text ("all_distinct", in order of first appearance)."""
    if mode not in ("one", "all_distinct"):
        raise ValueError(f"unknown SFT mode {mode!r}; choose 'one' or 'all_distinct'")
    rows: list[Row] = []
    without_positive = 0
    for g, s in kept_questions(graded, stats):
        usable = usable_indices(g, boxed_only)
        if not any(g.correct[i] for i in usable):
            without_positive += 1
            continue
        if mode == "one":
            texts = positive_texts(g, usable, question_rng(seed, g.question_id))[:1]
        else:
            texts = distinct_texts(g, [i for i in usable if g.correct[i]])
        rows += [{"question_id": g.question_id, "prompt": g.prompt, "completion": t, "weight": float(s.weight)}
                 for t in texts]
    if without_positive:
        log.info("SFT rows: %d kept questions have no correct%s response and give no row",
                 without_positive, " boxed" if boxed_only else "")
    return rows


def dpo_rows(
    graded: Sequence[GradedSet],
    stats: Sequence[QuestionStats],
    *,
    pairs_per_question: int = 1,
    seed: int,
    boxed_only: bool = False,
    no_answer_negatives: bool = True,
) -> tuple[list[Row], dict[str, int]]:
    """Preference rows (positive = random correct response, negative = random response with the most
    frequent incorrect answer) and counts of the questions that gave rows or were dropped, and why."""
    rows: list[Row] = []
    counts = empty_counts()
    for g, s, pairs in question_pairs(graded, stats, pairs_per_question, seed, boxed_only, no_answer_negatives, counts):
        rows += [{"question_id": g.question_id, "prompt": g.prompt, "chosen": c, "rejected": r, "weight": float(s.weight)}
                 for c, r in pairs]
    counts["rows"] = len(rows)
    return rows, counts


def kto_rows(
    graded: Sequence[GradedSet],
    stats: Sequence[QuestionStats],
    *,
    pairs_per_question: int = 1,
    seed: int,
    boxed_only: bool = False,
    no_answer_negatives: bool = True,
) -> tuple[list[Row], dict[str, int]]:
    """Unpaired rows: the responses `dpo_rows` would pair, each distinct text once, desirable (label True)
    first, then undesirable (label False). Questions without both kinds are dropped and counted."""
    rows: list[Row] = []
    counts = empty_counts()
    for g, s, pairs in question_pairs(graded, stats, pairs_per_question, seed, boxed_only, no_answer_negatives, counts):
        for label, texts in ((True, [c for c, _ in pairs]), (False, [r for _, r in pairs])):
            rows += [{"question_id": g.question_id, "prompt": g.prompt, "completion": t, "label": label,
                      "weight": float(s.weight)} for t in dict.fromkeys(texts)]
    counts["rows"] = len(rows)
    return rows, counts


def empty_counts() -> dict[str, int]:
    """Question counts of a DPO / KTO selection: kept, with rows, and dropped by reason."""
    return {"kept": 0, "with_rows": 0, "no_correct": 0, "no_incorrect": 0, "no_answer_negative": 0, "pairs": 0, "rows": 0}


def question_pairs(graded, stats, pairs_per_question, seed, boxed_only, no_answer_negatives, counts):
    """(GradedSet, QuestionStats, [(chosen, rejected), ...]) for each kept question that has a pair; updates counts."""
    if pairs_per_question < 1:
        raise ValueError(f"pairs_per_question must be >= 1, got {pairs_per_question}")
    for g, s in kept_questions(graded, stats):
        counts["kept"] += 1
        usable = usable_indices(g, boxed_only)
        rng = question_rng(seed, g.question_id)
        positives = positive_texts(g, usable, rng)  # drawn first: the same draw as sft_rows "one"
        if not positives:
            counts["no_correct"] += 1
            continue
        negatives, is_no_answer = negative_texts(g, usable, rng, no_answer_negatives)
        if not negatives:
            counts["no_incorrect"] += 1
            continue
        counts["no_answer_negative"] += is_no_answer
        pairs = distinct_pairs(positives, negatives, pairs_per_question, rng)
        counts["with_rows"] += 1
        counts["pairs"] += len(pairs)
        yield g, s, pairs


def kept_questions(graded: Sequence[GradedSet], stats: Sequence[QuestionStats]) -> list[tuple[GradedSet, QuestionStats]]:
    """(graded set, its stats) for the kept questions, in graded order; the two lists must cover the same questions."""
    by_id = {s.question_id: s for s in stats}
    graded_ids = [g.question_id for g in graded]
    missing = [qid for qid in graded_ids if qid not in by_id]
    extra = sorted(set(by_id) - set(graded_ids))
    if missing or extra or len(set(graded_ids)) != len(graded_ids):
        raise ValueError(
            f"graded sets and stats must cover the same questions once each: {len(missing)} graded without stats "
            f"{missing[:5]}, {len(extra)} stats without graded set {extra[:5]}, "
            f"{len(graded_ids) - len(set(graded_ids))} duplicated graded ids; compute stats from these graded sets"
        )
    return [(g, by_id[g.question_id]) for g in graded if by_id[g.question_id].kept]


def question_rng(seed: int, question_id: str) -> random.Random:
    """A generator for one question: str seeds are hashed with SHA-512, so it is stable across runs and processes."""
    return random.Random(f"{seed}:{question_id}")


def usable_indices(g: GradedSet, boxed_only: bool) -> list[int]:
    """Indices of the responses that may become training rows."""
    if len(g.responses) != len(g.keys) or len(g.correct) != len(g.keys):
        raise ValueError(f"question {g.question_id}: {len(g.responses)} responses, {len(g.keys)} keys, "
                         f"{len(g.correct)} verdicts; grading must give one of each per response")
    return [i for i, r in enumerate(g.responses) if not boxed_only or BOXED in r]


def positive_texts(g: GradedSet, usable: list[int], rng: random.Random) -> list[str]:
    """Distinct correct response texts in random order; the first is a uniformly random correct response."""
    return shuffled_distinct_texts(g, [i for i in usable if g.correct[i]], rng)


def negative_texts(g: GradedSet, usable: list[int], rng: random.Random, no_answer_negatives: bool) -> tuple[list[str], bool]:
    """Distinct texts of the responses carrying the most frequent incorrect answer, in random order
    (the first a uniformly random such response), and whether they are NO_ANSWER responses."""
    keys = [g.keys[i] for i in usable]
    correct = [g.correct[i] for i in usable]
    clusters = incorrect_clusters(keys, correct)
    if clusters:
        key, is_no_answer = clusters[0][0], False
    elif no_answer_negatives and any(k == NO_ANSWER and not ok for k, ok in zip(keys, correct)):
        key, is_no_answer = NO_ANSWER, True
    else:
        return [], False
    carrying = [i for i in usable if g.keys[i] == key and not g.correct[i]]
    return shuffled_distinct_texts(g, carrying, rng), is_no_answer


def shuffled_distinct_texts(g: GradedSet, indices: list[int], rng: random.Random) -> list[str]:
    order = list(indices)
    rng.shuffle(order)
    return distinct_texts(g, order)


def distinct_texts(g: GradedSet, indices: list[int]) -> list[str]:
    """The response texts at `indices`, duplicates removed, first occurrence kept."""
    return list(dict.fromkeys(g.responses[i] for i in indices))


def distinct_pairs(positives: list[str], negatives: list[str], k: int, rng: random.Random) -> list[tuple[str, str]]:
    """k distinct (positive, negative) pairs (fewer if fewer exist): (positives[0], negatives[0]) first,
    the rest uniformly without replacement; pairs are drawn as indices so the product is never built."""
    total = len(positives) * len(negatives)
    picks = [0] + rng.sample(range(1, total), min(k, total) - 1)
    return [(positives[p // len(negatives)], negatives[p % len(negatives)]) for p in picks]
