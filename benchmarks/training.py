"""Training throughput: stock trl.SFTTrainer fp32, WeightedSFTTrainer (all weights 1) fp32 and bf16, one process.

Run: `.venv/bin/python benchmarks/training.py [--repeats 5] [--steps 20] [--precisions fp32,bf16] [--profile]`. Each repeat trains a
fresh copy of the same random Llama (hidden 128, 4 layers) for --steps optimizer steps with each trainer, rotating
which goes first, on one thread; only `trainer.train()` is timed, both as wall time and as process CPU time.
"ours bf16" is `precision: bf16` (fp32 weights, bf16 autocast: transformers' bf16=True with use_cpu=True; attention
in fp32, east.training.run.fp32_attention).
Per trainer it prints tokens/s (target and prompt tokens of the rows, padding not counted) and the share of this
machine's matmul peak in the dtype that does the products (6 x matmul parameters FLOPs per token, against a 2048^2
product timed here). --profile adds where ours fp32 spends its CPU time (torch profiler, one more run: weight
products, attention, everything else) and the bound that sets: the speedup if the products ran at the measured peak
and nothing else got faster. The overhead on the last line, `weighted training overhead: N.N%`, compares median CPU times of
ours fp32 and stock fp32: on a shared machine other processes inflate wall time by whole seconds, CPU time much
less. Timing only: nothing here asserts.
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

from east.precision import cpu_description  # noqa: E402
from east.training.run import fp32_attention  # noqa: E402
from east.training.sft import WeightedSFTTrainer  # noqa: E402


def build_model(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def time_one(cls, model, tokenizer, dataset, steps: int, batch: int, out: str, bf16: bool = False) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, tokens of the rows trained on) of one trainer.train()."""
    args = SFTConfig(
        output_dir=out, bf16=bf16, use_cpu=True, report_to="none", gradient_checkpointing=False,
        save_strategy="no", logging_steps=steps, max_steps=steps, per_device_train_batch_size=batch, seed=0,
        disable_tqdm=True,
    )
    trainer = cls(copy.deepcopy(model), args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"][: steps * batch])
    wall, cpu = time.perf_counter(), time.process_time()
    with fp32_attention(trainer.model, enabled=bf16 and cls is WeightedSFTTrainer):  # as east.training.train does
        trainer.train()
    return time.perf_counter() - wall, time.process_time() - cpu, tokens


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of torch's size^2 product in `dtype`, best of `repeats`, in CPU time (one thread)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        a @ b
        best = min(best, time.process_time() - start)
    return 2 * size**3 / best


def matmul_params(model) -> int:
    """Parameters that take part in matrix products per token (the linear layers, LM head included)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


WEIGHT_PRODUCTS = {"aten::mm", "aten::addmm", "aten::matmul", "aten::linear"}


def time_split(cls, model, tokenizer, dataset, steps: int, batch: int, out: str) -> dict[str, float]:
    """Self CPU seconds of one trainer.train() under torch's profiler, by kind: weight products, attention, other."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        time_one(cls, model, tokenizer, dataset, steps, batch, out)
    split = {"weight products": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        kind = ("weight products" if event.key in WEIGHT_PRODUCTS
                else "attention" if "scaled_dot_product" in event.key or "flash_attention" in event.key else "other")
        split[kind] += event.self_cpu_time_total / 1e6
    return split


def print_split(split: dict[str, float], flops: float, peak: float) -> None:
    total = sum(split.values())
    products = split["weight products"]
    print("ours fp32, profiled: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in split.items())
          + f"; the weight products at {flops / products / 1e9:.1f} GFLOP/s of unpadded tokens ({100 * flops / products / peak:.0f}% of the "
          f"fp32 peak); bound with the products at peak and the rest as it is: "
          f"{total / (total - products + flops / peak):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precisions", default="fp32,bf16", help="ours in: fp32, bf16 (stock TRL runs in fp32)")
    parser.add_argument("--profile", action="store_true",
                        help="also where ours fp32 spends its time (one more run; needs fp32 in --precisions)")
    opts = parser.parse_args()
    hf_logging.set_verbosity_error()
    # One thread: with other jobs on the machine, idle-spinning worker threads would dominate the CPU time.
    torch.set_num_threads(1)

    tokenizer = tiny_tokenizer()
    model = build_model(tokenizer)
    rows = sft_rows([1.0] * (opts.steps * opts.batch))
    weighted_data = Dataset.from_list(rows)
    stock_data = weighted_data.remove_columns("weight")
    runs = {"stock fp32": (SFTTrainer, stock_data, False)}
    for name in opts.precisions.split(","):
        runs[f"ours {name.strip()}"] = (WeightedSFTTrainer, weighted_data, name.strip() == "bf16")
    # The bf16 peak only when a bf16 trainer runs: emulated (no native bf16) it takes minutes to measure.
    peaks = {"fp32": matmul_peak(torch.float32)} | ({"bf16": matmul_peak(torch.bfloat16)} if "ours bf16" in runs else {})
    flops_per_token = 6 * matmul_params(model)
    print(f"torch {torch.__version__}, 1 thread; matmul 2048^2: "
          + ", ".join(f"{dtype} {peak / 1e9:.1f}" for dtype, peak in peaks.items())
          + f" GFLOP/s; {matmul_params(model) / 1e6:.2f}M matmul parameters; {cpu_description()}",
          flush=True)
    times: dict[str, list[tuple[float, float, int]]] = {name: [] for name in runs}
    names = list(runs)
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(opts.repeats):
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:  # rotate who goes first
                cls, data, bf16 = runs[name]
                times[name].append(time_one(cls, model, tokenizer, data, opts.steps, opts.batch, out, bf16))
                wall, cpu, _ = times[name][-1]
                print(f"repeat {repeat} {name:10s} wall {wall:.3f} s  cpu {cpu:.3f} s", flush=True)
        profiled = opts.profile and "ours fp32" in runs
        split = time_split(WeightedSFTTrainer, model, tokenizer, weighted_data, opts.steps, opts.batch, out) if profiled else {}
    medians = {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts), ts[0][2])
               for name, ts in times.items()}
    for name, (wall, cpu, tokens) in medians.items():
        dtype = "bf16" if name.endswith("bf16") else "fp32"
        rate = tokens / cpu
        print(f"median {name:10s} wall {wall:.3f} s  cpu {cpu:.3f} s  ({opts.steps} steps x batch {opts.batch}): "
              f"{rate:,.0f} tokens/s (CPU time), {100 * rate * flops_per_token / peaks[dtype]:.1f}% of {dtype} matmul peak")
    if split:
        print_split(split, flops_per_token * times["ours fp32"][0][2], peaks["fp32"])
    print(f"weighted training overhead: {100 * (medians['ours fp32'][1] / medians['stock fp32'][1] - 1):.1f}%")


if __name__ == "__main__":
    main()
