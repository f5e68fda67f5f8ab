"""Training rows: formats, weights copied to rows, pair rules (ties, NO_ANSWER, boxed filter), determinism."""

from __future__ import annotations

import pytest

from east.records import NO_ANSWER, GradedSet
from east.selection import dpo_rows, kto_rows, sft_rows
from east.weighting import question_stats

NA = NO_ANSWER


def graded(qid: str, items: list[tuple[str, str, bool]]) -> GradedSet:
    """items: (response text, cluster key, correct)."""
    return GradedSet(question_id=qid, prompt=f"<prompt {qid}>", responses=[r for r, _, _ in items],
                     num_tokens=[len(r) for r, _, _ in items], finished=[True] * len(items), gold="1",
                     answers=[None if k == NA else k for _, k, _ in items], keys=[k for _, k, _ in items],
                     correct=[c for _, _, c in items])


def boxed(ans: str, tag: str = "") -> str:
    return f"so {tag} \\boxed{{{ans}}}"


def sample_sets() -> list[GradedSet]:
    return [
        # "3" (2) beats "2" (1); the NO_ANSWER cluster (3) is bigger still but never the top wrong answer
        graded("main", [(boxed("1", "a"), "1", True), (boxed("1", "b"), "1", True), (boxed("3", "c"), "3", False),
                        (boxed("3", "d"), "3", False), (boxed("2", "e"), "2", False),
                        ("rambling", NA, False), ("more", NA, False), ("cut", NA, False)]),
        # tie between wrong answers "5" and "4": the smaller key, "4", wins
        graded("tie", [(boxed("1"), "1", True), ("five x", "5", False), ("four x", "4", False),
                       ("five y", "5", False), ("four y", "4", False)]),
        # the only wrong responses have no answer
        graded("onlyna", [(boxed("1"), "1", True), ("no idea", NA, False), ("no idea either", NA, False)]),
        # correct responses without \boxed{}
        graded("unboxed", [("the answer is 1", "1", True), (boxed("2"), "2", False)]),
        graded("allwrong", [(boxed("2"), "2", False), ("?", NA, False)]),
        graded("allright", [(boxed("1"), "1", True), (boxed("1", "z"), "1", True)]),
    ]


@pytest.fixture
def sets():
    return sample_sets()


@pytest.fixture
def stats(sets):
    return question_stats(sets, a=1.5)


def weight_of(stats, qid):
    return next(s.weight for s in stats if s.question_id == qid)


def test_sft_one_row_per_kept_question(sets, stats):
    rows = sft_rows(sets, stats, seed=0)
    assert [r["question_id"] for r in rows] == ["main", "tie", "onlyna", "unboxed"]
    for r in rows:
        assert set(r) == {"question_id", "prompt", "completion", "weight"}
        g = next(g for g in sets if g.question_id == r["question_id"])
        assert r["prompt"] == g.prompt
        assert g.correct[g.responses.index(r["completion"])]
        assert r["weight"] == weight_of(stats, r["question_id"]) and isinstance(r["weight"], float)


def test_sft_all_distinct(sets, stats):
    dup = graded("dup", [("x", "1", True), ("x", "1", True), ("y", "1", True), ("w", "2", False)])
    sets, stats = sets + [dup], question_stats(sets + [dup])
    rows = sft_rows(sets, stats, mode="all_distinct", seed=0)
    assert [r["completion"] for r in rows if r["question_id"] == "main"] == [boxed("1", "a"), boxed("1", "b")]
    assert [r["completion"] for r in rows if r["question_id"] == "dup"] == ["x", "y"]
    assert {r["weight"] for r in rows if r["question_id"] == "main"} == {weight_of(stats, "main")}
    with pytest.raises(ValueError, match="unknown SFT mode"):
        sft_rows(sets, stats, mode="best", seed=0)


def test_boxed_only(sets, stats):
    rows = sft_rows(sets, stats, seed=0, boxed_only=True)
    assert "unboxed" not in {r["question_id"] for r in rows}
    assert all("\\boxed{" in r["completion"] for r in rows)
    rows, counts = dpo_rows(sets, stats, seed=0, boxed_only=True)
    # unboxed: no boxed correct response; tie and onlyna: no boxed incorrect response left
    assert [r["question_id"] for r in rows] == ["main"]
    assert (counts["no_correct"], counts["no_incorrect"]) == (1, 2)
    assert all("\\boxed{" in r["chosen"] + r["rejected"] for r in rows)


def test_dpo_negative_is_most_frequent_incorrect_answer(sets, stats):
    rows, counts = dpo_rows(sets, stats, seed=0)
    by_q = {r["question_id"]: r for r in rows}
    assert set(by_q) == {"main", "tie", "onlyna", "unboxed"}
    assert by_q["main"]["rejected"] in (boxed("3", "c"), boxed("3", "d"))  # not NO_ANSWER, not "2"
    assert by_q["tie"]["rejected"] in ("four x", "four y")  # tie 5 vs 4 -> smaller key "4"
    assert by_q["onlyna"]["rejected"] in ("no idea", "no idea either")  # NO_ANSWER fallback
    for r in rows:
        assert set(r) == {"question_id", "prompt", "chosen", "rejected", "weight"}
        assert r["weight"] == weight_of(stats, r["question_id"])
    assert counts == {"kept": 4, "with_rows": 4, "no_correct": 0, "no_incorrect": 0,
                      "no_answer_negative": 1, "pairs": 4, "rows": 4}


def test_dpo_without_no_answer_negatives(sets, stats):
    rows, counts = dpo_rows(sets, stats, seed=0, no_answer_negatives=False)
    assert "onlyna" not in {r["question_id"] for r in rows}
    assert counts["no_incorrect"] == 1 and counts["no_answer_negative"] == 0


def test_all_no_answer_question_never_selected():
    sets = [graded("na", [("a", NA, False), ("b", NA, False)]), graded("ok", [("1", "1", True), ("2", "2", False)])]
    stats = question_stats(sets)
    assert stats[0].drop_reason == "all_wrong"
    assert [r["question_id"] for r in sft_rows(sets, stats, seed=0)] == ["ok"]
    assert [r["question_id"] for r in dpo_rows(sets, stats, seed=0)[0]] == ["ok"]


def test_keep_all_correct_question_has_no_pair(sets):
    stats = question_stats(sets, keep_all_correct=True)
    assert "allright" in {r["question_id"] for r in sft_rows(sets, stats, seed=0)}
    rows, counts = dpo_rows(sets, stats, seed=0)
    assert "allright" not in {r["question_id"] for r in rows}
    assert counts["kept"] == 5 and counts["no_incorrect"] == 1


def test_several_pairs_are_distinct_and_capped(sets, stats):
    rows, counts = dpo_rows(sets, stats, seed=3, pairs_per_question=10)
    main = [(r["chosen"], r["rejected"]) for r in rows if r["question_id"] == "main"]
    assert len(main) == len(set(main)) == 4  # 2 distinct correct x 2 distinct "3" responses
    tie = [r for r in rows if r["question_id"] == "tie"]
    assert len(tie) == 2  # 1 correct x 2 "4" responses
    assert counts["pairs"] == len(rows) == 4 + 2 + 2 + 1
    two, _ = dpo_rows(sets, stats, seed=3, pairs_per_question=2)
    assert len([r for r in two if r["question_id"] == "main"]) == 2
    with pytest.raises(ValueError, match="pairs_per_question"):
        dpo_rows(sets, stats, seed=0, pairs_per_question=0)


def test_duplicate_texts_do_not_make_duplicate_pairs():
    g = graded("q", [("same", "1", True)] * 3 + [("bad", "2", False)] * 3)
    rows, counts = dpo_rows([g], question_stats([g]), seed=0, pairs_per_question=5)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("same", "bad")]


def test_kto_rows(sets, stats):
    rows, counts = kto_rows(sets, stats, seed=0)
    main = [r for r in rows if r["question_id"] == "main"]
    assert [r["label"] for r in main] == [True, False]
    for r in rows:
        assert set(r) == {"question_id", "prompt", "completion", "label", "weight"}
        assert r["weight"] == weight_of(stats, r["question_id"])
    assert counts["rows"] == len(rows) == 8 and counts["pairs"] == 4
    many, _ = kto_rows(sets, stats, seed=0, pairs_per_question=10)
    main = [r for r in many if r["question_id"] == "main"]
    assert sum(r["label"] for r in main) == 2 and sum(not r["label"] for r in main) == 2  # each text once


def test_same_seed_gives_the_same_positive_everywhere(sets, stats):
    for seed in range(5):
        sft = {r["question_id"]: r["completion"] for r in sft_rows(sets, stats, seed=seed)}
        dpo = {r["question_id"]: r["chosen"] for r in dpo_rows(sets, stats, seed=seed)[0]}
        kto = {r["question_id"]: r["completion"] for r in kto_rows(sets, stats, seed=seed)[0] if r["label"]}
        assert sft == dpo == kto


def test_selection_is_deterministic_and_order_independent(sets, stats):
    a = dpo_rows(sets, stats, seed=7, pairs_per_question=3)[0]
    assert dpo_rows(sets, stats, seed=7, pairs_per_question=3)[0] == a
    b = dpo_rows(list(reversed(sets)), list(reversed(stats)), seed=7, pairs_per_question=3)[0]
    key = lambda r: (r["question_id"], r["chosen"], r["rejected"])  # noqa: E731
    assert sorted(a, key=key) == sorted(b, key=key)
    # dropping a question leaves the others' rows unchanged
    c = dpo_rows(sets[1:], question_stats(sets[1:], a=1.5), seed=7, pairs_per_question=3)[0]
    assert [key(r) for r in c] == [key(r) for r in a if r["question_id"] != "main"]


def test_seed_changes_choices():
    g = graded("q", [(f"right {i}", "1", True) for i in range(20)] + [(f"wrong {i}", "2", False) for i in range(20)])
    stats = question_stats([g])
    picks = {sft_rows([g], stats, seed=s)[0]["completion"] for s in range(10)}
    assert len(picks) > 1


def test_graded_and_stats_must_match(sets, stats):
    with pytest.raises(ValueError, match="same questions"):
        sft_rows(sets[:-1], stats, seed=0)
    with pytest.raises(ValueError, match="same questions"):
        dpo_rows(sets, stats[:-1], seed=0)
