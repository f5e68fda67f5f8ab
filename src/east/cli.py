"""The `east` command: the demo, a whole run, or one stage of it.

    east demo                                   built-in task and backbone, CPU, minutes
    east run configs/demo.yaml [--out DIR] [KEY=VALUE ...]
    east sample|grade|weight|train|evaluate CONFIG [--out DIR]   run up to that stage
    east bootstrap [--out DIR]                  train the built-in backbone
    east report RUN_DIR    east status RUN_DIR
    east audit RUN_DIR                          our grader against math-verify and the last number

A problem with the input, a damaged file, a full disk, a permission or memory problem is printed as one
line naming the file and the fix (exit code 2); so is an unexpected error, named with its stage.
`--verbose` shows the traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from east.errors import UserError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Uncertainty-weighted self-training (EAST) and difficulty-aware self-training (DAST).")
console = Console(soft_wrap=True)  # long lines stay whole in logs and pipes
state = {"verbose": False}

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"

ConfigArg = Annotated[Path, typer.Argument(help="A YAML config, e.g. configs/demo.yaml.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Run directory (default: runs/<config name>).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. sampling.n=32 train.epochs=1.")]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and library logs.")] = False) -> None:
    state["verbose"] = verbose
    if not verbose:
        quiet_libraries()


def quiet_libraries() -> None:
    """Library progress bars and info logs drown the one line per stage that says what happened."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def guarded(fn):
    """Turn any failure into one line and exit code 2 (130 for Ctrl-C), unless --verbose."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; finished stages and sample shards are kept, rerun to resume[/yellow]")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as exc:
            if state["verbose"]:
                raise
            console.print(f"[red]error:[/red] {error_line(exc)}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(2) from None

    return wrapper


RESUME = "nothing half-written was kept, rerun to resume"
OS_FIXES = {
    errno.ENOSPC: f"free some disk space; {RESUME}",
    errno.EDQUOT: f"free some space within your disk quota; {RESUME}",
    errno.EACCES: f"make it writable and readable for you (or use another --out); {RESUME}",
    errno.EPERM: f"make it writable and readable for you (or use another --out); {RESUME}",
    errno.EROFS: f"the file system is read-only: use another --out; {RESUME}",
    errno.ENOTDIR: "a part of that path is a file, not a directory: check --out and the paths in the config",
    errno.EISDIR: "that path is a directory where a file was expected: check --out and the paths in the config",
}
MEMORY_FIX = ("lower sampling.token_budget / evaluation.token_budget or train.batch_size, or refuse long questions "
              "with task.max_prompt_tokens")


def error_line(exc: Exception) -> str:
    """One line for any failure: the file or stage, what happened and the fix. (No rich markup from messages.)"""
    from rich.markup import escape

    stage = next((note for note in getattr(exc, "__notes__", []) if note.startswith("in stage ")), None)
    where = f" ({stage})" if stage else ""
    if isinstance(exc, UserError):
        return escape(str(exc))
    if isinstance(exc, OSError):
        file = getattr(exc, "filename", None) or ""
        fix = OS_FIXES.get(exc.errno, RESUME)
        return escape(f"{exc.strerror or exc} ({file}){where}; {fix}")
    text = " ".join(str(exc).split())[:300]
    code = re.search(r"\(os error (\d+)\)", text)  # Rust libraries (safetensors, tokenizers) wrap OS errors
    if code and int(code.group(1)) in OS_FIXES:
        return escape(f"{os.strerror(int(code.group(1)))}{where}: {text}; {OS_FIXES[int(code.group(1))]}")
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower():
        return escape(f"out of memory{where}: {text or 'MemoryError'}; {MEMORY_FIX}")
    return escape(f"{type(exc).__name__}: {text}{where}; unexpected, please report it with the output of "
                  "`east --verbose ...` (finished stages are kept, a rerun resumes)")


def configure_run(config: Path, overrides: list[str] | None, out: Path | None):
    from east.config import load_config

    cfg = load_config(config, overrides or [])
    return cfg, out or Path("runs") / cfg.name


def run_until(stage: str, config: Path, overrides: list[str] | None, out: Path | None):
    from east.pipeline import run_pipeline

    cfg, root = configure_run(config, overrides, out)
    start = time.time()
    run = run_pipeline(cfg, root, until=stage)
    console.print(f"{stage}: {len(run.executed)} stage(s) run, {len(run.skipped)} skipped, "
                  f"{time.time() - start:.0f} s; run directory {root}", highlight=False)
    return run


@app.command()
@guarded
def run(config: ConfigArg, overrides: Overrides = None, out: OutOpt = None) -> None:
    """Run every stage for every seed and arm; resumes where a previous run stopped."""
    run_ = run_until("report", config, overrides, out)
    print_results(run_.root)


@app.command()
@guarded
def demo(out: OutOpt = None, overrides: Overrides = None) -> None:
    """EAST end to end on the built-in task and backbone (CPU, a few minutes)."""
    config = REPO_CONFIGS / "demo.yaml"
    if not config.exists():
        raise UserError(f"{config} not found; run the demo from a checkout of east-selftrain (make demo)")
    run_ = run_until("report", config, overrides, out)
    print_results(run_.root)


def stage_command(stage: str, doc: str):
    @guarded
    def command(config: ConfigArg, overrides: Overrides = None, out: OutOpt = None) -> None:
        run_until(stage, config, overrides, out)

    command.__doc__ = doc
    app.command(name=stage)(command)


stage_command("sample", "Sample n responses per training question (and what sampling needs first).")
stage_command("grade", "Extract, cluster and grade the samples.")
stage_command("weight", "Per-question statistics, weights and training rows for every arm.")
stage_command("train", "Train every arm.")
stage_command("evaluate", "Evaluate the base model and every trained arm.")


@app.command()
@guarded
def bootstrap(
    out: Annotated[Path, typer.Option("--out", help="Where to save the backbone.")] = Path("runs/backbone"),
    config: Annotated[Path | None, typer.Option("--config", help="Take the bootstrap section from a config.")] = None,
    overrides: Overrides = None,
) -> None:
    """Train the built-in tiny backbone (warm-up SFT on the labelled arith split), e.g. bootstrap.n_rows=2000."""
    from east.backbone import bootstrap as run_bootstrap
    from east.config import load_config

    cfg = load_config(config, overrides or [])
    start = time.time()
    path = run_bootstrap(out, **dict(cfg.bootstrap), report_to=cfg.train.report_to, run_name=f"{cfg.name}/bootstrap")
    console.print(f"backbone saved to {path} in {time.time() - start:.0f} s")


@app.command()
@guarded
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="A run directory, or several runs of one config.")],
    out: Annotated[Path | None, typer.Option("--out", help="With several runs: also write the table over them here.")] = None,
) -> None:
    """Write results.json, results.md and the figures of a run directory, and print the table.

    Given several run directories of one config (e.g. one per backbone build: `model.path=...`), each gets its
    report, and a table of every arm's paired difference read over the runs is printed (and written to --out).
    """
    from east import io
    from east.report import over_runs, over_runs_markdown, write_report

    for run_dir in run_dirs:
        if not (run_dir / "config.yaml").exists():
            raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    if out is not None and len(run_dirs) < 2:
        raise UserError("--out writes the table over several runs: give two run directories or more")
    results = [write_report(run_dir) for run_dir in run_dirs]
    if len(run_dirs) == 1:
        print_results(run_dirs[0])
        return
    try:
        text = over_runs_markdown(over_runs(results, [str(d) for d in run_dirs]))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    console.print(text, highlight=False, markup=False)
    if out is not None:
        io.write_text(out, text)


@app.command()
@guarded
def status(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    verify: Annotated[bool, typer.Option("--verify", help="Read every output whole and check it against its digest; "
                                         "exit code 1 if anything is damaged or stale.")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="Compare with this config instead of the run's "
                                                "config.yaml.")] = None,
) -> None:
    """Which stages of a run directory are done (with counts and timings), stale or damaged."""
    from rich.markup import escape

    from east import rundir
    from east.config import load_config
    from east.pipeline import plan_run

    manifests = sorted((run_dir / "manifests").glob("*.json")) if (run_dir / "manifests").is_dir() else []
    if not manifests:
        raise UserError(f"{run_dir}: no finished stages (no manifests/)")
    cfg = load_config(config) if config else rundir.saved_config(run_dir)
    plan = plan_run(cfg, run_dir, full=verify)
    found, damaged = [], {}
    # A manifest is written last in its stage, so its mtime orders the stages (finished_at has 1 s resolution).
    for path in sorted(manifests, key=lambda p: p.stat().st_mtime_ns):
        try:
            found.append(rundir.read_manifest(path))
        except rundir.ManifestDamaged as exc:
            damaged[path] = str(exc)
    stale = {stage: why for stage, why in plan.stale.items() if why != "not run yet"}
    table = Table(title=f"{run_dir}: {len(plan.skipped)} finished stage(s), {len(stale)} stale or damaged, "
                        f"{len(plan.stale) - len(stale)} not run yet")
    table.add_column("stage", no_wrap=True)
    table.add_column("state")
    table.add_column("finished", no_wrap=True)
    table.add_column("s", justify="right", no_wrap=True)
    table.add_column("counts")
    planned = set(plan.skipped) | set(plan.stale)
    for m in found:
        plain = [(k, v) for k, v in m.get("counts", {}).items() if not isinstance(v, (dict, list))]
        counts = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in plain[:4])
        state = "not in the config" if m["stage"] not in planned else "stale" if m["stage"] in stale else "done"
        table.add_row(m["stage"], state, str(m["finished_at"])[11:], f"{m['seconds']:.1f}", counts,
                      style=None if state == "done" else "yellow")
    for path in damaged:
        table.add_row(path.stem.replace("__", "/"), "damaged", "", "", "", style="yellow")
    console.print(table)
    # Reasons below the table, one line each, so paths in them stay whole (and greppable).
    for stage, why in stale.items():
        console.print(f"[yellow]stale {stage}: {escape(why)}[/yellow]", highlight=False)
    for path, why in damaged.items():
        console.print(f"[yellow]damaged manifest: {escape(why)}[/yellow]", highlight=False)
    shards = list(run_dir.glob("seed-*/shards/*.parquet"))
    if shards:
        console.print(f"{len(shards)} sample shard(s) on disk")
    outdated = results_outdated(run_dir)
    if outdated:
        console.print(f"[yellow]{outdated}[/yellow]", highlight=False)
    if verify and (stale or damaged):
        console.print(f"{len(stale) + len(damaged)} stage(s) stale or damaged; `east run CONFIG --out {run_dir}` "
                      "redoes them", highlight=False)
        raise typer.Exit(1)


def results_outdated(run_dir: Path) -> str | None:
    """A warning when results.json was written for another config.yaml than the one in the directory now."""
    from east import io, rundir

    results = run_dir / "results.json"
    if not results.exists():
        return None
    try:
        digest = io.read_json(results).get("config_digest")
    except UserError as exc:
        return str(exc)
    if digest == rundir.config_digest((run_dir / "config.yaml").read_text()):
        return None
    return (f"{results} was written for an earlier config.yaml; `east run` (or `east report` once every stage is "
            "done) rewrites it")


@app.command()
@guarded
def audit(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with graded samples.")],
    examples: Annotated[int, typer.Option("--examples", min=0, help="Examples shown per disagreeing cell.")] = 3,
) -> None:
    """Re-grade a run's samples with plain math-verify and the last number in the text: where they
    disagree with our grader, and which training questions' kept flag or weight that would change.
    Writes audit.json in the run directory."""
    from east.audit import audit_run

    print_audit(audit_run(run_dir, examples=examples))
    console.print(f"data: {run_dir / 'audit.json'}", highlight=False)


def print_audit(report: dict) -> None:
    from east.audit import CLASSES

    console.print(f"{report['run']}: {report['samples']:,} graded samples ({report['kind']}), seeds "
                  f"{', '.join(report['seeds'])}", highlight=False)
    for name, found in report["references"].items():
        share = f" ({100 * found['agreement']:.1f}%)" if found["agreement"] is not None else ""
        table = Table(title=f"ours (rows) vs {name} (columns): {found['agree']:,} of {report['samples']:,} agree{share}")
        table.add_column("ours \\ " + name, no_wrap=True)
        for theirs in CLASSES:
            table.add_column(theirs, justify="right")
        for ours in CLASSES:
            table.add_row(ours, *(f"{found['table'][ours][theirs]:,}" for theirs in CLASSES))
        console.print(table)
        if found.get("step_rejected_reference_correct"):
            console.print(f"{found['step_rejected_reference_correct']:,} of the 'ours incorrect, {name} correct' samples "
                          "were refused by step verification (grading.verify_steps): right final answer, unsound "
                          "working; a disagreement by design", highlight=False)
        for cell, rows in found["examples"].items():
            console.print(f"[bold]{cell.replace('reference', name)}[/bold] ({sum_cell(found['table'], cell):,})",
                          highlight=False)
            for row in rows:
                console.print(f"  {row['seed']} {row['question_id']}: gold {row['gold']!r}, ours {row['ours']!r}, "
                              f"{name} {row['reference']!r}; ends {row['response_end'][-100:]!r}", highlight=False)
        arms = Table(title=f"if {name} graded instead: kept questions (ours -> {name}), kept flags and weights changed")
        for column in ("seed", "arm", "kept", "kept Δ", "weight Δ", "Δ > 1%", "max |Δw|"):
            arms.add_column(column, justify="left" if column in ("seed", "arm") else "right")
        for seed, by_arm in found["arms"].items():
            for arm, c in by_arm.items():
                if "error" in c:
                    arms.add_row(seed.removeprefix("seed-"), arm, c["error"], "", "", "", "")
                else:
                    arms.add_row(seed.removeprefix("seed-"), arm, f"{c['kept_ours']} -> {c['kept_reference']}",
                                 str(c["kept_changed"]), str(c["weight_changed"]), str(c["weight_changed_over_1pct"]),
                                 f"{c['max_weight_change']:.3f}")
        console.print(arms)


def sum_cell(table: dict, cell: str) -> int:
    """The count behind an examples heading "ours X, reference Y"."""
    ours, theirs = (part.split(" ", 1)[1] for part in cell.split(", "))
    return table[ours][theirs]


def print_results(root: Path) -> None:
    from east import io
    from east.report import fmt_q, table_header, table_rows

    results = io.read_json(root / "results.json")
    splits = results["splits"]
    table = Table(title=f"{results['name']}: accuracy % (mean ± 95% CI over seeds {results['seeds']})")
    table.add_column("setting")
    for name in table_header(splits)[1:]:
        table.add_column(name.replace(" acc. %", ""), justify="right")
    for row in table_rows(results):
        table.add_row(*row)
    console.print(table)
    for arm, w in results.get("weights", {}).items():
        if any(e["arm"] == arm and e["weighting"] in ("entropy", "accuracy", "rejection") for e in results["arms"]):
            console.print(f"entropy of the {w['kept']} kept questions ({arm}): {fmt_q(w['entropy'])}", highlight=False)
            console.print(f"weights of the {w['kept']} kept questions ({arm}): {fmt_q(w['weight'])}", highlight=False)
    console.print("Δ: paired per question, vanilla vs default, weighted vs vanilla; MDD: smallest true Δ detected "
                  "with 80% power", highlight=False)
    console.print(f"tables: {root / 'results.md'}  data: {root / 'results.json'}", highlight=False)


if __name__ == "__main__":
    sys.exit(app())
