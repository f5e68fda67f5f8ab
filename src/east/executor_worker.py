"""One process of `sampling.executor: launcher`: draws its share of a stage's shards.

    <sampling.launcher> -m east.executor_worker PLAN
    e.g. torchrun --nproc_per_node 8 -m east.executor_worker runs/demo/seed-0/samples/shards/launcher-plan.json

PLAN is the JSON the orchestrating `east run` wrote (east.executor.plan_json: the shards still to draw and the
Backend). Process RANK of WORLD_SIZE (the launcher's environment variables; 0 of 1 without them) draws every
WORLD_SIZE-th shard of the plan from its RANK on, loading the model once, and writes each shard file atomically.
No process group is needed: the processes share nothing but the filesystem. A launcher starts every process of a
node seeing every GPU; so that they do not all load onto the first, process LOCAL_RANK of LOCAL_WORLD_SIZE takes
its own sampling.tensor_parallel_size of the visible GPUs (CUDA_VISIBLE_DEVICES, set before CUDA starts). `east run` holds the run's lock,
checks that every shard is on disk and merges them. A UserError is printed as one line starting with "error:",
which `east run` repeats.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from east import io
from east.errors import UserError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m east.executor_worker PLAN", file=sys.stderr)
        return 2
    from east import executor

    try:
        shards, backend = executor.plan_from_json(json.loads(Path(args[0]).read_text()))
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        devices = own_devices(int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                              backend.sampling.tensor_parallel_size, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if devices is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = devices
        worker = executor.ShardWorker(backend)
        for shard in executor.rank_shards(shards, rank, world):
            index, rows = worker.draw(shard)
            print(f"rank {rank}: shard {index}: {rows} questions", flush=True)
    except (UserError, FileNotFoundError) as exc:
        print(f"error: {io.first_line(exc)}", file=sys.stderr, flush=True)
        return 1
    return 0


def own_devices(local_rank: int, local_world: int, per_process: int, visible: str | None) -> str | None:
    """CUDA_VISIBLE_DEVICES for process local_rank of local_world on its node: per_process consecutive GPUs of
    those visible (all of them as 0, 1, ... when the variable is unset). None (leave it) for one process per node.
    On a machine without GPUs the value names devices that do not exist, which CPU sampling never asks for."""
    if local_world <= 1:
        return None
    ids = visible.split(",") if visible else [str(i) for i in range(local_world * per_process)]
    if len(ids) < local_world * per_process:
        raise UserError(f"sampling.launcher starts {local_world} processes per node, each taking "
                        f"sampling.tensor_parallel_size={per_process} GPU(s), but CUDA_VISIBLE_DEVICES={visible} "
                        "has fewer; start fewer processes per node or lower tensor_parallel_size")
    return ",".join(ids[local_rank * per_process:(local_rank + 1) * per_process])


if __name__ == "__main__":
    sys.exit(main())
