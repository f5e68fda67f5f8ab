"""Weighting stage: per-question signals, filters and EAST weights (graded sets -> QuestionStats), and DAST levels.

    from east.weighting import question_stats, summary_line
    stats = question_stats(graded, signal="entropy", mapping="power", a=1.5)

Modules: `signals` (entropy, accuracy, rejection), `mappings` (power, linear, mean, uniform),
`stats` (filters and weights per question), `difficulty` (DAST levels).
"""

from east.weighting.difficulty import GSM8K_CUTS, LEVELS, DifficultyCuts, difficulty_level, difficulty_levels, level_rank
from east.weighting.mappings import (
    MAPPINGS,
    linear_weights,
    map_weights,
    max_linear_range,
    mean_weights,
    power_weights,
    uniform_weights,
)
from east.weighting.signals import accuracy, cluster_sizes, entropy, most_frequent_incorrect, rejection
from east.weighting.stats import SIGNALS, question_stats, summarise, summary_line

__all__ = [
    "GSM8K_CUTS",
    "LEVELS",
    "MAPPINGS",
    "SIGNALS",
    "DifficultyCuts",
    "accuracy",
    "cluster_sizes",
    "difficulty_level",
    "difficulty_levels",
    "entropy",
    "level_rank",
    "linear_weights",
    "map_weights",
    "max_linear_range",
    "mean_weights",
    "most_frequent_incorrect",
    "power_weights",
    "question_stats",
    "rejection",
    "summarise",
    "summary_line",
    "uniform_weights",
]
