"""Grading benchmark: our grader against a plain per-response math-verify loop.

    .venv/bin/python benchmarks/grading.py [--questions 2000] [--samples 128] [--baseline-questions 24]

1. Builds a synthetic sampling workload shaped like real self-training samples: per question a few
   distinct final answers with Zipf-like shares (the gold among them, or not), each answer written
   in one to three equivalent spellings, and a few per cent of responses cut before their answer.
   Golds mix integers, fractions and LaTeX (roots, pi, tuples, intervals, polynomials).
2. Baseline: `math_verify.parse` + `verify` on every response of a subsample of questions (gold
   parsed once per question, which flatters the baseline), extrapolated to the whole workload.
3. Ours: `east.grading.grade_with_stats(kind="math")` on the whole workload (worker start-up included).
4. Checks that both give the same verdict on every response of the subsample.
5. Times 1M numeric (arith-style) responses through our grader.
The last line is `grading speedup vs per-response math-verify: N.NNx`. No numbers are asserted; the
script exits 1 if the verdicts disagree.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Callable

from east.grading import grade_with_stats
from east.grading.symbolic import close_pool, get_pool

Family = Callable[[random.Random], tuple[list[str], Callable[[random.Random], list[str]]]]


# --- answer families: (spellings of the gold, maker of a wrong answer's spellings) -----------------


def integer(rng: random.Random):
    n = rng.choice([rng.randint(2, 99), rng.randint(100, 9999)])

    def spell(m: int) -> list[str]:
        return [str(m), f"{m:,}"] if m >= 1000 else [str(m)]

    return spell(n), lambda r: spell(n + r.choice([-10, -2, -1, 1, 2, 3, n]))


def fraction(rng: random.Random):
    q = rng.randint(2, 12)
    p = rng.choice([x for x in range(1, 3 * q) if x % q])

    def spell(a: int, b: int) -> list[str]:
        return [f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}"]

    return spell(p, q), lambda r: spell(p + r.choice([-1, 1, 2]) or 7, q + r.choice([0, 1]))


def root(rng: random.Random):
    a, b = rng.randint(2, 6), rng.choice([2, 3, 5, 6, 7])

    def spell(c: int, d: int) -> list[str]:
        return [f"{c}\\sqrt{{{d}}}", f"{c} \\sqrt{d}", f"\\sqrt{{{c * c * d}}}"]

    return spell(a, b), lambda r: spell(a + r.choice([-1, 1]), b) if r.random() < 0.5 else spell(a, b + 1)


def pi_multiple(rng: random.Random):
    a = rng.randint(2, 30)

    def spell(c: int) -> list[str]:
        return [f"{c}\\pi", f"{c} \\pi", f"\\pi \\cdot {c}"]

    return spell(a), lambda r: spell(a + r.choice([-1, 1, a]))


def point(rng: random.Random):
    a, b = rng.randint(-9, 9), rng.randint(-9, 9)
    b = b if b != a else b + 1

    def spell(c: int, d: int) -> list[str]:
        return [f"({c}, {d})", f"({c},{d})", f"\\left( {c}, {d} \\right)"]

    return spell(a, b), lambda r: spell(b, a) if r.random() < 0.5 else spell(a, b + r.choice([-1, 1]))


def interval(rng: random.Random):
    a = rng.randint(-9, 5)
    b = a + rng.randint(1, 9)

    def spell(left: str, c: int, d: int, right: str) -> list[str]:
        return [f"{left}{c}, {d}{right}", f"{left}{c},{d}{right}"]

    return spell("[", a, b, ")"), lambda r: spell(r.choice("(["), a, b + r.choice([0, 1]), "]")


def polynomial(rng: random.Random):
    r1, r2 = rng.randint(1, 6), rng.randint(1, 6)

    def spell(s: int, t: int) -> list[str]:
        return [f"x^2 + {s + t}x + {s * t}", f"(x+{s})(x+{t})"]

    return spell(r1, r2), lambda r: spell(r1, r2 + r.choice([1, 2]))


FAMILIES: list[tuple[Family, float]] = [
    (integer, 0.45),
    (fraction, 0.15),
    (root, 0.1),
    (pi_multiple, 0.08),
    (point, 0.08),
    (interval, 0.07),
    (polynomial, 0.07),
]


# --- the workload -------------------------------------------------------------------------------


def zipf_shares(rng: random.Random, k: int) -> list[float]:
    weights = [1 / (j + 1) ** rng.uniform(0.8, 2.0) for j in range(k)]
    total = sum(weights)
    return [w / total for w in weights]


def response_text(rng: random.Random, answer: str | None) -> str:
    """A short worked response ending in one boxed answer, or cut before it (answer None)."""
    steps = " ".join(f"Step {i + 1}: {rng.randint(101, 999)} - {rng.randint(101, 999)} is a partial value." for i in range(rng.randint(1, 3)))
    if answer is None:
        return f"Let us work it out. {steps} Next we combine the"
    return f"Let us work it out. {steps} Therefore the final answer is $\\boxed{{{answer}}}$."


def build_workload(questions: int, samples: int, seed: int = 0) -> tuple[list[list[str]], list[str]]:
    """Per question: `samples` responses and the gold (its first spelling)."""
    rng = random.Random(seed)
    families, weights = zip(*FAMILIES)
    all_responses, golds = [], []
    for _ in range(questions):
        family = rng.choices(families, weights)[0]
        gold_spellings, wrong = family(rng)
        k = min(1 + int(rng.expovariate(1 / 3)), 10)
        clusters = [wrong(rng) for _ in range(k)]
        if rng.random() < 0.8:  # most questions have the gold among their answers, at some rank
            clusters[rng.randrange(k)] = gold_spellings
        shares = zipf_shares(rng, k)
        responses = []
        for _ in range(samples):
            if rng.random() < 0.05:
                responses.append(response_text(rng, None))
            else:
                spellings = rng.choices(clusters, shares)[0]
                # models mostly repeat one spelling of an answer
                spelling = spellings[0] if rng.random() < 0.7 else rng.choice(spellings)
                responses.append(response_text(rng, spelling))
        all_responses.append(responses)
        golds.append(gold_spellings[0])
    return all_responses, golds


# --- the two graders ----------------------------------------------------------------------------


def baseline_verdicts(responses: list[list[str]], golds: list[str]) -> list[bool]:
    """math-verify as commonly used: parse the whole response, verify against the parsed gold."""
    from math_verify import parse, verify

    verdicts = []
    for question, gold in zip(responses, golds):
        gold_parsed = parse(f"$\\boxed{{{gold}}}$")
        verdicts.extend(bool(verify(gold_parsed, parse(text))) for text in question)
    return verdicts


def time_numeric(n: int, seed: int = 1) -> tuple[float, dict[str, int]]:
    """Seconds to grade n arith-style responses (128 per question, answers near the gold)."""
    rng = random.Random(seed)
    responses, golds = [], []
    gold = 0
    for i in range(n):
        if i % 128 == 0:
            gold = rng.randint(2, 99)
        answer = gold if rng.random() < 0.5 else gold + rng.randint(-5, 5)
        start = rng.randint(2, 20)
        responses.append(f"{start}+{gold - start}={gold}\n{gold}-0={answer}\n\\boxed{{{answer}}}")
        golds.append(str(gold))
    began = time.perf_counter()
    _, stats = grade_with_stats(responses, golds, "arith")
    return time.perf_counter() - began, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--baseline-questions", type=int, default=24, help="subsample graded by the baseline loop")
    parser.add_argument("--numeric", type=int, default=1_000_000, help="numeric responses to time (0: skip)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    responses, golds = build_workload(args.questions, args.samples)
    total = sum(len(r) for r in responses)
    print(f"workload: {args.questions} questions x {args.samples} samples = {total:,} responses")

    rng = random.Random(2)
    subsample = sorted(rng.sample(range(args.questions), min(args.baseline_questions, args.questions)))
    sub_responses = [responses[i] for i in subsample]
    sub_golds = [golds[i] for i in subsample]
    began = time.perf_counter()
    expected = baseline_verdicts(sub_responses, sub_golds)
    baseline_seconds = time.perf_counter() - began
    per_response = baseline_seconds / len(expected)
    baseline_total = per_response * total
    print(
        f"per-response math-verify: {len(expected):,} responses in {baseline_seconds:.1f} s "
        f"({per_response * 1e3:.2f} ms each) -> {baseline_total:.0f} s extrapolated to {total:,}"
    )

    flat = [text for question in responses for text in question]
    flat_golds = [gold for question, gold in zip(responses, golds) for _ in question]
    close_pool()  # count worker start-up in our time
    began = time.perf_counter()
    get_pool(args.workers)
    grades, stats = grade_with_stats(flat, flat_golds, "math", workers=args.workers)
    ours_seconds = time.perf_counter() - began
    print(f"ours: {total:,} responses in {ours_seconds:.1f} s (worker start-up included); stats {stats}")

    offsets = [sum(len(r) for r in responses[:i]) for i in subsample]
    ours = [g.correct for start, question in zip(offsets, sub_responses) for g in grades[start : start + len(question)]]
    disagreements = [(i, a, b) for i, (a, b) in enumerate(zip(expected, ours)) if a != b]
    print(f"verdict agreement on the subsample: {len(expected) - len(disagreements):,}/{len(expected):,}")
    flat_sub = [text for question in sub_responses for text in question]
    flat_sub_golds = [gold for question, gold in zip(sub_responses, sub_golds) for _ in question]
    for i, baseline, mine in disagreements[:10]:
        print(f"  disagree: gold {flat_sub_golds[i]!r} response ...{flat_sub[i][-60:]!r} baseline {baseline} ours {mine}")

    if args.numeric:
        seconds, numeric_stats = time_numeric(args.numeric)
        print(
            f"numeric: {args.numeric:,} arith responses graded in {seconds:.1f} s "
            f"({args.numeric / seconds:,.0f}/s, {numeric_stats['distinct_pairs']:,} distinct pairs)"
        )

    close_pool()
    print(f"grading speedup vs per-response math-verify: {baseline_total / ours_seconds:.2f}x")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
