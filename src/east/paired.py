"""Paired comparison of two arms over seeds and test questions: the interval every results table and
the testbed's criteria use, and the minimum detectable difference that goes with it.

    from east.paired import paired_difference
    found = paired_difference({0: arm_rows, 1: ...}, {0: base_rows, 1: ...})   # rows: {question_id: 0/1}
    found["mean"], found["ci95"], found["mdd80"]

Both arms answer the same test questions in every seed, so the per-question differences
d[s, q] = arm[s, q] - base[s, q] remove what the two have in common (how hard each question is). Two
intervals are computed:
- `seeds`: Student t over the S per-seed mean differences (S - 1 degrees of freedom). It treats the
  test set as fixed and counts training randomness only; with 3-5 seeds its t quantile (4.30-2.78)
  makes it wide even when every seed agrees.
- `crossed` (the headline): seeds and questions as crossed random factors. The variance of the grand
  mean is (MS_seed + MS_question - MS_residual) / (S Q) from the two-way ANOVA of d, with Satterthwaite
  degrees of freedom. It counts both sources the result should generalise over (new training runs,
  new questions of the same task) and spends the S Q paired observations on the estimate instead of
  only S means, which is why it resolves differences that the seed-only interval cannot. With one
  seed it falls back to the question-level paired interval (training randomness unmeasured: said so
  in `method`).
The minimum detectable difference is the true difference the interval would detect (exclude 0) with
80% power at the 5% level: (t_0.975 + t_0.80) x standard error, at the same degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import mean, stdev
from typing import Any

# Two-sided 95% and one-sided 80% Student t quantiles by degrees of freedom; a df between two entries
# takes the smaller entry's (larger, so conservative) quantile; normal quantiles beyond the table.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}
T80 = {1: 1.376, 2: 1.061, 3: 0.978, 4: 0.941, 5: 0.920, 6: 0.906, 7: 0.896, 8: 0.889, 9: 0.883, 10: 0.879,
       12: 0.873, 15: 0.866, 20: 0.860, 30: 0.854, 60: 0.848, 120: 0.845}
Z975, Z80 = 1.960, 0.842


def quantile(table: dict[int, float], limit: float, df: float) -> float:
    if not df >= 1:
        return float("nan")
    if df > max(table):
        return limit
    return table[max(d for d in table if d <= df)]


def t975(df: float) -> float:
    return quantile(T975, Z975, df)


def t80(df: float) -> float:
    return quantile(T80, Z80, df)


def differences(arm: Mapping[int, Mapping[str, float]], base: Mapping[int, Mapping[str, float]]) -> dict[int, dict[str, float]]:
    """d[s][q] over the seeds both arms have and, within a seed, the questions both answered."""
    out = {}
    for seed in sorted(set(arm) & set(base)):
        shared = sorted(set(arm[seed]) & set(base[seed]))
        if shared:
            out[seed] = {q: float(arm[seed][q]) - float(base[seed][q]) for q in shared}
    return out


def seed_interval(d: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Student t over per-seed mean differences."""
    return t_interval([mean(row.values()) for row in d.values()])


def t_interval(values: list[float]) -> dict[str, Any]:
    """Mean, 95% Student t half-width and minimum detectable difference (80% power) of independent values."""
    if len(values) < 2:
        return {"mean": values[0] if values else None, "ci95": None, "mdd80": None, "df": 0}
    se = stdev(values) / math.sqrt(len(values))
    df = len(values) - 1
    return {"mean": mean(values), "ci95": t975(df) * se, "mdd80": (t975(df) + t80(df)) * se, "df": df}


def crossed_interval(d: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Seeds x questions crossed random-effects interval of the grand mean (module docstring)."""
    questions = sorted(set.intersection(*(set(row) for row in d.values()))) if d else []
    seeds = sorted(d)
    s, q = len(seeds), len(questions)
    if q < 2:
        return {"mean": None, "ci95": None, "mdd80": None, "df": 0, "method": "too few questions"}
    grid = [[d[seed][question] for question in questions] for seed in seeds]
    grand = sum(map(sum, grid)) / (s * q)
    if s == 1:
        se = stdev(grid[0]) / math.sqrt(q)
        df = q - 1
        method = "one seed: questions only"
    else:
        seed_means = [sum(row) / q for row in grid]
        question_means = [sum(grid[i][j] for i in range(s)) / s for j in range(q)]
        ms_seed = q * sum((m - grand) ** 2 for m in seed_means) / (s - 1)
        ms_question = s * sum((m - grand) ** 2 for m in question_means) / (q - 1)
        ss_resid = sum((grid[i][j] - seed_means[i] - question_means[j] + grand) ** 2 for i in range(s) for j in range(q))
        ms_resid = ss_resid / ((s - 1) * (q - 1))
        if ms_question >= ms_resid:
            combined = ms_seed + ms_question - ms_resid
            terms = [(ms_seed, s - 1), (ms_question, q - 1), (ms_resid, (s - 1) * (q - 1))]
            denominator = sum(ms**2 / df for ms, df in terms)
            df = combined**2 / denominator if denominator > 0 else float("inf")
        else:
            # The question effect estimates below zero: take it as zero, which leaves the seed term
            # alone, with its S - 1 degrees of freedom (the interval never claims more than the seeds show).
            combined, df = ms_seed, s - 1
        se = math.sqrt(combined / (s * q))
        method = "seeds x questions crossed"
    if se == 0:
        return {"mean": grand, "ci95": 0.0, "mdd80": 0.0, "df": None, "method": method, "seeds": s, "questions": q}
    return {"mean": grand, "ci95": t975(df) * se, "mdd80": (t975(df) + t80(df)) * se,
            "df": df if math.isfinite(df) else None, "method": method, "seeds": s, "questions": q}


def paired_difference(arm: Mapping[int, Mapping[str, float]], base: Mapping[int, Mapping[str, float]]) -> dict[str, Any]:
    """Mean paired difference with the crossed interval (headline) and the seed-only interval beside it."""
    d = differences(arm, base)
    crossed = crossed_interval(d)
    return {**crossed, "n": len(d), "seed_only": seed_interval(d)}
