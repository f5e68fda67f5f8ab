"""Sampling throughput: HF `generate(num_return_sequences=n, do_sample=True)` vs `east.sampling.hf.sample`.

    .venv/bin/python benchmarks/sampling.py            # about 5 minutes on one CPU core
    .venv/bin/python benchmarks/sampling.py --quick    # smaller cases, for a smoke run
    .venv/bin/python benchmarks/sampling.py --threads 2

Both run in this one process on identical prompts and settings (temperature 1, top_k 0, top_p 1), over
four cases: a backbone-sized Llama (~1M parameters) and a ~30M-parameter Llama, each with EOS (ragged
lengths: an EOS logit bias gives every step about a 1-in-`mean_len` chance to end) and without EOS (the
configs name no EOS, so every sample runs to max_new_tokens). The backbone is the shipped trained
checkpoint where the tree has one (its EOS case has the real lengths of arith answers); otherwise
weights are random, which matters only through the lengths they produce, set by the EOS bias.

Our sampler runs the model's fp32 linear layers through oneDNN (`east.sampling.onednn`), while torch's
default matmul, which HF generate uses, calls MKL, which on AMD processors runs no faster than with its
instructions capped at AVX2. So that the
two sources of speed can be told apart, each case also runs our sampler with torch's default matmul
(`onednn=False`) and prints that speedup too; the headline is our sampler as it ships.

Each is run --repeats times, alternating, and its fastest run counts. Per case it prints tokens/s and
samples/s of each, the peak resident-memory increase of each run (RSS sampled every 5 ms by a psutil
thread, above the RSS at the start of the run, after glibc malloc_trim), and the share of this
machine's fp32 matmul FLOP/s that our sampler reaches. The peak is the faster of torch's default matmul
and oneDNN's on a 2048^2 product; the share counts 2 x parameters FLOPs per generated token
("effective") and per row it actually ran through the model ("actual": samples of a prompt that drew
the same tokens so far share one row, a branch, so a trained model computes fewer rows than it
generates tokens). The last line is the geometric-mean speedup over the cases.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import east.sampling.hf as hf  # noqa: E402
from east.sampling.hf import sample  # noqa: E402
from east.sampling.onednn import available as onednn_available  # noqa: E402
from east.sampling.onednn import onednn_forward  # noqa: E402


@dataclass
class Case:
    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    prompts: int
    n: int
    rows: int  # samples in flight: HF generate gets rows // n prompts per call, our sampler rows slots
    max_new_tokens: int
    eos: bool  # False: the configs name no EOS, every sample runs to max_new_tokens
    mean_len: float | None = None  # random weights with EOS: expected sample length (sets the EOS bias)
    checkpoint: bool = False  # the shipped, trained backbone (its own lengths) instead of random weights


def cases(quick: bool) -> list[Case]:
    """More prompts than fit in one batch, as in a self-training iteration (hundreds of questions)."""
    s = 2 if quick else 1
    trained = checkpoint_path() is not None
    backbone = "backbone 1.3M trained" if trained else "backbone-like ~1M"
    return [
        Case(f"{backbone}, EOS", 128, 4, 4, 512, 48 // s, 16, 256, 128, True, 32.0, trained),
        Case(f"{backbone}, no EOS", 128, 4, 4, 512, 32 // s, 16, 256, 64, False, None, trained),
        Case("llama ~30M random, EOS", 512, 9, 8, 1536, 16 // s, 8, 64, 96, True, 24.0),
        Case("llama ~30M random, no EOS", 512, 9, 8, 1536, 16 // s, 8, 64, 48, False),
    ]


def checkpoint_path():
    """The shipped backbone checkpoint, if this tree has one."""
    try:
        from east.backbone import builtin_checkpoint

        path = builtin_checkpoint()
    except (ImportError, FileNotFoundError):
        return None
    return path if os.path.exists(os.path.join(path, "model.safetensors")) else None


def load_tokenizer():
    """The backbone's character tokenizer (a stand-in with the same recipe if the backbone is absent)."""
    try:
        from east.backbone.tokenizer import build_tokenizer

        return build_tokenizer()
    except ImportError:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {"<|pad|>": 0, "<|end|>": 1, **{chr(c): i + 2 for i, c in enumerate(range(10, 127)) if c >= 32 or c == 10}}
        vocab = {t: i for i, t in enumerate(vocab)}
        core = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
        core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
        core.decoder = decoders.Fuse()
        return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|pad|>", eos_token="<|end|>")


def build_prompts(tokenizer, count: int) -> list[str]:
    """The pipeline's prompts: arith questions (1 to 5 steps) in the backbone's chat template, 50-80 tokens."""
    try:
        from east.tasks.arith import make_questions
        from east.tasks.prompts import render_prompt

        return [render_prompt(tokenizer, q) for q in make_questions("train", count)]
    except ImportError:  # a stand-in of similar lengths
        steps = ["buys {} more", "gives away {}", "doubles them", "finds {} more"]
        return [f"Mia has {2 + i % 17} figs, " + ", then ".join(steps[(i + k) % 4].format(3 + k) for k in range(1 + i % 4))
                + ". How many now?\nAnswer:" for i in range(count)]


def build_model(case: Case, tokenizer) -> LlamaForCausalLM:
    if case.checkpoint:
        model = LlamaForCausalLM.from_pretrained(checkpoint_path(), dtype=torch.float32).eval()
        if not case.eos:
            model.config.eos_token_id = model.generation_config.eos_token_id = None
        return model
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id if case.eos else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=vocab, hidden_size=case.hidden, intermediate_size=case.intermediate,
                             num_hidden_layers=case.layers, num_attention_heads=case.heads,
                             num_key_value_heads=case.heads, max_position_embeddings=512,
                             tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                             bos_token_id=None)
        model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if case.mean_len:
        # Random logits are nearly flat, so a bias b on EOS gives it probability e^b / (V - 1 + e^b) per step.
        p = 1 / case.mean_len
        head = torch.nn.Linear(case.hidden, vocab, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.zero_()
            head.bias[eos] = math.log(p * (vocab - 1) / (1 - p))
        model.lm_head = head
    return model


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), so the next run's RSS growth is its own, not reuse."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRss:
    """Peak resident set size above the starting RSS while the block runs (psutil, sampled every 5 ms)."""

    def __enter__(self):
        release_freed_memory()
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()
        return self

    def poll(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def mb(self) -> float:
        return (self.peak - self.start) / 2**20


@dataclass
class Run:
    seconds: float
    tokens: int
    samples: int
    peak_mb: float
    rows: int = 0  # rows run through the model while decoding (ours: branches), 0 if not counted

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds


def run_generate(model, tokenizer, prompts: list[str], case: Case) -> Run:
    """Left-padded `generate` calls of rows // n prompts each, in order (the rows our sampler keeps in flight)."""
    tokenizer.padding_side = "left"
    per_call = case.rows // case.n
    tokens = samples = 0
    eos = model.generation_config.eos_token_id
    # Seeded, so every run draws the same samples: with EOS, generate's time depends on the longest
    # sample of each call, and an unseeded baseline would let the fastest-of-N pick its luckiest draw.
    torch.manual_seed(0)
    with PeakRss() as memory, torch.inference_mode():
        start = time.perf_counter()
        for i in range(0, len(prompts), per_call):
            batch = tokenizer(prompts[i : i + per_call], add_special_tokens=False, return_tensors="pt", padding=True)
            # use_cache explicitly: the shipped checkpoint's config says use_cache=false (a training default).
            out = model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, use_cache=True,
                                 num_return_sequences=case.n, max_new_tokens=case.max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
            generated = out[:, batch.input_ids.shape[1] :]
            samples += generated.shape[0]
            if eos is None:
                tokens += generated.numel()
            else:
                # Tokens up to and including the first EOS: the samples proper (later columns are padding).
                is_eos = generated == eos
                tokens += int(torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, generated.shape[1]).sum())
        seconds = time.perf_counter() - start
    return Run(seconds, tokens, samples, memory.mb)


def run_ours(model, tokenizer, prompts: list[str], case: Case, onednn: bool = True) -> Run:
    longest = max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])
    budget = case.rows * (longest + case.max_new_tokens)  # exactly case.rows slots
    with PeakRss() as memory, counting_branches() as rows:
        start = time.perf_counter()
        gens = sample(model, tokenizer, prompts, n=case.n, temperature=1.0, max_new_tokens=case.max_new_tokens,
                      seed=0, token_budget=budget, onednn=onednn)
        seconds = time.perf_counter() - start
    # Every sample's first token comes from its prompt's prefill, not from a decode row.
    return Run(seconds, sum(sum(g.num_tokens) for g in gens), sum(len(g.texts) for g in gens), memory.mb,
               rows[0] + len(prompts))


@contextmanager
def counting_branches():
    """Count the rows (live branches) of every decode step of our sampler; yields a one-item list."""
    count = [0]
    step = hf.SlotBatcher.decode_step

    def counted(self):
        count[0] += self.branches
        step(self)

    hf.SlotBatcher.decode_step = counted
    try:
        yield count
    finally:
        hf.SlotBatcher.decode_step = step


def fastest(runs: list[Run]) -> Run:
    """The run with the highest tokens/s, reporting the highest peak memory of all runs."""
    best = max(runs, key=lambda r: r.tokens_per_s)
    return Run(best.seconds, best.tokens, best.samples, max(r.peak_mb for r in runs), best.rows)


def matmul_flops(size: int = 2048, repeats: int = 8) -> dict[str, float]:
    """fp32 FLOP/s of a size^2 product through torch's default matmul and through oneDNN (packed weight)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    products = {"torch matmul": lambda: a @ b}
    if onednn_available():
        layer = torch.nn.Linear(size, size, bias=False)
        products["oneDNN"] = functools.partial(onednn_forward(layer, pack=True), a)
    flops = {}
    for name, product in products.items():
        product()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - start)
        flops[name] = 2 * size**3 / best
    return flops


def warm_up(model, tokenizer, prompts: list[str]) -> None:
    """One small run of each, so one-time costs (lazy imports, allocator growth) are not timed."""
    sample(model, tokenizer, prompts[:2], n=2, max_new_tokens=4)
    batch = tokenizer(prompts[:2], add_special_tokens=False, return_tensors="pt", padding=True)
    with torch.inference_mode():
        model.generate(**batch, do_sample=True, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id, use_cache=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="halve the cases")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each, alternating; the fastest run of each counts (the machine is shared)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both (default 1: on a shared 2-core machine, 2 threads that "
                             "compete with other processes' threads can run 10x slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()

    tokenizer = load_tokenizer()
    flops = matmul_flops()
    peak = max(flops.values())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul 2048^2: "
          + ", ".join(f"{name} {f / 1e9:.1f} GFLOP/s" for name, f in flops.items()))
    speedups, sampler_only = [], []
    for case in cases(args.quick):
        model = build_model(case, tokenizer)
        params = sum(p.numel() for p in model.parameters())
        prompts = build_prompts(tokenizer, case.prompts)
        warm_up(model, tokenizer, prompts)
        base_runs, our_runs, plain_runs = [], [], []
        for _ in range(args.repeats):  # alternating, so a burst of load elsewhere hits all
            base_runs.append(run_generate(model, tokenizer, prompts, case))
            our_runs.append(run_ours(model, tokenizer, prompts, case))
            plain_runs.append(run_ours(model, tokenizer, prompts, case, onednn=False))
        base, ours, plain = fastest(base_runs), fastest(our_runs), fastest(plain_runs)
        speedup = ours.tokens_per_s / base.tokens_per_s
        speedups.append(speedup)
        sampler_only.append(plain.tokens_per_s / base.tokens_per_s)
        share = 2 * params * ours.tokens_per_s / peak
        actual = share * ours.rows / ours.tokens
        print(f"\n[{case.name}] {params / 1e6:.2f}M params, {case.prompts} prompts x n={case.n}, "
              f"{case.rows} samples in flight, max_new_tokens={case.max_new_tokens}")
        for label, run in (("HF generate", base), ("east sample", ours), ("  torch matmul", plain)):
            print(f"  {label:14s} {run.seconds:6.2f} s  {run.tokens:7d} tokens  {run.tokens_per_s:8.0f} tokens/s  "
                  f"{run.samples_per_s:7.1f} samples/s  peak RSS +{run.peak_mb:6.0f} MB")
        print(f"  speedup {speedup:.2f}x ({sampler_only[-1]:.2f}x with torch matmul); east sample reaches {100 * share:.1f}% of matmul peak effective, "
              f"{100 * actual:.1f}% actual ({ours.rows} rows computed for {ours.tokens} tokens)")
        del model
    geomean = lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs))  # noqa: E731
    print(f"\nwith torch's default matmul (onednn=False), speedup vs HF generate: {geomean(sampler_only):.2f}x")
    print(f"sampling speedup vs HF generate: {geomean(speedups):.2f}x")


if __name__ == "__main__":
    main()
