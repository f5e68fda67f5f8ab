"""DAST difficulty levels from sampled accuracy (and optionally greedy correctness), SPEC section 3.

    difficulty_level(0.55)                         -> "medium"
    difficulty_level(0.0, greedy_correct=True)     -> "hardest"
    difficulty_levels(stats)                       -> {question_id: level}

Levels, easiest to hardest: "easiest", "easy", "medium", "hard", "hardest", "unsolved" (`LEVELS`;
`level_rank` gives 0..5). With the default cut points (the official DAST code's GSM8K buckets),
where A is the share of correct samples:

    easiest    A == 1
    easy       0.7 <  A < 1
    medium     0.4 <= A <= 0.7     both cuts 0.7 and 0.4 belong to medium
    hard       0.1 <  A < 0.4
    hardest    0   <  A <= 0.1     the cut 0.1 belongs to hardest
    unsolved   A == 0 (no correct sample), unless the greedy answer is correct

The official code puts the same boundaries on its score and sends a question with no correct answer
to a "weak" level if any sample is correct and "unknown" otherwise. Here `greedy_correct` matters only
when no sample is correct: a correct greedy answer means the model can solve the question, so it is
"hardest", not "unsolved". None (not evaluated) and False leave it "unsolved".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from east.records import QuestionStats

LEVELS: tuple[str, ...] = ("easiest", "easy", "medium", "hard", "hardest", "unsolved")


@dataclass(frozen=True)
class DifficultyCuts:
    """Cut points on the sampled accuracy A; each name says which side is inclusive.

    easy_above:  A >  easy_above (and A < 1)  is "easy";  A == easy_above is "medium"
    medium_from: A >= medium_from             is "medium" (up to easy_above inclusive)
    hard_above:  A >  hard_above              is "hard";  A == hard_above is "hardest"
    """

    easy_above: float = 0.7
    medium_from: float = 0.4
    hard_above: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.hard_above < self.medium_from <= self.easy_above < 1:
            raise ValueError(
                "difficulty cuts must satisfy 0 < hard_above < medium_from <= easy_above < 1, got "
                f"hard_above={self.hard_above}, medium_from={self.medium_from}, easy_above={self.easy_above}"
            )


GSM8K_CUTS = DifficultyCuts()


def difficulty_level(accuracy: float, greedy_correct: bool | None = None, cuts: DifficultyCuts = GSM8K_CUTS) -> str:
    """The DAST level of a question with sampled accuracy `accuracy` in [0, 1] (see the module docstring)."""
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    if accuracy == 1:
        return "easiest"
    if accuracy > cuts.easy_above:
        return "easy"
    if accuracy >= cuts.medium_from:
        return "medium"
    if accuracy > cuts.hard_above:
        return "hard"
    if accuracy > 0 or greedy_correct:
        return "hardest"
    return "unsolved"


def level_rank(level: str) -> int:
    """0 for "easiest" up to 5 for "unsolved"."""
    try:
        return LEVELS.index(level)
    except ValueError:
        raise ValueError(f"unknown difficulty level {level!r}; levels are {', '.join(LEVELS)}") from None


def difficulty_levels(
    stats: Sequence[QuestionStats],
    greedy_correct: Mapping[str, bool] | None = None,
    cuts: DifficultyCuts = GSM8K_CUTS,
) -> dict[str, str]:
    """{question_id: level} from per-question statistics (of the initial model M0, for DAST)."""
    greedy = greedy_correct or {}
    return {s.question_id: difficulty_level(s.accuracy, greedy.get(s.question_id), cuts) for s in stats}
