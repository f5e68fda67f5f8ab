"""Sampling throughput: HF `generate(num_return_sequences=n, do_sample=True)` vs `east.sampling.hf.sample`.

    .venv/bin/python benchmarks/sampling.py            # about 10 minutes on one CPU core
    .venv/bin/python benchmarks/sampling.py --quick    # smaller cases, for a smoke run
    .venv/bin/python benchmarks/sampling.py --threads 2 --dtypes fp32 --clock wall

Both run in this one process on identical prompts and settings (temperature 1, top_k 0, top_p 1), over
four cases: a backbone-sized Llama (~1M parameters) and a ~30M-parameter Llama, each with EOS (ragged
lengths: an EOS logit bias gives every step about a 1-in-`mean_len` chance to end) and without EOS (the
configs name no EOS, so every sample runs to max_new_tokens). The backbone is the shipped trained
checkpoint where the tree has one (its EOS case has the real lengths of arith answers); otherwise
weights are random, which matters only through the lengths they produce, set by the EOS bias.

Each case runs in each of --dtypes (fp32, bf16), both sides in the same dtype so the ratio is fair: in
bf16 the model's weights are bfloat16 (precision: bf16), and both sample from fp32 logits.
In fp32 our sampler runs the model's linear layers through oneDNN (`east.sampling.onednn`, the default
`sampling.gemm: onednn`), while HF generate uses torch's default matmul. So that the two sources of speed
can be told apart, each fp32 case also runs our sampler with torch's default matmul (`gemm="torch"`) and
prints that speedup too, and what `sampling.gemm: auto` chooses for the model here; the headline is our
sampler as it ships.

--clock cpu (the default) times each run in CPU time of this process (time.process_time), so that other
jobs on a shared machine change the numbers little (with --threads 1 it is the work done; with more
threads it also counts their spinning); --clock wall in elapsed time.

Each is run --repeats times, alternating, and its fastest run counts. Per case it prints tokens/s and
samples/s of each, the peak resident-memory increase of each run (RSS sampled every 5 ms by a psutil
thread, above the RSS at the start of the run, after glibc malloc_trim), and the share of this
machine's matmul FLOP/s in that dtype that our sampler reaches. The fp32 peak is the faster of torch's
default matmul and oneDNN's on a 2048^2 product, the bf16 peak torch's bf16 matmul on the same product (on a
CPU without AMX or avx512_bf16 that is emulated and slow); the share counts 2 x parameters FLOPs per generated token
("effective") and per row it actually ran through the model ("actual": samples of a prompt that drew
the same tokens so far share one row, a branch, so a trained model computes fewer rows than it
generates tokens), and with the prefill's products as well ("with its prefill": every product the model
ran, so the gap to 100% is time outside the weight matmuls). A line per dtype gives its geometric-mean speedup over the cases; the last line the
geometric mean over every case in every dtype.
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
from east.precision import cpu_description  # noqa: E402
from east.sampling.hf import sample  # noqa: E402
from east.sampling.onednn import available as onednn_available  # noqa: E402
from east.sampling.onednn import onednn_forward, resolve_gemm  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
now = time.process_time  # set from --clock in main()


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


def build_model(case: Case, tokenizer, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    return fp32_model(case, tokenizer).to(dtype)


def fp32_model(case: Case, tokenizer) -> LlamaForCausalLM:
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
    prompt_tokens: int = 0  # tokens prefilled (ours: each prompt once)

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
        start = now()
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
        seconds = now() - start
    return Run(seconds, tokens, samples, memory.mb)


def run_ours(model, tokenizer, prompts: list[str], case: Case, gemm: str = "onednn") -> Run:
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    longest = max(len(ids) for ids in prompt_ids)
    budget = case.rows * (longest + case.max_new_tokens)  # exactly case.rows slots
    with PeakRss() as memory, counting_branches() as rows:
        start = now()
        gens = sample(model, tokenizer, prompts, n=case.n, temperature=1.0, max_new_tokens=case.max_new_tokens,
                      seed=0, token_budget=budget, gemm=gemm)
        seconds = now() - start
    # Every sample's first token comes from its prompt's prefill, not from a decode row.
    return Run(seconds, sum(sum(g.num_tokens) for g in gens), sum(len(g.texts) for g in gens), memory.mb,
               rows[0] + len(prompts), sum(len(ids) for ids in prompt_ids))


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
    return Run(best.seconds, best.tokens, best.samples, max(r.peak_mb for r in runs), best.rows, best.prompt_tokens)


def matmul_flops(size: int = 2048, repeats: int = 8, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """FLOP/s of a size^2 product through torch's default matmul and (fp32) through oneDNN (packed weight)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    products = {"torch matmul": lambda: a @ b}
    if onednn_available() and dtype == torch.float32:
        layer = torch.nn.Linear(size, size, bias=False)
        products["oneDNN"] = functools.partial(onednn_forward(layer, pack=True), a)
    flops = {}
    for name, product in products.items():
        product()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = now()
            product()
            best = min(best, now() - start)
        flops[name] = 2 * size**3 / best
    return flops


def warm_up(model, tokenizer, prompts: list[str]) -> None:
    """One small run of each, so one-time costs (lazy imports, allocator growth) are not timed."""
    sample(model, tokenizer, prompts[:2], n=2, max_new_tokens=4)
    batch = tokenizer(prompts[:2], add_special_tokens=False, return_tensors="pt", padding=True)
    with torch.inference_mode():
        model.generate(**batch, do_sample=True, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id, use_cache=True)


def main() -> None:
    global now
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="halve the cases")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each, alternating; the fastest run of each counts (the machine is shared)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both (default 1: on a shared 2-core machine, 2 threads that "
                             "compete with other processes' threads can run 10x slower)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="cpu: process CPU time; wall: elapsed")
    args = parser.parse_args()
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes or any(d not in DTYPES for d in dtypes):
        parser.error(f"--dtypes: give one or more of {', '.join(DTYPES)}")
    now = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()

    tokenizer = load_tokenizer()
    peaks = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, clock {args.clock}; {cpu_description()}")
    for name in dtypes:
        flops = matmul_flops(dtype=DTYPES[name])
        peaks[name] = max(flops.values())
        print(f"{name} matmul 2048^2: " + ", ".join(f"{k} {f / 1e9:.1f} GFLOP/s" for k, f in flops.items()))
    speedups: dict[str, list[float]] = {name: [] for name in dtypes}
    sampler_only = []
    for case in cases(args.quick):
        for name in dtypes:
            model = build_model(case, tokenizer, DTYPES[name])
            params = sum(p.numel() for p in model.parameters())
            prompts = build_prompts(tokenizer, case.prompts)
            warm_up(model, tokenizer, prompts)
            paths = {"HF generate": lambda: run_generate(model, tokenizer, prompts, case),
                     "east sample": lambda: run_ours(model, tokenizer, prompts, case)}
            if name == "fp32":
                paths["  torch matmul"] = lambda: run_ours(model, tokenizer, prompts, case, gemm="torch")
            runs = {label: [] for label in paths}
            for _ in range(args.repeats):  # alternating, so a burst of load elsewhere hits all
                for label, fn in paths.items():
                    runs[label].append(fn())
            best = {label: fastest(r) for label, r in runs.items()}
            base, ours = best["HF generate"], best["east sample"]
            speedup = ours.tokens_per_s / base.tokens_per_s
            speedups[name].append(speedup)
            share = 2 * params * ours.tokens_per_s / peaks[name]
            actual = share * ours.rows / ours.tokens
            # Every product the model ran: decode rows and each prompt's prefill (the last prompt position
            # gives the first token, so it is counted once, in the prompt tokens).
            busy = share * (ours.rows - case.prompts + ours.prompt_tokens) / ours.tokens
            print(f"\n[{case.name}, {name}] {params / 1e6:.2f}M params, {case.prompts} prompts x n={case.n}, "
                  f"{case.rows} samples in flight, max_new_tokens={case.max_new_tokens}")
            for label, run in best.items():
                print(f"  {label:14s} {run.seconds:6.2f} s  {run.tokens:7d} tokens  {run.tokens_per_s:8.0f} tokens/s  "
                      f"{run.samples_per_s:7.1f} samples/s  peak RSS +{run.peak_mb:6.0f} MB")
            extra = ""
            if name == "fp32":
                sampler_only.append(best["  torch matmul"].tokens_per_s / base.tokens_per_s)
                extra = f" ({sampler_only[-1]:.2f}x with torch matmul; sampling.gemm auto chooses {resolve_gemm(model, 'auto')})"
            print(f"  speedup {speedup:.2f}x{extra}; east sample reaches {100 * share:.1f}% of {name} matmul peak "
                  f"effective, {100 * actual:.1f}% actual ({ours.rows} rows computed for {ours.tokens} tokens), "
                  f"{100 * busy:.1f}% with its prefill ({ours.prompt_tokens} prompt tokens)")
            del model
    geomean = lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs))  # noqa: E731
    print()
    if sampler_only:
        print(f"fp32 with torch's default matmul (gemm torch), speedup vs HF generate: {geomean(sampler_only):.2f}x")
    for name in dtypes:
        print(f"{name} sampling speedup vs HF generate {name}: {geomean(speedups[name]):.2f}x")
    print(f"sampling speedup vs HF generate: {geomean([x for xs in speedups.values() for x in xs]):.2f}x")


if __name__ == "__main__":
    main()
