"""Executor benchmark: the same sample shards drawn in process and on a local Ray cluster, side by side.

    .venv/bin/python benchmarks/executor.py [--questions 32] [--shard-size 8] [--n 8] [--replicas 2] [--cpus 2]

1. In process (`sampling.executor: local`), one torch thread (--threads): load the built-in backbone once, draw
   every shard. One thread, as the replicas have (Ray gives an actor of num_cpus=1 one OpenMP thread), so the
   comparison favours Ray: its two replicas may use two cores.
2. Ray (`sampling.executor: ray`): `ray.init(num_cpus=--cpus)`, then data_parallel_size=--replicas actors each
   load the backbone and draw shards; cluster start-up is timed apart from the drawing.
3. Checks that both wrote the same rows (exit 1 otherwise).

What it shows on a small machine: the price of Ray on a small job. Each replica is a new process that imports
torch and loads the model, and the cluster itself takes seconds to start, so on 2 cores, where two replicas
cannot beat one process using both cores, Ray is several times slower. The executor is for many GPUs, where a
shard takes minutes and start-up is paid once. The last line is `ray / in-process time: N.NNx` (above 1: Ray is
slower). Needs east-selftrain[distributed]. No numbers are asserted.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from east import executor
from east.backbone import builtin_checkpoint
from east.config import ModelConfig, SamplingConfig, TaskConfig
from east.models import load_tokenizer
from east.tasks.loaders import load_questions
from east.tasks.prompts import render_prompt


def plan(args, directory: Path):
    path = str(builtin_checkpoint())
    tokenizer = load_tokenizer(path)
    questions = load_questions(TaskConfig(train_size=args.questions), "train")
    prompts = [render_prompt(tokenizer, q, None) for q in questions]
    return path, executor.sample_shards([q.question_id for q in questions], prompts, size=args.shard_size, n=args.n,
                                        seed_of=lambda i: i, directory=directory, fingerprint="bench")


def in_process(args, root: Path) -> tuple[float, list[dict]]:
    path, shards = plan(args, root / "local")
    backend = executor.Backend(SamplingConfig(n=args.n, max_new_tokens=args.max_new_tokens), ModelConfig(), path)
    start = time.perf_counter()
    executor.draw_shards(shards, backend, local_worker=lambda: executor.ShardWorker(backend))
    return time.perf_counter() - start, executor.merged_rows(shards)


def on_ray(args, root: Path) -> tuple[float, float, list[dict]]:
    import ray

    path, shards = plan(args, root / "ray")
    backend = executor.Backend(SamplingConfig(n=args.n, max_new_tokens=args.max_new_tokens, executor="ray",
                                              data_parallel_size=args.replicas), ModelConfig(), path)
    start = time.perf_counter()
    # Worker niceness 0, as east.executor.connect starts a local cluster (Ray's default is 15).
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, _system_config={"worker_niceness": 0})
    cluster = time.perf_counter() - start
    try:
        start = time.perf_counter()
        executor.draw_shards(shards, backend, local_worker=lambda: None)
        drawing = time.perf_counter() - start
    finally:
        ray.shutdown()
    return cluster, drawing, executor.merged_rows(shards)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shards = -(-args.questions // args.shard_size)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"in process; {args.questions} questions x {args.n} samples x <= {args.max_new_tokens} tokens, {shards} shards")
    with tempfile.TemporaryDirectory() as tmp:
        local_seconds, local_rows = in_process(args, Path(tmp))
        tokens = sum(sum(r["num_tokens"]) for r in local_rows)
        print(f"in process: {local_seconds:.1f} s ({tokens:,} tokens, {tokens / local_seconds:,.0f} tokens/s; model "
              "load included)")
        cluster, drawing, ray_rows = on_ray(args, Path(tmp))
        print(f"ray ({args.replicas} replicas, num_cpus={args.cpus}): {cluster + drawing:.1f} s = cluster start "
              f"{cluster:.1f} s + replicas (start, model load, drawing) {drawing:.1f} s")
    if ray_rows != local_rows:
        print("ray and in-process rows differ")
        return 1
    print("rows: identical")
    print(f"ray / in-process time: {(cluster + drawing) / local_seconds:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
