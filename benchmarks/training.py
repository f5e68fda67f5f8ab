"""Overhead of WeightedSFTTrainer (all weights 1) over stock trl.SFTTrainer, same data and model, one process.

Run: `.venv/bin/python benchmarks/training.py [--repeats 5] [--steps 20]`. Each repeat trains a fresh copy of the
same random Llama (hidden 128, 4 layers) for --steps optimizer steps with each trainer, alternating which goes
first, on one thread; only `trainer.train()` is timed, both as wall time and as process CPU time. The overhead on the last line,
`weighted training overhead: N.N%`, compares median CPU times: on a shared machine other processes inflate wall
time by whole seconds, CPU time much less. Timing only: nothing here asserts.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PrinterCallback
from transformers.utils import logging as hf_logging
from trl import SFTConfig, SFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from training_helpers import sft_rows, tiny_tokenizer  # noqa: E402

from east.training.sft import WeightedSFTTrainer  # noqa: E402


def build_model(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def time_one(cls, model, tokenizer, dataset, steps: int, batch: int, out: str) -> tuple[float, float]:
    args = SFTConfig(
        output_dir=out, bf16=False, use_cpu=True, report_to="none", gradient_checkpointing=False,
        save_strategy="no", logging_steps=steps, max_steps=steps, per_device_train_batch_size=batch, seed=0,
        disable_tqdm=True,
    )
    trainer = cls(copy.deepcopy(model), args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    opts = parser.parse_args()
    hf_logging.set_verbosity_error()
    # One thread: with other jobs on the machine, idle-spinning worker threads would dominate the CPU time.
    torch.set_num_threads(1)

    tokenizer = tiny_tokenizer()
    model = build_model(tokenizer)
    rows = sft_rows([1.0] * (opts.steps * opts.batch))
    weighted_data = Dataset.from_list(rows)
    stock_data = weighted_data.remove_columns("weight")
    times: dict[str, list[tuple[float, float]]] = {"stock": [], "weighted": []}
    runs = {"stock": (SFTTrainer, stock_data), "weighted": (WeightedSFTTrainer, weighted_data)}
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(opts.repeats):
            order = ["stock", "weighted"] if repeat % 2 == 0 else ["weighted", "stock"]  # interleave
            for name in order:
                cls, data = runs[name]
                times[name].append(time_one(cls, model, tokenizer, data, opts.steps, opts.batch, out))
                wall, cpu = times[name][-1]
                print(f"repeat {repeat} {name:8s} wall {wall:.3f} s  cpu {cpu:.3f} s", flush=True)
    medians = {name: [statistics.median(t[i] for t in runs_) for i in (0, 1)] for name, runs_ in times.items()}
    for name, (wall, cpu) in medians.items():
        print(f"median {name:8s} wall {wall:.3f} s  cpu {cpu:.3f} s  ({opts.steps} steps x batch {opts.batch})")
    print(f"weighted training overhead: {100 * (medians['weighted'][1] / medians['stock'][1] - 1):.1f}%")


if __name__ == "__main__":
    main()
