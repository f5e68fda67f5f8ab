"""One arm's train stage as its own process(es), run by `east run` when `train.launcher` is set:

    <train.launcher> -m east.training.worker RUN_DIR ARM
    e.g. accelerate launch --config_file configs/accelerate/zero3.yaml -m east.training.worker runs/demo seed-0/sft

ARM is the arm's directory relative to RUN_DIR (its stage name without "/train"). The orchestrating `east run`
wrote ARM/rows.parquet (the select stage) and ARM/worker.json (the start model and the arguments of
east.training.train). Every process trains its share of each batch; the main one writes ARM/model/ and
ARM/train_metrics.json, and Trainer checkpoints go to ARM/checkpoints/ (resumed from on a rerun).

The worker takes no lock and writes no manifest: `east run` holds the run directory's lock while it waits for
the launcher, then checks these outputs and writes the stage's manifest (east.pipeline.stage_train).
A UserError is printed as one line starting with "error:", which `east run` repeats.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from east import io
from east.errors import UserError

SPEC_FILE = "worker.json"
LOG_FILE = "train-worker.log"


def spec_path(arm_dir: Path) -> Path:
    return Path(arm_dir) / SPEC_FILE


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m east.training.worker RUN_DIR ARM", file=sys.stderr)
        return 2
    directory = Path(args[0]) / args[1]
    try:
        spec = json.loads(spec_path(directory).read_text())
        from east.training import train

        rows = io.read_parquet(directory / "rows.parquet")
        train(rows, spec["start"], directory, resume=True, **spec["args"], **spec["tracking"])
    except (UserError, FileNotFoundError) as exc:
        print(f"error: {io.first_line(exc)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
