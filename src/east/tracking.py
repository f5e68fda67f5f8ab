"""Experiment tracking: the trainers' logs and a run's per-stage metrics in TensorBoard and / or Weights & Biases.

    east run configs/demo.yaml 'train.report_to=[tensorboard, wandb]'     # pip install 'east-selftrain[tracking]'
    tensorboard --logdir runs/demo/tensorboard                              # W&B: runs/demo/wandb/

Every stage belongs to a *scope*, the part of the run it is about: `run` (questions, bootstrap, the results table),
`default` (the untrained model's evaluation), `seed-<s>` (the samples every arm of a seed shares) and
`seed-<s>/<arm>/iter-<t>` (one arm's weights, training and evaluation in one iteration). A scope is one TensorBoard
run (`tensorboard/<scope>/`) and one W&B run named `<config name>/<scope>` in group `<config name>`. The trainer of a
cell logs into its cell's scope, so `train/loss` and `train/weight/mean` sit beside that arm's kept questions,
weight histogram and accuracy.

When a stage finishes, `Tracker.stage_done` logs its manifest's numbers once (a skipped stage logs nothing): every
numeric count as `<stage>/<key>` (`weight/kept`, `weight/dropped/all_wrong`, `evaluate/test/accuracy`, ...), the
stage's seconds, samples and tokens per second for sampling, and the entropy and weight of the kept questions as
the histograms `weight/entropy` and `weight/weight`. `Tracker.results` logs the results table at the end.

The pipeline calls `begin(stage)` before a stage and `stage_done(manifest)` after it, `results(...)` once, and uses
the tracker as a context manager; `trainer_args(stage)` are the tracking arguments of the trainer a stage runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rich.console import Console

from east import io
from east.errors import UserError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # report_to value -> the package it needs
ROOT_SCOPE = "run"
PROJECT = "east-selftrain"  # W&B project unless WANDB_PROJECT says otherwise
console = Console(stderr=True)
CELL = re.compile(r"^(?P<seed>seed-\d+)/(?P<arm>.+?)(?:/iter-(?P<iteration>\d+))?$")


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def require_trackers(report_to: Sequence[str]) -> None:
    """Refuse, in one line, a tracker whose package is missing: at config time, not after hours of sampling."""
    missing = [name for name in report_to if name in PACKAGES and not installed(PACKAGES[name])]
    if missing:
        raise UserError(f"train.report_to: {missing[0]} is not installed; pip install 'east-selftrain[tracking]' "
                        "(or set train.report_to=none)")


def wandb_project() -> str:
    return os.environ.get("WANDB_PROJECT", PROJECT)


def scope_of(stage: str) -> str:
    """seed-0/sft/weight -> seed-0/sft/iter-1; seed-0/sft/iter-2/train -> seed-0/sft/iter-2; seed-0/sample -> seed-0;
    default/evaluate-test -> default; questions -> run."""
    prefix = stage.rpartition("/")[0]
    if not prefix:
        return ROOT_SCOPE
    match = CELL.match(prefix)
    if match is None:
        return prefix
    return f"{match['seed']}/{match['arm']}/iter-{match['iteration'] or 1}"


def iteration_of(scope: str) -> int:
    """The step stage metrics are logged at: the cell's iteration, 0 outside cells."""
    match = re.search(r"/iter-(\d+)$", scope)
    return int(match[1]) if match else 0


def flat_numbers(value: Any, prefix: str) -> dict[str, float]:
    """Numeric leaves of nested counts as {'prefix/a/b': x}; lists, strings and flags are left out."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, child in value.items():
            out.update(flat_numbers(child, f"{prefix}/{key}"))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}


def stage_metrics(manifest: dict[str, Any], root: Path) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(scalars, histograms) of one finished stage, from its manifest and, for weight stages, its stats table."""
    kind = manifest["stage"].rpartition("/")[2]
    prefix = kind.replace("evaluate-", "evaluate/")  # evaluate-test -> evaluate/test/accuracy
    counts, seconds = manifest.get("counts") or {}, manifest["seconds"]
    scalars = {**flat_numbers(counts, prefix), f"{prefix}/seconds": float(seconds)}
    histograms: dict[str, list[float]] = {}
    if kind == "sample" and seconds > 0:
        scalars["sample/samples_per_second"] = counts.get("samples", 0) / seconds
        scalars["sample/tokens_per_second"] = counts.get("tokens", 0) / seconds
    if kind == "weight":
        stats = next(p for p in manifest["outputs"] if p.endswith("stats.parquet"))
        kept = [row for row in io.read_parquet(root / stats) if row["kept"]]
        histograms = {"weight/entropy": [r["entropy"] for r in kept], "weight/weight": [r["weight"] for r in kept]}
    return scalars, histograms


def results_scalars(results: dict[str, Any]) -> dict[str, float]:
    """Mean accuracy per setting and split: results/<arm>/<split> (results/default/<split> for the base model)."""
    out = {f"results/default/{split}": value for split, value in results["default"].items() if value is not None}
    for entry in results["arms"]:
        for split, cell in entry["splits"].items():
            if cell["mean"] is not None:
                out[f"results/{entry['arm']}/{split}"] = cell["mean"]
    return out


@dataclass
class Tracker:
    """The run-level side of `train.report_to` for one run directory; with no tracker every method does nothing.

    W&B has one active run per process and the Trainer's W&B callback logs into it, so the tracker keeps exactly
    one W&B run open, that of the scope of the stage at hand, and switches when a stage of another scope starts.
    A scope's run has a fixed id, so a scope met again (a DAST stage of a seed, the results, a resumed run)
    continues its run instead of starting a new one.
    """

    root: Path = Path(".")
    name: str = "run"
    report_to: tuple[str, ...] = ()
    writers: dict[str, Any] = field(default_factory=dict)  # scope -> TensorBoard SummaryWriter
    wandb_run: Any = None
    wandb_scope: str | None = None

    @classmethod
    def open(cls, config, root: Path) -> Tracker:
        """The tracker of `config.train.report_to` for the run directory `root` (refuses missing packages)."""
        report_to = tuple(name for name in config.train.report_to if name != "none")
        require_trackers(report_to)
        tracker = cls(Path(root), config.name, report_to)
        if report_to:
            console.print(tracker.describe(), highlight=False, soft_wrap=True)
        return tracker

    def describe(self) -> str:
        """One line: where each tracker's runs go."""
        parts = []
        if "tensorboard" in self.report_to:
            parts.append(f"TensorBoard: tensorboard --logdir {self.root / 'tensorboard'}")
        if "wandb" in self.report_to:
            mode = os.environ.get("WANDB_MODE", "online")
            parts.append(f"W&B ({mode}): project {wandb_project()}, group {self.name}, files in {self.root / 'wandb'}")
        return "tracking: " + "; ".join(parts)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def run_name(self, scope: str) -> str:
        return self.name if scope == ROOT_SCOPE else f"{self.name}/{scope}"

    def tensorboard_dir(self, scope: str) -> Path:
        return self.root / "tensorboard" / scope

    def trainer_args(self, stage: str) -> dict[str, Any]:
        """report_to, run name and TensorBoard directory of the trainer that `stage` runs (east.training.train)."""
        scope = scope_of(stage)
        return {"report_to": list(self.report_to) or ["none"], "run_name": self.run_name(scope),
                "logging_dir": self.tensorboard_dir(scope)}

    def begin(self, stage: str) -> None:
        """Before a stage: make its scope's W&B run the active one, for the trainer's W&B callback to log into."""
        if "wandb" in self.report_to:
            self.switch_wandb(scope_of(stage))

    def stage_done(self, manifest: dict[str, Any]) -> None:
        """After a stage ran (not when it was skipped): its numbers, once."""
        if not self.report_to:
            return
        scope = scope_of(manifest["stage"])
        scalars, histograms = stage_metrics(manifest, self.root)
        self.log(scope, scalars, histograms)

    def results(self, results: dict[str, Any]) -> None:
        """The results table of `east report` (TensorBoard text, W&B table `results/table`) and its mean accuracies."""
        if not self.report_to:
            return
        from east.report import markdown, table_header, table_rows

        self.log(ROOT_SCOPE, results_scalars(results), {})
        if "tensorboard" in self.report_to:
            writer = self.writer(ROOT_SCOPE)
            writer.add_text("results/table", markdown(results), iteration_of(ROOT_SCOPE))
            writer.flush()
        if "wandb" in self.report_to:
            import wandb

            splits = results["splits"]
            columns = table_header(splits)
            self.wandb_run.log({"results/table": wandb.Table(columns=columns, data=table_rows(results))})

    def log(self, scope: str, scalars: dict[str, float], histograms: dict[str, list[float]]) -> None:
        step = iteration_of(scope)
        if "tensorboard" in self.report_to:
            writer = self.writer(scope)
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, step)
            for tag, values in histograms.items():
                if values:
                    writer.add_histogram(tag, np.asarray(values, dtype=float), step)
            writer.flush()
        if "wandb" in self.report_to:
            import wandb

            self.switch_wandb(scope)
            data: dict[str, Any] = dict(scalars)
            data.update({tag: wandb.Histogram(values) for tag, values in histograms.items() if values})
            self.wandb_run.log(data)

    def writer(self, scope: str):
        if scope not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            self.writers[scope] = SummaryWriter(log_dir=str(self.tensorboard_dir(scope)))
        return self.writers[scope]

    def switch_wandb(self, scope: str) -> None:
        if self.wandb_scope == scope:
            return
        self.finish_wandb()
        import wandb

        run_id = hashlib.sha256(f"{self.root.resolve()}:{scope}".encode()).hexdigest()[:16]
        # Silent, console off: W&B would print three lines and wrap stdout again at every switch of scope;
        # `open` said once where the runs go.
        self.wandb_run = wandb.init(project=wandb_project(), group=self.name, name=self.run_name(scope), id=run_id,
                                    resume="allow", dir=str(self.root),
                                    settings=wandb.Settings(console="off", silent=True))
        self.wandb_scope = scope

    def finish_wandb(self, failed: bool = False) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if failed else 0)
        self.wandb_run, self.wandb_scope = None, None

    def close(self, failed: bool = False) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
        self.finish_wandb(failed)


@contextmanager
def training_run(report_to: Sequence[str], run_name: str | None, directory: Path) -> Iterator[None]:
    """A W&B run around one training call made outside a pipeline scope (`east.training.train`, `east bootstrap`).

    The Trainer's W&B callback opens a run when none is active but never finishes it, so the next trainer of the
    process would log into it; this opens the run itself (named, in `directory`) and finishes it afterwards. Inside
    a pipeline the scope's run is already active and is left alone."""
    if "wandb" not in report_to:
        yield
        return
    import wandb

    if wandb.run is not None:
        yield
        return
    settings = wandb.Settings(console="off", quiet=True)
    with wandb.init(project=wandb_project(), name=run_name, dir=str(directory), settings=settings):
        yield
