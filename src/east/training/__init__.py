"""Weighted SFT / DPO / KTO trainers on TRL 1.16.0, local-weighting baselines, and the `train` entry point.

`from east.training import train` trains a model on selection.py's rows (see run.py); the trainer classes are
importable for direct use (see each module's docstring).
"""

from east.training.dpo import WeightedDPOTrainer
from east.training.kto import WeightedKTOTrainer
from east.training.local_weights import lw_p, lw_w, pair_local_weights, row_local_weights
from east.training.run import train
from east.training.sft import WeightedSFTTrainer

__all__ = [
    "WeightedDPOTrainer",
    "WeightedKTOTrainer",
    "WeightedSFTTrainer",
    "lw_p",
    "lw_w",
    "pair_local_weights",
    "row_local_weights",
    "train",
]
