"""The record types that cross stage boundaries, one per boundary, joined on `question_id`.

    Question        tasks/      -> sampling, evaluation, selection
    SampleSet       sampling/   -> grading             (one row per question, n responses)
    GradedSet       grading/    -> weighting, selection (SampleSet + answers, cluster keys, verdicts)
    QuestionStats   weighting/  -> selection, report   (one row per question, with its weight)
    training rows   selection   -> training            (plain dicts in TRL's formats + `weight`)

Stages write these as Parquet (lists and nested fields survive) that `datasets.load_dataset("parquet", ...)`
opens. Every field is a plain JSON-able value so the same rows also round-trip through JSONL.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self


@dataclass
class Record:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass
class Question(Record):
    question_id: str
    question: str  # the problem text shown to the model (user turn)
    gold: str  # the gold final answer, as a string
    solution: str | None = None  # a worked solution ending in \boxed{gold}, where the task has one
    meta: dict[str, Any] = field(default_factory=dict)  # task-specific: steps, level, type, ...


@dataclass
class SampleSet(Record):
    question_id: str
    prompt: str  # the exact prompt string the model was given (chat template applied)
    responses: list[str]  # n decoded completions, special tokens stripped, cut at EOS / stop string
    num_tokens: list[int]  # generated tokens per response
    finished: list[bool]  # True where the response ended by EOS or a stop string, False if cut at max_new_tokens


@dataclass
class GradedSet(SampleSet):
    gold: str = ""
    answers: list[str | None] = field(default_factory=list)  # extracted final answer, None if none
    keys: list[str] = field(default_factory=list)  # cluster key: normalised answer, NO_ANSWER if none
    correct: list[bool] = field(default_factory=list)
    # grading.verify_steps only (else empty): the final answer matched the gold but the working did not
    # check out, so the verdict above is False (east.grading.steps)
    step_rejected: list[bool] = field(default_factory=list)


NO_ANSWER = "<no answer>"  # the cluster key of responses without an extractable answer (SPEC section 4)


@dataclass
class QuestionStats(Record):
    question_id: str
    n: int
    cluster_keys: list[str]  # sorted by size, largest first; ties by key
    cluster_sizes: list[int]
    n_correct: int
    n_no_answer: int
    entropy: float  # Eq. 1, natural log
    accuracy: float  # A = n_correct / n
    rejection: float  # R = share of the most frequent incorrect answer (no-answer excluded)
    kept: bool
    drop_reason: str | None  # "all_wrong" | "all_correct" | "no_boxed_correct" | "no_boxed_incorrect" | None
    signal: float  # the value fed to the mapping (entropy, 1 - accuracy or rejection)
    weight: float  # 0.0 for dropped questions; mean 1 over kept ones
    level: str | None = None  # DAST difficulty level of the sampling model (easiest ... unsolved)
    n_step_rejected: int = 0  # samples with the gold's final answer refused by step verification (grading.verify_steps)
