"""The bookkeeping of a run directory, apart from the stages that fill it (east.pipeline): which stages are
done (`Run`: manifests, stage keys, the skip-or-redo decision), the lock that keeps a second `east run` out
(`RunLock`), preparing or resuming a directory (`prepare_run_dir`), and sample shard seeds (finished shards:
east.executor).

    east run configs/demo.yaml --out runs/demo      # east.pipeline.run_pipeline drives this module
    east status runs/demo                           # the same decisions, dry (Run.dry)

Processes that only do one stage's work under the orchestrating `east run` (e.g. the training worker,
east.training.worker) never take the lock and never write manifests: the orchestrator does both.
What a manifest records about each output file, and how damage is detected, is east.rundir.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from east import io, rundir
from east.config import RunConfig, dump_config
from east.errors import UserError
from east.tracking import Tracker

console = Console(stderr=True, soft_wrap=True)  # a path in a log line stays whole in logs and pipes


# ----------------------------------------------------------------------------------------------------
# Manifests


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for name in ("east-selftrain", "torch", "transformers", "trl", "peft", "datasets", "math-verify"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found


def stage_key(config: Any, inputs: dict[str, str]) -> str:
    blob = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Run:
    """A run directory plus the bookkeeping of which stages are done.

    dry=True (east status) runs nothing: `stale` collects why each stage would be redone, and a stage that
    would be redone hands its readers a key of its own so they show as stale too. full=True checks outputs
    against their full sha256 instead of size and sampled blocks."""

    config: RunConfig
    root: Path
    log: Callable[[str], None] = field(default=lambda msg: console.print(msg, highlight=False))
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    tracker: Tracker = field(default_factory=Tracker)  # train.report_to; does nothing by default
    dry: bool = False
    full: bool = False
    stale: dict[str, str] = field(default_factory=dict)

    def manifest_path(self, stage: str) -> Path:
        return self.root / "manifests" / f"{stage.replace('/', '__')}.json"

    def manifest(self, stage: str) -> dict | None:
        """The stage's manifest, None if it has not run; rundir.ManifestDamaged if it is garbled."""
        return rundir.read_manifest(self.manifest_path(stage))

    def key_of(self, stage: str) -> str:
        if stage in self.stale:
            return f"stale:{stage}"
        found = self.manifest(stage)
        if found is None:
            raise RuntimeError(f"stage {stage} has not run")
        return rundir.chain_key(found)

    def stage(
        self,
        stage: str,
        config: Any,
        inputs: list[str],
        outputs: list[Path],
        fn: Callable[[], dict[str, Any] | None],
    ) -> dict:
        """Run `fn` unless a manifest says the same stage already produced `outputs` from the same inputs."""
        input_keys = {name: self.key_of(name) for name in inputs}
        key = stage_key(config, input_keys)
        try:
            old = self.manifest(stage)
        except rundir.ManifestDamaged as exc:
            old, reason = None, f"manifest damaged: {exc}"
        else:
            reason = self.stale_reason(old, key, config, input_keys, outputs)
        if reason is None:
            self.skipped.append(stage)
            self.log(f"[dim]skip {stage} (done {old['finished_at']})[/dim]")
            return old
        if self.dry:
            self.stale[stage] = reason
            return old or {}
        if reason != "not run yet":
            self.log(f"[yellow]redo {stage}: {reason}[/yellow]")
        self.log(f"[bold]{stage}[/bold] ...")
        self.tracker.begin(stage)
        start = time.time()
        try:
            counts = fn() or {}
        except Exception as exc:
            exc.add_note(f"in stage {stage}")  # the command line's last-resort message names the stage
            raise
        manifest = {
            "stage": stage,
            "key": key,
            "inputs": input_keys,
            "config": config,
            "outputs": [str(p.relative_to(self.root)) for p in outputs],
            "files": rundir.output_records(self.root, outputs),
            "counts": counts,
            "seconds": round(time.time() - start, 2),
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "versions": versions(),
        }
        io.write_json(self.manifest_path(stage), manifest)
        self.tracker.stage_done(manifest)
        self.executed.append(stage)
        return manifest

    def stale_reason(self, old, key, config, input_keys, outputs) -> str | None:
        if old is None:
            return "not run yet"
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            return f"output missing: {missing[0]}"
        damaged = rundir.damage(self.root, old.get("files"), full=self.full)
        if damaged:
            return f"output damaged: {damaged}"
        if old["key"] == key:
            return None
        changed = [name for name, k in input_keys.items() if old["inputs"].get(name) != k]
        if changed:
            return f"input changed: {', '.join(changed)}"
        return f"config changed: {changed_keys(old['config'], config)}"


def changed_keys(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                diffs.append(changed_keys(old.get(k), new.get(k), f"{prefix}{k}."))
        return ", ".join(diffs) or "(none)"
    return f"{prefix.rstrip('.')} {old!r} -> {new!r}"


# ----------------------------------------------------------------------------------------------------
# Locking


@dataclass
class RunLock:
    """An exclusive lock on a run directory; a second `east run` on it refuses instead of corrupting it."""

    root: Path
    handle: Any = None

    def __enter__(self) -> RunLock:
        self.root.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise UserError(
                f"{self.root} is in use by another east process; wait for it to finish or use another --out"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


# ----------------------------------------------------------------------------------------------------
# Creating or resuming a run directory


IDENTITY_SECTIONS = ("task", "model")  # what a run directory is *about*; other sections may change and re-run stages
# How bad rows are handled is not what the directory is about: the errors that name these keys must be fixable in place.
ROW_HANDLING = {"skip_bad_rows", "max_prompt_tokens"}


def check_compatible(saved: Path, config: RunConfig) -> None:
    """Refuse a run directory made for another task or model."""
    import yaml
    from pydantic import ValidationError

    try:
        old = RunConfig.model_validate(yaml.safe_load(saved.read_text()))
    except (ValidationError, yaml.YAMLError) as exc:
        # Damaged, or from another version of east. The manifests still say what each stage ran with, and
        # the stage keys redo whatever differs, so nothing is mixed up by carrying on.
        console.print(f"[yellow]{saved} could not be read as a config ({str(exc).splitlines()[0]}); rewritten "
                      "from the given config, stages are checked against their manifests[/yellow]")
        return
    for section in IDENTITY_SECTIONS:
        before, after = (getattr(c, section).model_dump(mode="json", exclude=ROW_HANDLING) for c in (old, config))
        if before != after:
            raise UserError(f"{saved.parent} was created for a different {section} ({changed_keys(before, after)}); "
                            "use another --out")


def prepare_run_dir(config: RunConfig, root: Path) -> Run:
    root.mkdir(parents=True, exist_ok=True)
    saved = root / "config.yaml"
    text = dump_config(config)
    old = saved_text(saved)
    if old is not None and old != text:
        if rundir.config_problem(old) is None:
            check_compatible(saved, config)
            console.print(f"[yellow]{saved}: config differs from the saved one; stages it affects will be redone[/yellow]")
        else:
            # The manifests still say what every stage was run with, so nothing is lost with it.
            console.print(f"[yellow]{saved} was damaged ({rundir.config_problem(old)}); rewritten from the given "
                          "config, stages are checked against their manifests[/yellow]")
    io.write_text(saved, text)
    return Run(config=config, root=root)


def saved_text(path: Path) -> str | None:
    """The saved config.yaml's text; None if absent; undecodable bytes come back as replacement characters."""
    return path.read_bytes().decode("utf-8", errors="replace") if path.exists() else None


def check_out_dir(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root} is a file, not a directory; give --out a new or existing run directory")


# ----------------------------------------------------------------------------------------------------
# Sample shards


def shard_seed(seed: int, shard: int) -> int:
    return int(hashlib.sha256(f"{seed}:{shard}".encode()).hexdigest()[:8], 16)
