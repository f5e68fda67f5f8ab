"""DAST: levels and targets, the budgeted DAST-P loop (target, cap, budget), DAST-P rows, DAST-L prompts and merge."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from east.dast import (
    DastConfig,
    dast_p_dpo_rows,
    dast_p_rounds,
    dast_p_sft_rows,
    length_report,
    level_histogram,
    long_few_shot_examples,
    long_prompt_questions,
    merge_long,
    question_levels,
    target_correct,
)
from east.records import NO_ANSWER, GradedSet, Question
from east.selection import dpo_rows, sft_rows
from east.tasks.arith import make_questions
from east.weighting import LEVELS, question_stats


def graded(qid: str, items: list[tuple[str, str, bool]], prompt: str | None = None) -> GradedSet:
    """items: (response text, cluster key, correct)."""
    return GradedSet(question_id=qid, prompt=prompt or f"<prompt {qid}>", responses=[r for r, _, _ in items],
                     num_tokens=[len(r) for r, _, _ in items], finished=[True] * len(items), gold="1",
                     answers=[None if k == NO_ANSWER else k for _, k, _ in items], keys=[k for _, k, _ in items],
                     correct=[c for _, _, c in items])


def first_round(qid: str, n: int, n_correct: int, distinct: bool = True) -> GradedSet:
    """n samples, the first n_correct correct (distinct texts unless told), the rest the wrong answer "9"."""
    return graded(qid, [(f"{qid} ok {i if distinct else 0}", "1", True) for i in range(n_correct)]
                  + [(f"{qid} bad {i}", "9", False) for i in range(n - n_correct)])


class FakeSampler:
    """sample_more with a fixed behaviour per question; `pattern(j)` gives the j-th extra sample of a question."""

    PATTERNS = {
        "new_correct": lambda qid, j: (f"{qid} new ok {j}", "1", True),  # a new distinct correct text each time
        "same_correct": lambda qid, j: (f"{qid} ok 0", "1", True),  # always the same correct text
        "never": lambda qid, j: (f"{qid} new bad {j}", "9", False),
        "late": lambda qid, j: (f"{qid} late ok {j}", "1", True) if j >= 5 else (f"{qid} late bad {j}", "8", False),
    }

    def __init__(self, patterns: dict[str, str]):
        self.patterns = patterns
        self.drawn = dict.fromkeys(patterns, 0)
        self.calls: list[tuple[list[str], int, int]] = []

    def __call__(self, ids: list[str], n: int, round_index: int) -> list[GradedSet]:
        self.calls.append((list(ids), n, round_index))
        out = []
        for qid in ids:
            items = [self.PATTERNS[self.patterns[qid]](qid, self.drawn[qid] + j) for j in range(n)]
            self.drawn[qid] += n
            out.append(graded(qid, items))
        return out


def n_of(merged: list[GradedSet], qid: str) -> int:
    return len(next(g for g in merged if g.question_id == qid).keys)


# ----------------------------------------------------------------------------------------------------
# levels, targets, config


def test_levels_use_the_cut_points():
    cfg = DastConfig()
    sets = [first_round("a", 10, 10), first_round("b", 10, 7), first_round("c", 10, 4), first_round("d", 10, 3),
            first_round("e", 10, 1), first_round("f", 10, 0)]
    assert question_levels(sets, cfg) == {"a": "easiest", "b": "medium", "c": "medium", "d": "hard",
                                          "e": "hardest", "f": "unsolved"}
    # greedy verdicts rescue an unsolved question only when asked to
    assert question_levels(sets, cfg, {"f": True})["f"] == "unsolved"
    assert question_levels(sets, DastConfig(use_greedy=True), {"f": True})["f"] == "hardest"
    with pytest.raises(ValueError, match="greedy"):
        question_levels(sets, DastConfig(use_greedy=True))
    moved = DastConfig(easy_above=0.8, medium_from=0.5, hard_above=0.2)
    assert question_levels(sets, moved)["b"] == "medium" and question_levels(sets, moved)["c"] == "hard"


def test_targets_grow_with_difficulty_and_clip():
    cfg = DastConfig(base_target=1, max_target=4)
    by_level = [target_correct(lv, cfg) for lv in LEVELS]
    assert by_level == sorted(by_level) and by_level[0] == 1 and by_level[-1] == 4
    assert by_level == [1, 1, 2, 3, 4, 4]
    assert target_correct(1.0, cfg) == 1 and target_correct(0.0, cfg) == 4 and target_correct(0.5, cfg) == 2
    assert target_correct(0.5, DastConfig(base_target=1, max_target=5)) == 3  # 2.5 rounds half up
    assert target_correct(0.9, DastConfig(base_target=2, max_target=6)) == 2  # clipped up to base
    uniform = DastConfig(target="uniform", base_target=2, max_target=5)
    assert [target_correct(lv, uniform) for lv in LEVELS] == [2, 2, 2, 2, 2, 5]
    with pytest.raises(ValueError, match="unknown difficulty level"):
        target_correct("trivial", cfg)
    with pytest.raises(ValueError):
        target_correct(1.5, cfg)


def test_config_validation():
    with pytest.raises(ValidationError, match="extra"):
        DastConfig(budget=3)
    with pytest.raises(ValidationError, match="difficulty cuts"):
        DastConfig(easy_above=0.3)
    with pytest.raises(ValidationError, match="base_target"):
        DastConfig(base_target=5, max_target=2)
    with pytest.raises(ValidationError, match="unknown levels"):
        DastConfig(long_levels=["hard", "impossible"])
    assert all(f.description for f in DastConfig.model_fields.values())


def test_level_histogram():
    assert level_histogram({"a": "hard", "b": "hard", "c": "easiest"}) == {
        "easiest": 1, "easy": 0, "medium": 0, "hard": 2, "hardest": 0, "unsolved": 0}
    with pytest.raises(ValueError, match="unknown levels"):
        level_histogram({"a": "trivial"})


# ----------------------------------------------------------------------------------------------------
# DAST-P loop


def test_loop_stops_at_target():
    cfg = DastConfig(max_target=4, round_size=2, cap_per_question=40, global_budget=1000)
    sets = [first_round("easy", 10, 10), first_round("hard", 10, 2)]  # hard: A = 0.2, target 3, has 2
    sampler = FakeSampler({"easy": "new_correct", "hard": "new_correct"})
    merged, report = dast_p_rounds(sets, cfg, sampler)
    assert sampler.calls == [(["hard"], 2, 1)]  # one round was enough; "easiest" already at its target 1
    assert n_of(merged, "hard") == 12 and n_of(merged, "easy") == 10
    assert report["levels"]["hard"]["reached_target"] == 1 and report["levels"]["hard"]["kept"] == 3
    assert report["levels"]["hard"]["correct_distinct"] == 4 and report["levels"]["hard"]["target"] == 3
    assert report["extra_samples"] == 2 and report["calls"] == 1
    # merged lists are the first round followed by the new responses; the input is not modified
    hard = merged[1]
    assert hard.responses[:10] == sets[1].responses and hard.responses[10:] == ["hard new ok 0", "hard new ok 1"]
    assert len(hard.keys) == len(hard.correct) == len(hard.answers) == len(hard.num_tokens) == len(hard.finished) == 12
    assert len(sets[1].responses) == 10


def test_loop_stops_at_cap_with_a_short_last_round():
    cfg = DastConfig(max_target=4, round_size=2, cap_per_question=15, global_budget=1000)
    sets = [first_round("stuck", 10, 1)]  # hardest, target 4; the sampler never adds a new correct text
    sampler = FakeSampler({"stuck": "same_correct"})
    merged, report = dast_p_rounds(sets, cfg, sampler)
    assert [(n, r) for _, n, r in sampler.calls] == [(2, 1), (2, 2), (1, 3)]  # the last round stops at the cap
    assert n_of(merged, "stuck") == 15
    assert report["levels"]["hardest"]["hit_cap"] == 1 and report["levels"]["hardest"]["kept"] == 1
    assert report["total"]["samples"] == 15 and report["budget_left"] == 995


def test_unsolved_questions_are_retried_up_to_the_cap():
    cfg = DastConfig(max_target=2, round_size=3, cap_per_question=16, global_budget=1000)
    sets = [first_round("hopeless", 4, 0), first_round("late", 4, 0)]
    sampler = FakeSampler({"hopeless": "never", "late": "late"})
    merged, report = dast_p_rounds(sets, cfg, sampler)
    assert n_of(merged, "hopeless") == 16  # 4 + 3 + 3 + 3 + 3: retried until the cap
    # "late" answers correctly from its 6th extra sample on: 6 extra samples give 1 correct, 9 give 4
    assert n_of(merged, "late") == 13
    row = report["levels"]["unsolved"]
    assert row["questions"] == 2 and row["solved"] == 1 and row["reached_target"] == 1 and row["hit_cap"] == 1
    assert row["samples_first"] == 8 and row["samples_extra"] == 12 + 9 and row["kept"] == 2


def test_global_budget_is_never_exceeded_and_goes_hardest_first():
    cfg = DastConfig(max_target=4, round_size=3, cap_per_question=100, global_budget=7)
    sets = [first_round("medium", 10, 5), first_round("hard1", 10, 2), first_round("unsolved", 10, 0),
            first_round("hard2", 10, 2)]
    sampler = FakeSampler(dict.fromkeys(["medium", "hard1", "unsolved", "hard2"], "never"))
    merged, report = dast_p_rounds(sets, cfg, sampler)
    # one round: unsolved 3, then the hard ones in input order, hard1 3, hard2 the 1 left; medium (5 distinct
    # correct, target 2) needs none
    assert sampler.calls == [(["unsolved", "hard1"], 3, 1), (["hard2"], 1, 2)]
    assert [n_of(merged, q) for q in ("medium", "hard1", "unsolved", "hard2")] == [10, 13, 13, 11]
    assert report["extra_samples"] == 7 and report["budget_left"] == 0
    assert report["total"]["stopped_by_budget"] == 3 and report["total"]["reached_target"] == 1
    assert [g.question_id for g in merged] == ["medium", "hard1", "unsolved", "hard2"]  # input order kept


def test_zero_budget_samples_nothing():
    sets = [first_round("q", 10, 2)]
    sampler = FakeSampler({"q": "new_correct"})
    merged, report = dast_p_rounds(sets, DastConfig(global_budget=0), sampler)
    assert sampler.calls == [] and merged[0].responses == sets[0].responses
    assert report["levels"]["hard"]["stopped_by_budget"] == 1


def test_report_counts_per_level():
    cfg = DastConfig(max_target=4, round_size=4, cap_per_question=18, global_budget=1000)
    sets = [first_round("e1", 10, 10, distinct=False), first_round("e2", 10, 10), first_round("m", 10, 5),
            first_round("h", 10, 1), first_round("u", 10, 0)]
    sampler = FakeSampler({"e1": "never", "e2": "never", "m": "same_correct", "h": "new_correct", "u": "never"})
    merged, report = dast_p_rounds(sets, cfg, sampler)
    levels = report["levels"]
    assert set(levels) == {"easiest", "medium", "hardest", "unsolved"}
    assert levels["easiest"] == {"target": 1, "questions": 2, "samples_first": 20, "samples_extra": 0, "samples": 20,
                                 "correct_distinct": 11, "kept": 2, "solved": 2, "reached_target": 2, "hit_cap": 0,
                                 "stopped_by_budget": 0}
    assert levels["medium"]["reached_target"] == 1 and levels["medium"]["samples_extra"] == 0  # 5 distinct >= 2
    assert levels["hardest"]["samples_extra"] == 4 and levels["hardest"]["kept"] == 4
    assert levels["unsolved"]["hit_cap"] == 1 and levels["unsolved"]["samples"] == 18 and levels["unsolved"]["solved"] == 0
    assert report["total"]["questions"] == 5 and report["extra_samples"] == 12


def test_sampler_that_answers_wrongly_is_rejected():
    sets = [first_round("q", 10, 1)]

    def too_many(ids, n, r):
        return [first_round(q, n + 1, 0) for q in ids]

    def other_prompt(ids, n, r):
        return [graded(q, [("x", "9", False)] * n, prompt="few-shot prompt") for q in ids]

    def missing(ids, n, r):
        return []

    for bad, message in ((too_many, "asked for"), (other_prompt, "different prompt"), (missing, "one GradedSet")):
        with pytest.raises(ValueError, match=message):
            dast_p_rounds(sets, DastConfig(), bad)


@settings(max_examples=40, deadline=None)
@given(
    accs=st.lists(st.integers(0, 8), min_size=1, max_size=6),
    patterns=st.lists(st.sampled_from(sorted(FakeSampler.PATTERNS)), min_size=6, max_size=6),
    round_size=st.integers(1, 5),
    cap=st.integers(1, 30),
    budget=st.integers(0, 40),
)
def test_budget_and_cap_hold_for_any_plan(accs, patterns, round_size, cap, budget):
    cfg = DastConfig(round_size=round_size, cap_per_question=cap, global_budget=budget)
    sets = [first_round(f"q{i}", 8, k) for i, k in enumerate(accs)]
    sampler = FakeSampler({f"q{i}": patterns[i] for i in range(len(accs))})
    merged, report = dast_p_rounds(sets, cfg, sampler)
    assert report["extra_samples"] == sum(n for ids, n, _ in sampler.calls for _ in ids) <= budget
    assert [r for _, _, r in sampler.calls] == list(range(1, len(sampler.calls) + 1))
    for first, g in zip(sets, merged):
        assert len(g.keys) <= max(cap, len(first.keys))
    if report["total"]["stopped_by_budget"]:
        assert report["budget_left"] < round_size or report["budget_left"] == 0
    outcomes = sum(report["total"][k] for k in ("reached_target", "hit_cap", "stopped_by_budget"))
    assert outcomes == len(sets)


# ----------------------------------------------------------------------------------------------------
# DAST-P rows


def dast_p_data():
    cfg = DastConfig(max_target=4, round_size=4, cap_per_question=30, global_budget=1000)
    sets = [first_round("easiest", 10, 10), first_round("medium", 10, 5), first_round("hard", 10, 2),
            first_round("unsolved", 10, 0)]
    levels = question_levels(sets, cfg)
    sampler = FakeSampler({"easiest": "never", "medium": "never", "hard": "new_correct", "unsolved": "late"})
    merged, _ = dast_p_rounds(sets, cfg, sampler, levels=levels)
    return cfg, levels, merged


def test_sft_rows_give_harder_questions_more_rows():
    cfg, levels, merged = dast_p_data()
    stats = question_stats(merged, mapping="uniform", keep_all_correct=True)
    rows = dast_p_sft_rows(merged, stats, levels, cfg, seed=0)
    per_q = {q: sum(r["question_id"] == q for r in rows) for q in levels}
    assert per_q == {"easiest": 1, "medium": 2, "hard": 3, "unsolved": 4}  # the unsolved one got solved
    assert all(set(r) == {"question_id", "prompt", "completion", "weight"} and r["weight"] == 1.0 for r in rows)
    by_q = {g.question_id: g for g in merged}
    for r in rows:
        g = by_q[r["question_id"]]
        assert r["prompt"] == g.prompt and g.correct[g.responses.index(r["completion"])]
    assert len({(r["question_id"], r["completion"]) for r in rows}) == len(rows)  # distinct texts
    # the first row of each question is the one selection.sft_rows picks with the same seed
    ones = {r["question_id"]: r["completion"] for r in sft_rows(merged, stats, seed=0)}
    firsts = {}
    for r in rows:
        firsts.setdefault(r["question_id"], r["completion"])
    assert firsts == ones


def test_sft_rows_copy_east_weights():
    cfg, levels, merged = dast_p_data()
    stats = question_stats(merged, signal="entropy", a=1.0, keep_all_correct=True)
    weights = {s.question_id: s.weight for s in stats}
    rows = dast_p_sft_rows(merged, stats, levels, cfg, seed=0)
    assert all(r["weight"] == weights[r["question_id"]] for r in rows)
    assert weights["easiest"] == 0.0  # h = 0: kept but weightless with a > 0 (SPEC section 4)


def test_dpo_rows_pair_each_kept_positive_with_frequent_negatives():
    cfg, levels, merged = dast_p_data()
    stats = question_stats(merged, mapping="uniform", keep_all_correct=True)
    rows, counts = dast_p_dpo_rows(merged, stats, levels, cfg, seed=0)
    per_q = {q: sum(r["question_id"] == q for r in rows) for q in levels}
    assert per_q == {"easiest": 0, "medium": 2, "hard": 3, "unsolved": 4}
    assert counts["kept"] == 4 and counts["no_incorrect"] == 1 and counts["with_rows"] == 3
    assert counts["pairs"] == counts["rows"] == 9
    # "unsolved" has wrong answers "9" (10 first-round samples) and "8" (5 late ones): "9" comes first
    unsolved = [r for r in rows if r["question_id"] == "unsolved"]
    assert all(r["rejected"].startswith("unsolved bad") for r in unsolved)
    assert len({r["rejected"] for r in unsolved}) == 4 and len({r["chosen"] for r in unsolved}) == 4
    # the first pair is selection.dpo_rows' pair with the same seed
    first = {}
    for r in rows:
        first.setdefault(r["question_id"], (r["chosen"], r["rejected"]))
    plain, _ = dpo_rows(merged, stats, seed=0)
    assert first == {r["question_id"]: (r["chosen"], r["rejected"]) for r in plain}


def test_dpo_negatives_cycle_and_fall_back_to_no_answer():
    cfg = DastConfig(max_target=4)
    g = graded("q", [("a", "1", True), ("b", "1", True), ("c", "1", True), ("?", NO_ANSWER, False)])
    levels = {"q": "hardest"}  # target 4 but only 3 positives, one NO_ANSWER negative
    stats = question_stats([g], mapping="uniform")
    rows, counts = dast_p_dpo_rows([g], stats, levels, cfg, seed=1)
    assert sorted(r["chosen"] for r in rows) == ["a", "b", "c"] and {r["rejected"] for r in rows} == {"?"}
    assert counts["no_answer_negative"] == 1
    rows, counts = dast_p_dpo_rows([g], stats, levels, cfg, seed=1, no_answer_negatives=False)
    assert rows == [] and counts["no_incorrect"] == 1


def test_rows_need_levels_for_every_question():
    cfg, levels, merged = dast_p_data()
    stats = question_stats(merged, mapping="uniform", keep_all_correct=True)
    with pytest.raises(ValueError, match="no difficulty level"):
        dast_p_sft_rows(merged, stats, {"easiest": "easiest"}, cfg, seed=0)


# ----------------------------------------------------------------------------------------------------
# DAST-L


def test_few_shot_examples_have_the_most_steps():
    pool = make_questions("warmup", 60, seed=0)
    most = max(q.meta["steps"] for q in pool)
    picked = long_few_shot_examples(pool, 4, seed=0)
    assert len(picked) == 4 and all(q.meta["steps"] == most for q in picked)
    assert picked == long_few_shot_examples(pool, 4, seed=0)
    assert len({tuple(q.question_id for q in long_few_shot_examples(pool, 4, seed=s)) for s in range(5)}) > 1
    # without meta["steps"], solution lines count; questions without a solution are never picked
    bare = [Question("a", "?", "1", "x\n\\boxed{1}"), Question("b", "?", "1", "x\ny\nz\n\\boxed{1}"),
            Question("c", "?", "1", None), Question("d", "?", "1", "x\ny\n\\boxed{1}")]
    assert [q.question_id for q in long_few_shot_examples(bare, 2, seed=0)] == ["b", "d"]
    with pytest.raises(ValueError, match="worked solution"):
        long_few_shot_examples(bare, 4, seed=0)


def test_long_prompt_questions_follow_the_levels():
    levels = {"a": "easiest", "b": "easy", "c": "medium", "d": "unsolved", "e": "hard"}
    assert long_prompt_questions(levels, DastConfig()) == ["c", "d", "e"]
    assert long_prompt_questions(levels, DastConfig(long_levels=["unsolved"])) == ["d"]
    stats = question_stats([first_round("x", 10, 3), first_round("y", 10, 9)], mapping="uniform")
    assert long_prompt_questions(stats, DastConfig()) == ["x"]


def test_merge_long_keeps_the_plain_prompt():
    cfg = DastConfig()
    short = [first_round("easy", 10, 9), first_round("hard", 10, 2)]
    levels = {"easy": "easy", "hard": "hard"}
    long = [graded("hard", [("step\nstep\nstep ok", "1", True), ("bad", "9", False)], prompt="EXAMPLES <prompt hard>")]
    merged = merge_long(short, long, levels, cfg)
    assert [g.question_id for g in merged] == ["easy", "hard"]
    assert merged[0].responses == short[0].responses
    assert merged[1].prompt == "<prompt hard>" and merged[1].responses == long[0].responses
    assert merged[1].correct == [True, False] and long[0].prompt.startswith("EXAMPLES")
    with pytest.raises(ValueError, match="missing"):
        merge_long(short, [], levels, cfg)
    with pytest.raises(ValueError, match="unexpected"):
        merge_long(short, long + [graded("easy", [("x", "1", True)])], levels, cfg)


def test_length_report_on_hand_made_data():
    levels = {"e": "easy", "h1": "hard", "h2": "hard"}
    before = [graded("e", [("abcd", "1", True), ("zz", "2", False)]),
              graded("h1", [("ab", "1", True), ("wrong answer", "2", False)]),
              graded("h2", [("x", "2", False)])]
    after = [before[0], graded("h1", [("abcdef", "1", True), ("abcdefgh", "1", True)]),
             graded("h2", [("abcdefghij", "1", True)])]
    after[2].num_tokens = []  # no token counts given for this set
    report = length_report(before, after, levels)
    assert set(report) == {"easy", "hard", "all"}
    assert report["easy"]["before"] == report["easy"]["after"] == {
        "correct": 1, "questions_with_correct": 1, "mean_chars": 4.0, "mean_tokens": 4.0}
    assert report["hard"]["questions"] == 2
    assert report["hard"]["before"] == {"correct": 1, "questions_with_correct": 1, "mean_chars": 2.0, "mean_tokens": 2.0}
    assert report["hard"]["after"] == {"correct": 3, "questions_with_correct": 2, "mean_chars": 8.0, "mean_tokens": 7.0}
    assert report["all"]["after"]["correct"] == 4 and report["all"]["after"]["mean_chars"] == 7.0
    with pytest.raises(ValueError, match="lack"):
        length_report(before[:2], after, levels)
