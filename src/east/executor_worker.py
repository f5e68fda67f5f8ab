"""One process of `sampling.executor: launcher`: draws its share of a stage's shards.

    <sampling.launcher> -m east.executor_worker PLAN
    e.g. torchrun --nproc_per_node 8 -m east.executor_worker runs/demo/seed-0/samples/shards/launcher-plan.json

PLAN is the JSON the orchestrating `east run` wrote (east.executor.plan_json: the shards still to draw and the
Backend). Process RANK of WORLD_SIZE (the launcher's environment variables; 0 of 1 without them) draws every
WORLD_SIZE-th shard of the plan from its RANK on, loading the model once, and writes each shard file atomically.
No process group is needed: the processes share nothing but the filesystem. `east run` holds the run's lock,
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
        worker = executor.ShardWorker(backend)
        for shard in executor.rank_shards(shards, rank, world):
            index, rows = worker.draw(shard)
            print(f"rank {rank}: shard {index}: {rows} questions", flush=True)
    except (UserError, FileNotFoundError) as exc:
        print(f"error: {io.first_line(exc)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
