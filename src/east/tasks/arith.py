"""The built-in `arith` task: short procedurally generated multi-step word problems (GSM8K-like in
shape, tiny in size) with a worked solution per question that ends in `\\boxed{N}`.

    from east.tasks.arith import ArithSpec, make_questions
    test = make_questions("test", 300, ArithSpec(), seed=0)

A problem is a start value and 1..k operations told as a story, e.g.

    Question: "Mia has 12 figs, buys 7 and sells 5. How many now?"
    Solution: "12+7=19\\n19-5=14\\n\\boxed{14}"

Texts are kept short on purpose: the built-in backbone reads characters, so every character costs
training and sampling time.

Splits ("warmup", "train", "test") are disjoint by construction: each underlying computation (start
value and operation sequence, not the wording) is hashed into one split, independently of seed and
spec, so the same arithmetic never appears in two splits even across seeds or presets. Within a
split, questions are deduplicated by text.
"""

from __future__ import annotations

import hashlib
import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from east.records import Question

Op = Literal["add", "sub", "mul", "div"]
SPLITS = ("warmup", "train", "test")

# Share of the hash space (out of 100) that each split owns. warmup needs thousands of distinct
# problems; train and test hundreds.
_SPLIT_BUCKETS = {"warmup": range(0, 70), "train": range(70, 85), "test": range(85, 100)}

_NAMES = ("Mia", "Bo", "Ana", "Tom", "Lea", "Sam", "Ivy", "Max", "Zoe", "Ben", "Eva", "Leo", "Ada", "Kai", "Nia", "Raj")
_ITEMS = ("figs", "pens", "cards", "eggs", "coins", "shells", "beads", "books", "plums", "stamps", "nuts", "cups")
_ADD_VERBS = ("buys", "finds", "gets", "wins")
_SUB_VERBS = ("sells", "loses", "gives away", "uses")
_MUL_WORDS = {2: "doubles them", 3: "triples them", 4: "quadruples them"}
_DIV_WORDS = {2: "halves them", 3: "keeps a third", 4: "keeps a quarter"}
_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


class ArithSpec(BaseModel):
    """Difficulty of generated problems. The defaults are what the shipped backbone was calibrated on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_steps: int = Field(1, ge=1, description="Fewest operations in a problem.")
    max_steps: int = Field(3, ge=1, description="Most operations in a problem (uniform between min and max).")
    start_min: int = Field(2, ge=0, description="Smallest start value.")
    start_max: int = Field(20, ge=0, description="Largest start value.")
    operand_min: int = Field(1, ge=1, description="Smallest amount added or subtracted.")
    operand_max: int = Field(9, ge=1, description="Largest amount added or subtracted.")
    factors: tuple[int, ...] = Field((2,), description="Multipliers / divisors used by 'mul' and 'div' (each >= 2).")
    ops: tuple[Op, ...] = Field(("add", "sub", "mul"), description="Allowed operations: add, sub, mul, div.")
    max_value: int = Field(99, ge=1, description="Bound on the absolute value of every intermediate result and the answer.")
    allow_negative: bool = Field(False, description="Whether subtraction may go below zero (answers stay >= 0 if False).")

    @model_validator(mode="after")
    def _check_ranges(self) -> ArithSpec:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps {self.min_steps} > max_steps {self.max_steps}")
        if self.start_min > self.start_max:
            raise ValueError(f"start_min {self.start_min} > start_max {self.start_max}")
        if self.operand_min > self.operand_max:
            raise ValueError(f"operand_min {self.operand_min} > operand_max {self.operand_max}")
        if self.start_max > self.max_value:
            raise ValueError(f"start_max {self.start_max} > max_value {self.max_value}")
        if not self.ops:
            raise ValueError("ops must not be empty")
        if any(f < 2 for f in self.factors) or (not self.factors and {"mul", "div"} & set(self.ops)):
            raise ValueError("factors must be non-empty and >= 2 when 'mul' or 'div' is allowed")
        if not {"add", "sub"} & set(self.ops):
            raise ValueError("ops must include 'add' or 'sub' so every step has a feasible operation")
        return self


# The shipped backbone's training distribution (in domain).
ARITH_DEFAULT = ArithSpec()
# Out of domain: longer chains, bigger numbers, division; still integer answers >= 0.
ARITH_HARD = ArithSpec(
    min_steps=3,
    max_steps=5,
    start_min=10,
    start_max=60,
    operand_min=2,
    operand_max=30,
    factors=(2, 3),
    ops=("add", "sub", "mul", "div"),
    max_value=300,
)


def _bucket(key: str) -> int:
    """Stable 0..99 bucket of a computation key (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 100


def split_of(key: str) -> str:
    """The one split that owns a computation key."""
    bucket = _bucket(key)
    return next(name for name, owned in _SPLIT_BUCKETS.items() if bucket in owned)


def _feasible_steps(value: int, spec: ArithSpec) -> list[tuple[str, list[int]]]:
    """(op, feasible arguments) for each allowed op that keeps the value within the spec's bounds."""
    lo, hi = spec.operand_min, spec.operand_max
    floor = -spec.max_value if spec.allow_negative else 0
    options = {
        "add": list(range(lo, min(hi, spec.max_value - value) + 1)),
        "sub": list(range(lo, min(hi, value - floor) + 1)),
        "mul": [f for f in spec.factors if abs(value * f) <= spec.max_value and value != 0],
        "div": [f for f in spec.factors if value != 0 and value % f == 0],
    }
    return [(op, options[op]) for op in spec.ops if options[op]]


def apply_symbol(value: int, symbol: str, arg: int) -> int | None:
    """value symbol arg over the integers, for the solution lines' symbols (+ - * /); None where `/` does not
    divide exactly. Step verification (east.grading.steps) checks written lines with it."""
    if symbol == "+":
        return value + arg
    if symbol == "-":
        return value - arg
    if symbol == "*":
        return value * arg
    if arg == 0 or value % arg:
        return None
    return value // arg


def _apply(op: str, value: int, arg: int) -> int:
    return apply_symbol(value, _SYMBOLS[op], arg)  # generation only divides where it is exact


def _clause(op: str, arg: int, rng: random.Random) -> str:
    """The story phrase of one operation."""
    if op == "add":
        return f"{rng.choice(_ADD_VERBS)} {arg}"
    if op == "sub":
        return f"{rng.choice(_SUB_VERBS)} {arg}"
    if op == "mul":
        return _MUL_WORDS.get(arg, f"multiplies them by {arg}")
    return _DIV_WORDS.get(arg, f"keeps 1/{arg} of them")


def _story(start: int, clauses: list[str], rng: random.Random) -> str:
    head = f"{rng.choice(_NAMES)} has {start} {rng.choice(_ITEMS)}"
    middle = "".join(f", {c}" for c in clauses[:-1])
    return f"{head}{middle} and {clauses[-1]}. How many now?"


def _problem(rng: random.Random, spec: ArithSpec) -> tuple[str, str, str, int, list[str]] | None:
    """(question, solution, computation key, answer, ops) for one random problem, or None on a dead end."""
    steps = rng.randint(spec.min_steps, spec.max_steps)
    value = rng.randint(spec.start_min, spec.start_max)
    start, lines, clauses, ops, key = value, [], [], [], [str(value)]
    for _ in range(steps):
        feasible = _feasible_steps(value, spec)
        if not feasible:
            return None
        op, args = rng.choice(feasible)
        arg = rng.choice(args)
        new = _apply(op, value, arg)
        lines.append(f"{value}{_SYMBOLS[op]}{arg}={new}")
        clauses.append(_clause(op, arg, rng))
        ops.append(op)
        key.append(f"{_SYMBOLS[op]}{arg}")
        value = new
    solution = "\n".join(lines) + f"\n\\boxed{{{value}}}"
    return _story(start, clauses, rng), solution, "".join(key), value, ops


def make_questions(split: str, n: int, spec: ArithSpec = ARITH_DEFAULT, seed: int = 0) -> list[Question]:
    """`n` distinct questions of one split, the same for the same (split, n, spec, seed).

    A larger `n` with the same seed extends the smaller list (it is a prefix).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = random.Random(f"arith|{split}|{seed}")  # str seeds are hashed with sha512: stable across runs
    questions: list[Question] = []
    seen: set[str] = set()
    attempts = 0
    budget = 200 * n + 10_000
    while len(questions) < n:
        attempts += 1
        if attempts > budget:
            raise ValueError(
                f"only {len(questions)} distinct {split!r} questions found for n={n}; widen the spec "
                "(more steps or larger number ranges)"
            )
        problem = _problem(rng, spec)
        if problem is None:
            continue
        text, solution, key, answer, ops = problem
        if text in seen or split_of(key) != split:
            continue
        seen.add(text)
        questions.append(
            Question(
                question_id=f"arith-{split}-{len(questions):05d}",
                question=text,
                gold=str(answer),
                solution=solution,
                meta={"steps": len(ops), "ops": ops, "key": key},
            )
        )
    return questions
