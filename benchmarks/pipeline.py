"""End to end: a reduced configs/table1.yaml run with today's fp32 path, then with the fast path; seconds per stage.

    .venv/bin/python benchmarks/pipeline.py                 # about 10 minutes on one CPU core (2 rounds)
    .venv/bin/python benchmarks/pipeline.py --train-size 100 --test-size 100   # a smoke run
    .venv/bin/python benchmarks/pipeline.py --clock wall

Both runs use table1's task, backbone, sampling, grading, filter and training settings, reduced to one
seed, the vanilla SFT arm and the SFT + EAST arm (a = 1), and --train-size / --test-size questions, each
in a fresh run directory, in this one process, with --threads torch threads:
- "fp32 path": precision fp32, sampling.gemm onednn, no length grouping (the defaults on CPU: what east did
  before issue 15);
- "fast path": precision auto, sampling.gemm auto (precision auto is fp32 on a CPU without native bf16, so
  there the fast path differs from the fp32 path by the GEMM choice only; bf16 on one with avx512_bf16 or AMX).
  Length-grouped training batches are not part of it: they cost accuracy on this task (README, "Speed
  settings"); --group-by-length adds them, as the fast path had them until 2026-12-07.

Each stage is timed around the pipeline's own stage call; --clock cpu (the default) counts the CPU time of
this process and of the child processes that ended (grading workers), so other jobs on a shared machine
change the numbers little; --clock wall counts elapsed time. The per-stage table sums the stages of
each kind over the rounds; the accuracies show the two paths reach the same results within noise. The last
line is `end-to-end speedup vs fp32 path: N.NNx`. Timing only: nothing here asserts.

Why rounds in alternating order (--rounds 2, the default: fp32 then fast, then fast then fp32): on an AMD EPYC
Zen 3 (2026-12-07), where both paths train with the same arithmetic (identical accuracies), one round with the
fp32 path first timed the training stage 1.13x faster on the fast path, and two rounds in alternating order
right after timed it 0.91x: stages doing identical work vary by about 10% from run to run there, whatever the
order. Alternating keeps a drift over the run from favouring the path that runs second, and each round's ratio
is printed, so the spread between rounds shows how far the last line can be trusted.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from east import pipeline  # noqa: E402
from east.config import load_config  # noqa: E402
from east.precision import cpu_description  # noqa: E402

TABLE1 = Path(__file__).resolve().parents[1] / "configs" / "table1.yaml"
PATHS = {
    "fp32 path": ["precision=fp32", "sampling.gemm=onednn", "train.group_by_length=false"],
    "fast path": ["precision=auto", "sampling.gemm=auto", "train.group_by_length=false"],
}
GROUPED = "train.group_by_length=true"


def clock(kind: str):
    """Seconds so far: CPU time of this process and its ended children, or wall time."""
    if kind == "wall":
        return time.perf_counter

    def cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    return cpu


@contextmanager
def timed_stages(kind: str) -> Iterator[dict[str, float]]:
    """Within the block, every stage's seconds add up in the yielded dict, by kind (sample, train, ...)."""
    seconds: dict[str, float] = defaultdict(float)
    now = clock(kind)
    original = pipeline.Run.stage

    def stage(self, name, config, inputs, outputs, fn):
        def timed():
            start = now()
            try:
                return fn()
            finally:
                seconds[stage_kind(name)] += now() - start

        return original(self, name, config, inputs, outputs, timed)

    pipeline.Run.stage = stage
    try:
        yield seconds
    finally:
        pipeline.Run.stage = original


def stage_kind(name: str) -> str:
    """'seed-0/sample' -> 'sample', 'sft/evaluate-test' -> 'evaluate'."""
    return name.rsplit("/", 1)[-1].split("-")[0]


def overrides(args) -> list[str]:
    return [
        "seeds=[0]",
        f"task.train_size={args.train_size}",
        f"task.test_size={args.test_size}",
        "arms=[{name: sft, loss: sft}, {name: sft+east, loss: sft, weighting: entropy, a: 1}]",
        "grading.workers=1",
    ]


def accuracies(root: Path) -> dict[str, float]:
    found = {}
    for name in ("default", "seed-0/sft", "seed-0/sft+east"):
        path = root / name / "eval-test.json"
        if path.exists():
            found[name] = json.loads(path.read_text())["accuracy"]
    return found


def choices(root: Path) -> str:
    """What the `auto` settings chose, as the sample stage's manifest records it."""
    counts = json.loads((root / "manifests" / "seed-0__sample.json").read_text())["counts"]
    return ", ".join(f"{k} {counts[k]}" for k in ("precision", "gemm") if k in counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=300)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--group-by-length", action="store_true",
                        help="Fast path with length-grouped training batches (faster, and less accurate here).")
    parser.add_argument("--rounds", type=int, default=2,
                        help="Rounds over both paths, the order alternating from round to round (fp32 path first in "
                             "odd rounds); stage seconds are summed over rounds. An even number balances the order.")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    paths = {**PATHS, "fast path": PATHS["fast path"][:-1] + [GROUPED]} if args.group_by_length else PATHS
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    pipeline.console.quiet = True

    print(f"reduced {TABLE1.name}: 1 seed, arms sft and sft+east, {args.train_size} training and {args.test_size} "
          f"test questions, {args.rounds} round(s) in alternating order; torch {torch.__version__}, {args.threads} "
          f"thread(s), clock {args.clock}; {cpu_description()}")
    seconds_of = {label: defaultdict(float) for label in PATHS}
    totals = {label: [] for label in PATHS}
    with tempfile.TemporaryDirectory() as tmp:
        # One small untimed run first: lazy imports and first-call costs would otherwise land on the first path.
        warm = load_config(TABLE1, overrides(args) + ["task.train_size=8", "task.test_size=8", "train.epochs=1"])
        pipeline.run_pipeline(warm, Path(tmp) / "warm-up")
        for round_ in range(args.rounds):
            for label in round_order(list(paths), round_):
                root = Path(tmp) / f"{label.replace(' ', '-')}-{round_}"
                config = load_config(TABLE1, overrides(args) + paths[label])
                with timed_stages(args.clock) as seconds:
                    start = clock(args.clock)()
                    pipeline.run_pipeline(config, root)
                    total = clock(args.clock)() - start
                for kind, spent in seconds.items():
                    seconds_of[label][kind] += spent
                totals[label].append(total)
                found = accuracies(root)
                print(f"round {round_ + 1}, {label}: {total:.1f} s; test accuracy "
                      + ", ".join(f"{k} {100 * v:.1f}%" for k, v in found.items())
                      + (f"; auto chose {choices(root)}" if choices(root) else ""), flush=True)

    kinds = sorted({k for seconds in seconds_of.values() for k in seconds}, key=pipeline_order)
    print(f"\n{'stage':10s} " + " ".join(f"{label:>10s}" for label in PATHS) + "   ratio")
    for kind in kinds:
        a, b = (seconds_of[label].get(kind, 0.0) for label in PATHS)
        print(f"{kind:10s} {a:10.1f} {b:10.1f}   {a / b if b else float('nan'):.2f}x")
    fp32, fast = (sum(totals[label]) for label in PATHS)
    print(f"{'total':10s} {fp32:10.1f} {fast:10.1f}   (seconds over {args.rounds} round(s), {args.clock} clock, "
          "including loading and reporting)")
    if args.rounds > 1:
        print("per round, fp32 path / fast path: "
              + ", ".join(f"{a / b:.2f}x" for a, b in zip(totals["fp32 path"], totals["fast path"])))
    print(f"end-to-end speedup vs fp32 path: {fp32 / fast:.2f}x")


def round_order(labels: list[str], round_: int) -> list[str]:
    """The paths in the order round `round_` (from 0) runs them: as given in even rounds, reversed in odd ones."""
    return labels if round_ % 2 == 0 else labels[::-1]


def pipeline_order(kind: str) -> int:
    order = ["bootstrap", "questions", "sample", "grade", "weight", "select", "train", "evaluate", "report"]
    return order.index(kind) if kind in order else len(order)


if __name__ == "__main__":
    main()
