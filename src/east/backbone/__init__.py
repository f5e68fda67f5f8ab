"""The built-in backbone: a character-level tokenizer with a chat template, a tiny Llama, the warm-up
that trains it on the arith task, and the shipped checkpoint.

    from east.backbone import builtin_checkpoint
    path = builtin_checkpoint()   # AutoModelForCausalLM / AutoTokenizer.from_pretrained(path)
"""

from east.backbone.bootstrap import DEFAULTS, BootstrapSettings, bootstrap, builtin_checkpoint
from east.backbone.model import build_config, build_model, count_parameters
from east.backbone.tokenizer import build_tokenizer

__all__ = [
    "DEFAULTS",
    "BootstrapSettings",
    "bootstrap",
    "build_config",
    "build_model",
    "build_tokenizer",
    "builtin_checkpoint",
    "count_parameters",
]
