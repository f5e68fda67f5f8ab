"""A tiny random Llama and a character-level tokenizer for the training tests.

Imported by tests/test_training_*.py and tests/test_local_weights.py; nothing here downloads anything.
The model is small enough (hidden 32, 2 layers) that a trainer step takes milliseconds on CPU.
"""

from __future__ import annotations

import copy
import os
import string
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<unk>", "<eos>", "<|user|>", "<|assistant|>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer; chat markers are single special tokens, as in real chat templates."""
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    return tok


def tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).float()


def save_tiny(path: Path, seed: int = 0) -> Path:
    tok = tiny_tokenizer()
    tiny_model(tok, seed).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def clone(model):
    return copy.deepcopy(model)


def prompt(i: int) -> str:
    # Looks like a rendered chat template: special markers as text, then the generation prompt.
    return f"<|user|>What is {i}+{i + 1}?<|assistant|>"


def sft_rows(weights: list[float]) -> list[dict]:
    return [
        {"question_id": f"q{i}", "prompt": prompt(i), "completion": f"It is {2 * i + 1}." + " ok" * (i % 3), "weight": w}
        for i, w in enumerate(weights)
    ]


def dpo_rows(weights: list[float]) -> list[dict]:
    return [
        {
            "question_id": f"q{i}",
            "prompt": prompt(i),
            "chosen": f"{i}+{i + 1}={2 * i + 1}" + "." * (i % 2),
            "rejected": f"{i}+{i + 1}={2 * i + 2}, sure" + "!" * (i % 3),
            "weight": w,
        }
        for i, w in enumerate(weights)
    ]


def kto_rows(weights: list[float], labels: list[bool] | None = None) -> list[dict]:
    labels = labels if labels is not None else [i % 2 == 0 for i in range(len(weights))]
    return [
        {
            "question_id": f"q{i}",
            "prompt": prompt(i),
            "completion": (f"{2 * i + 1}" if lab else f"{2 * i + 3} or so") + "." * (i % 3),
            "label": lab,
            "weight": w,
        }
        for i, (w, lab) in enumerate(zip(weights, labels, strict=True))
    ]


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(a: dict, b: dict, scale: float = 1.0, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name] * scale, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def common_args(out_dir, **overrides) -> dict:
    """TrainingArguments for fast, deterministic CPU runs (no checkpoints, no reporting)."""
    args = dict(
        output_dir=str(out_dir),
        bf16=False,
        use_cpu=True,
        report_to="none",
        gradient_checkpointing=False,
        save_strategy="no",
        logging_steps=1,
        per_device_train_batch_size=4,
        max_steps=1,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    args.update(overrides)
    return args


def collate(trainer, rows: list[dict]) -> dict:
    """A training batch exactly as the trainer's dataloader would build it from these prepared rows."""
    return trainer._prepare_inputs(trainer.data_collator(rows))


def forbid_weight_in_forward(model) -> list[int]:
    """Fail if a `weight` kwarg reaches the model's call; returns a call counter.

    A pre-hook on the module call, so it holds whatever TRL does to `model.forward` (the fused LM head) later.
    """
    calls = []

    def hook(module, args, kwargs):
        assert "weight" not in kwargs, "weight reached model.forward"
        calls.append(1)

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def train_and_load(tmp_path, loss: str, rows: list[dict], **overrides):
    """One real `east.training.train` call on a saved tiny model; returns (model path, loaded model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from east.training import train

    base = save_tiny(tmp_path / "base")
    kwargs = dict(
        loss=loss, learning_rate=1e-3, num_train_epochs=1, per_device_train_batch_size=2, logging_steps=1,
        max_length=64, seed=0,
    )
    kwargs.update(overrides)
    path = train(rows, base, tmp_path / "out", **kwargs)
    AutoTokenizer.from_pretrained(path)
    return path, AutoModelForCausalLM.from_pretrained(path)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
