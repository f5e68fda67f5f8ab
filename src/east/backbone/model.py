"""The built-in backbone's model: a tiny, randomly initialised `LlamaForCausalLM` sized for the
character-level tokenizer, saved and loaded like any hub model.

    from east.backbone.model import build_model
    model = build_model(hidden=192, layers=3, heads=4)  # tokenizer=build_tokenizer() by default
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from east.backbone.tokenizer import build_tokenizer


def build_config(
    hidden: int,
    layers: int,
    heads: int,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    intermediate: int | None = None,
    max_positions: int = 1024,
) -> LlamaConfig:
    """A small Llama config whose vocabulary and special ids match `tokenizer`."""
    tokenizer = tokenizer or build_tokenizer()
    if hidden % heads:
        raise ValueError(f"hidden {hidden} must be divisible by heads {heads}")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        # Tied input/output embeddings: at this size the embedding table is a large share of the weights.
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def build_model(
    hidden: int,
    layers: int,
    heads: int,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    intermediate: int | None = None,
    max_positions: int = 1024,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A freshly initialised float32 Llama; its generation config stops at the tokenizer's EOS."""
    tokenizer = tokenizer or build_tokenizer()
    config = build_config(hidden, layers, heads, tokenizer=tokenizer, intermediate=intermediate, max_positions=max_positions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # same seed -> same initial weights, without touching the caller's RNG
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct trainable parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
