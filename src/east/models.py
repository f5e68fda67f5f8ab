"""Loading a causal LM and its tokenizer from a local path or hub id, the same way for every stage.

    model, tokenizer = load_model_and_tokenizer("meta-llama/Llama-3.2-1B-Instruct", dtype="auto")

dtype "auto" means bf16 where the device supports it and fp32 on CPU. `trust_remote_code` stays off
unless the config asks for it. The tokenizer gets a pad token (its EOS) if it has none, since batched
sampling and training both pad.
"""

from __future__ import annotations

import torch

from east.errors import UserError


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(path: str, *, dtype: str = "auto", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    try:
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise UserError(f"model {path!r} could not be loaded ({str(exc).splitlines()[0]}); "
                        "give a local directory with save_pretrained files, or a hub id reachable from here") from None
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        raise UserError(f"model {path!r}: its weights file is damaged ({str(exc).splitlines()[0]}); replace it, or "
                        "if east trained it, delete that model directory and rerun") from None
    model.to(device()).eval()
    return model, tokenizer
