"""Tables and plots of a run directory: results.json, results.md, figure3.png, figure5.png.

    east report runs/demo
    east report runs/dast-b0 runs/dast-b1 runs/dast-b2 --out over-builds.md     # Δ read over runs of one config

Accuracy is shown as mean +- 95% confidence half-width over seeds (Student t), and every weighted arm
also as its paired difference to the vanilla arm of the same loss over the same seeds: the seeds share
their samples, so the paired difference removes the sampling noise both arms have in common.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from east import io, rundir
from east.config import ArmConfig, RunConfig, expand_arms
from east.paired import paired_difference, t_interval, t975

WEIGHTING_NAMES = {"none": "", "lw_w": "LW(W)", "lw_p": "LW(P)", "entropy": "EAST", "accuracy": "EAST-acc",
                   "rejection": "EAST-rej"}
WEIGHTING_ORDER = ["none", "lw_w", "lw_p", "entropy", "accuracy", "rejection"]


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and 95% half-width (None with a single value: results.json is strict JSON, which has no NaN)."""
    if len(values) < 2:
        return mean(values), None
    return mean(values), t975(len(values) - 1) * stdev(values) / math.sqrt(len(values))


def display_name(arm: ArmConfig) -> str:
    name = arm.loss.upper()
    if arm.data != "vanilla":
        name += " + " + {"dast_p": "DAST-P", "dast_l": "DAST-L"}[arm.data]
    if arm.weighting != "none":
        name += f" + {WEIGHTING_NAMES[arm.weighting]}"
        if arm.weighting in ("entropy", "accuracy", "rejection"):
            name += f" ({arm.mapping}" + (f", a={arm.a:g})" if arm.mapping == "power" else ")")
    if arm.replicate:
        name += f" [replicate {arm.replicate}]"
    return name


def load_config(root: Path) -> RunConfig:
    return rundir.saved_config(root)  # a damaged config.yaml is a one-line error saying how to restore it


def read_accuracy(path: Path) -> float | None:
    return io.read_json(path)["accuracy"] if path.exists() else None


def collect(root: Path) -> dict[str, Any]:
    """Every number the report shows, as one JSON-able dict."""
    config = load_config(root)
    splits = ["test"] + (["ood"] if config.task.ood_arith is not None else [])
    arms = sorted(expand_arms(config.arms), key=arm_order)
    results: dict[str, Any] = {"name": config.name, "seeds": config.seeds, "splits": splits, "default": {}, "arms": []}
    for split in splits:
        results["default"][split] = read_accuracy(root / "default" / f"eval-{split}.json")
    for arm in arms:
        entry = {"arm": arm.label(), "display": display_name(arm), "loss": arm.loss, "data": arm.data,
                 "weighting": arm.weighting, "mapping": arm.mapping, "a": arm.a, "replicate": arm.replicate,
                 "splits": {split: split_cell(root, config, arm, split, 1) for split in splits}}
        if config.iterations > 1:
            entry["iterations"] = {t: {split: split_cell(root, config, arm, split, t) for split in splits}
                                   for t in range(1, config.iterations + 1)}
        results["arms"].append(entry)
    add_paired_differences(results, root)
    results["weights"] = weight_summaries(root, config)
    results["dast"] = dast_summaries(root, config)
    return results


def dast_summaries(root: Path, config: RunConfig) -> dict[str, Any]:
    """Level histogram and augmentation report of the first seed's DAST data."""
    out = {}
    for data in ("dast_p", "dast_l"):
        path = root / f"seed-{config.seeds[0]}" / f"levels-{data}.json"
        if path.exists():
            found = io.read_json(path)
            out[data] = {"histogram": found["histogram"], "report": found["report"]}
    return out


def arm_order(arm: ArmConfig) -> tuple:
    return (["sft", "dpo", "kto"].index(arm.loss), ["vanilla", "dast_p", "dast_l"].index(arm.data),
            WEIGHTING_ORDER.index(arm.weighting), arm.mapping, float(arm.a))


def iteration_dir(root: Path, seed: int, arm: ArmConfig, iteration: int) -> Path:
    base = root / f"seed-{seed}" / arm.label()
    return base if iteration == 1 else base / f"iter-{iteration}"


def split_cell(root: Path, config: RunConfig, arm: ArmConfig, split: str, iteration: int) -> dict[str, Any]:
    per_seed = {s: read_accuracy(iteration_dir(root, s, arm, iteration) / f"eval-{split}.json") for s in config.seeds}
    done = [v for v in per_seed.values() if v is not None]
    m, ci = mean_ci(done) if done else (None, None)
    return {"per_seed": per_seed, "mean": m, "ci95": ci, "seeds_done": len(done)}


def is_vanilla(entry: dict[str, Any]) -> bool:
    return entry["weighting"] == "none" and entry.get("data", "vanilla") == "vanilla" and not entry.get("replicate")


def add_paired_differences(results: dict[str, Any], root: Path | None = None) -> None:
    """Every arm's paired difference to the vanilla arm of its loss (`delta_vs_vanilla`), and every vanilla
    arm's to the untrained model (`delta_vs_default`, the self-training gain). From the per-question rows
    when the run has them (`east.paired`: seeds x questions crossed interval, with its minimum detectable
    difference), else from the per-seed accuracies (Student t over seeds)."""
    vanilla = {}
    for entry in results["arms"]:
        if is_vanilla(entry):
            vanilla.setdefault(entry["loss"], entry)
    for entry in results["arms"]:
        base = vanilla.get(entry["loss"])
        for split, cell in entry["splits"].items():
            if base is not None and base is not entry:
                delta = paired_cell(root, entry, base, split)
                if delta:
                    cell["delta_vs_vanilla"] = delta
            if base is entry and root is not None:
                default = question_rows(root / "default" / f"eval-{split}.jsonl")
                if default:
                    found = paired_difference(entry_rows(root, entry, split), {s: default for s in cell["per_seed"]})
                    if found["n"]:
                        cell["delta_vs_default"] = found


def paired_cell(root: Path | None, entry: dict[str, Any], base: dict[str, Any], split: str) -> dict[str, Any] | None:
    if root is not None:
        found = paired_difference(entry_rows(root, entry, split), entry_rows(root, base, split))
        if found["n"]:
            return found
    cell = entry["splits"][split]
    pairs = [(v, base["splits"][split]["per_seed"].get(s)) for s, v in cell["per_seed"].items()]
    diffs = [v - b for v, b in pairs if v is not None and b is not None]
    if not diffs:
        return None
    found = t_interval(diffs)
    return {"mean": found["mean"], "ci95": found["ci95"], "mdd80": found["mdd80"], "n": len(diffs),
            "method": "seeds (accuracies only)"}


def entry_rows(root: Path, entry: dict[str, Any], split: str) -> dict[int, dict[str, float]]:
    """{seed: {question_id: 1.0 / 0.0}} of an arm's first-iteration evaluation, for the seeds that have it."""
    out = {}
    for seed in entry["splits"][split]["per_seed"]:
        rows = question_rows(root / f"seed-{seed}" / entry["arm"] / f"eval-{split}.jsonl")
        if rows:
            out[int(seed)] = rows
    return out


def question_rows(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    return {row["question_id"]: float(bool(row["correct"])) for row in io.read_jsonl(path)}


def weight_summaries(root: Path, config: RunConfig) -> dict[str, Any]:
    """Entropy and weight distribution of the first seed's kept questions, per weighted arm."""
    out = {}
    seed = config.seeds[0]
    for arm in expand_arms(config.arms):
        path = root / f"seed-{seed}" / arm.label() / "stats.parquet"
        if not path.exists():
            continue
        kept = [r for r in io.read_parquet(path) if r["kept"]]
        if kept:
            out[arm.label()] = {"kept": len(kept), "entropy": quantiles([r["entropy"] for r in kept]),
                                "weight": quantiles([r["weight"] for r in kept])}
    return out


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"min": ordered[0], "p25": q(0.25), "median": q(0.5), "p75": q(0.75), "max": ordered[-1],
            "mean": sum(ordered) / len(ordered)}


def pct(value: float | None, ci: float | None = None, sign: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{100 * value:+.1f}" if sign else f"{100 * value:.1f}"
    if ci is not None:
        text += f" ± {100 * ci:.1f}"
    return text


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """The accuracy table's cells: setting, accuracy per split, then per split the paired Δ (to vanilla of
    the same loss; a vanilla arm's to default) and its minimum detectable difference."""
    splits = results["splits"]
    rows = [["default", *(pct(results["default"][s]) for s in splits), *("" for _ in splits for _ in (0, 1))]]
    for entry in results["arms"]:
        cells = [pct(entry["splits"][s]["mean"], entry["splits"][s]["ci95"]) for s in splits]
        deltas = []
        for s in splits:
            cell = entry["splits"][s]
            d = cell.get("delta_vs_vanilla") or cell.get("delta_vs_default")
            deltas += [delta_text(d, "delta_vs_default" in cell), pct(d.get("mdd80")) if d else ""]
        rows.append([entry["display"], *cells, *deltas])
    return rows


def delta_text(delta: dict[str, Any] | None, vs_default: bool) -> str:
    if not delta or delta.get("mean") is None:
        return ""
    return pct(delta["mean"], delta.get("ci95"), sign=True) + (" (vs default)" if vs_default else "")


def table_header(splits: list[str]) -> list[str]:
    return ["setting", *(f"{s} acc. %" for s in splits), *(h for s in splits for h in (f"{s} Δ (paired)", f"{s} MDD"))]


def markdown(results: dict[str, Any]) -> str:
    splits = results["splits"]
    seeds = results["seeds"]
    head = table_header(splits)
    lines = [f"# {results['name']}: accuracy (%), mean ± 95% CI over {len(seeds)} seed(s) {seeds}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    lines += ["", "Δ: paired difference per test question to the same loss without weighting or DAST data, over the same "
              "seeds (shared samples); for a vanilla arm, to the untrained model (default). 95% CI with seeds and "
              "questions as crossed random factors (east/paired.py); with accuracies only, Student t over seeds.",
              "MDD: minimum detectable difference, the true Δ this design detects with 80% power at the 5% level. "
              "A CI that contains 0 means no difference was detected at this scale."]
    for arm, w in results.get("weights", {}).items():
        lines.append(f"- {arm}: {w['kept']} kept questions; entropy {fmt_q(w['entropy'])}; weight {fmt_q(w['weight'])}")
    lines += iteration_lines(results) + dast_lines(results)
    return "\n".join(lines) + "\n"


def iteration_lines(results: dict[str, Any]) -> list[str]:
    with_iterations = [e for e in results["arms"] if "iterations" in e]
    if not with_iterations:
        return []
    count = len(with_iterations[0]["iterations"])
    head = ["setting"] + [f"iteration {t}" for t in range(1, count + 1)]
    lines = ["", "## Accuracy (%) over self-training iterations (test)", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for e in with_iterations:
        cells = [pct(c["test"]["mean"], c["test"]["ci95"]) for c in e["iterations"].values()]
        lines.append(f"| {e['display']} | " + " | ".join(cells) + " |")
    return lines


def dast_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for data, found in results.get("dast", {}).items():
        hist = ", ".join(f"{level} {count}" for level, count in found["histogram"].items())
        lines += ["", f"## {data}: difficulty levels of the training questions (first seed)", "", hist]
        report = found["report"]
        if "levels" in report:
            lines += ["", "| level | questions | target | samples | distinct correct kept | reached target | hit cap | budget |",
                      "|---|---|---|---|---|---|---|---|"]
            for level, r in report["levels"].items():
                lines.append(f"| {level} | {r['questions']} | {r['target']} | {r['samples']} | {r['correct_distinct']} | "
                             f"{r['reached_target']} | {r['hit_cap']} | {r['stopped_by_budget']} |")
        if "lengths" in report:
            lines += ["", "Correct responses per level before and after DAST-L (count, questions with one, mean characters):",
                      "", "| level | before: correct | questions | mean chars | after: correct | questions | mean chars |",
                      "|---|---|---|---|---|---|---|"]
            for level, r in report["lengths"].items():
                b, a = r["before"], r["after"]
                lines.append(f"| {level} | {b['correct']} | {b['questions_with_correct']} | {fmt_chars(b['mean_chars'])} | "
                             f"{a['correct']} | {a['questions_with_correct']} | {fmt_chars(a['mean_chars'])} |")
    return lines


def half_width(ci: float | None) -> float:
    """A CI half-width in points for an error bar; 0 where there is none (one seed)."""
    return 0.0 if ci is None else 100 * ci


def fmt_chars(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def fmt_q(q: dict[str, float]) -> str:
    return f"min {q['min']:.2f} / median {q['median']:.2f} / max {q['max']:.2f} (mean {q['mean']:.2f})"


def write_report(root: Path) -> dict[str, Any]:
    root = Path(root)
    results = collect(root)
    # Which config.yaml these results belong to: east status warns when a later run changed it.
    results["config_digest"] = rundir.config_digest((root / "config.yaml").read_text())
    io.write_json(root / "results.json", results)
    io.write_text(root / "results.md", markdown(results))
    figure3(root, results)
    figure4(root, results)
    figure5(root, results)
    return results


def figure4(root: Path, results: dict[str, Any]) -> None:
    """Accuracy over self-training iterations per arm, with CI bands when there are seeds."""
    arms = [e for e in results["arms"] if "iterations" in e]
    if not arms:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for e in arms:
        points = [(int(t), c["test"]) for t, c in e["iterations"].items() if c["test"]["mean"] is not None]
        if not points:
            continue
        xs = [t for t, _ in points]
        ys = [100 * c["mean"] for _, c in points]
        ci = [half_width(c["ci95"]) for _, c in points]
        ax.plot(xs, ys, marker="o", label=e["display"])
        ax.fill_between(xs, [y - d for y, d in zip(ys, ci)], [y + d for y, d in zip(ys, ci)], alpha=0.2)
    ax.set_xticks(range(1, 1 + max(len(e["iterations"]) for e in arms)))
    ax.set_xlabel("self-training iteration")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, root / "figure4.png")
    plt.close(fig)


def figure3(root: Path, results: dict[str, Any]) -> None:
    """Accuracy against the power exponent a (plain SFT arms with entropy weights), with CI bands."""
    points = [(e["a"], e["splits"]["test"]) for e in results["arms"]
              if e["loss"] == "sft" and e.get("data", "vanilla") == "vanilla" and e["weighting"] == "entropy"
              and e["mapping"] == "power" and e["splits"]["test"]["mean"] is not None]
    if len({a for a, _ in points}) < 2:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points.sort(key=lambda p: p[0])
    xs = [a for a, _ in points]
    ys = [100 * c["mean"] for _, c in points]
    ci = [half_width(c["ci95"]) for _, c in points]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(xs, ys, marker="o", label="EAST (power mapping)")
    ax.fill_between(xs, [y - c for y, c in zip(ys, ci)], [y + c for y, c in zip(ys, ci)], alpha=0.2)
    vanilla = next((e for e in results["arms"] if e["weighting"] == "none" and e["loss"] == "sft"), None)
    if vanilla and vanilla["splits"]["test"]["mean"] is not None:
        ax.axhline(100 * vanilla["splits"]["test"]["mean"], color="grey", linestyle="--", label="vanilla SFT")
    ax.set_xlabel("a (power exponent)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, root / "figure3.png")
    plt.close(fig)


def figure5(root: Path, results: dict[str, Any]) -> None:
    """Per-question (entropy, 1 - accuracy) coloured by rejection, and the three signals' accuracies."""
    config = load_config(root)
    stats_path = next((root / f"seed-{config.seeds[0]}" / e["arm"] / "stats.parquet" for e in results["arms"]
                       if (root / f"seed-{config.seeds[0]}" / e["arm"] / "stats.parquet").exists()), None)
    if stats_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = io.read_parquet(stats_path)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    points = left.scatter([s["entropy"] for s in stats], [1 - s["accuracy"] for s in stats],
                          c=[s["rejection"] for s in stats], cmap="viridis", s=12)
    fig.colorbar(points, ax=left, label="rejection R")
    left.set_xlabel("entropy h (nats)")
    left.set_ylabel("1 - accuracy")
    bars = [(e["display"], e["splits"]["test"]) for e in results["arms"]
            if e["loss"] == "sft" and e.get("data", "vanilla") == "vanilla" and e["mapping"] == "power"
            and e["weighting"] in ("none", "entropy", "accuracy", "rejection") and e["splits"]["test"]["mean"] is not None]
    if bars:
        right.barh([b[0] for b in bars], [100 * b[1]["mean"] for b in bars],
                   xerr=[half_width(b[1]["ci95"]) for b in bars])
        right.set_xlabel("test accuracy (%)")
    fig.tight_layout()
    atomic_savefig(fig, root / "figure5.png")
    plt.close(fig)


def atomic_savefig(fig, path: Path) -> None:
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def over_runs(results: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Each arm's paired Δ read over several runs of one config (e.g. one per backbone build): per run its Δ (to
    vanilla of its loss; a vanilla arm's to default), and over the runs their mean with a Student t interval
    (runs as the unit, n - 1 df) and its minimum detectable difference. Each run's own Δ already averages its
    seeds, so the interval over runs carries seed noise and run-to-run spread together.

    `results` are the runs' results.json dicts (`collect`), in the order of `names`; they must have the same arms
    and splits, since a Δ read over runs compares like with like.
    """
    if len(results) < 2:
        raise ValueError("reading over runs needs at least two run directories")
    first = results[0]
    for name, other in zip(names[1:], results[1:]):
        if [e["arm"] for e in other["arms"]] != [e["arm"] for e in first["arms"]] or other["splits"] != first["splits"]:
            raise ValueError(f"{name}: its arms or splits differ from {names[0]}'s; read over runs of one config only")
    rows = []
    for i, entry in enumerate(first["arms"]):
        row: dict[str, Any] = {"arm": entry["arm"], "display": entry["display"], "splits": {}}
        for split in first["splits"]:
            cells = [run["arms"][i]["splits"][split] for run in results]
            deltas = [c.get("delta_vs_vanilla") or c.get("delta_vs_default") for c in cells]
            if any(d is None or d.get("mean") is None for d in deltas):
                continue
            values = [d["mean"] for d in deltas]
            found = t_interval(values)
            row["vs"] = "default" if "delta_vs_default" in cells[0] else "vanilla"
            row["splits"][split] = {"per_run": values, "mean": found["mean"], "ci95": found["ci95"],
                                    "mdd80": found["mdd80"], "n": len(values)}
        if row["splits"]:
            rows.append(row)
    return {"runs": names, "splits": first["splits"], "arms": rows}


def over_runs_markdown(summary: dict[str, Any]) -> str:
    splits = summary["splits"]
    head = ["comparison", *(h for s in splits for h in (f"{s} Δ per run", f"{s} Δ over runs", f"{s} MDD"))]
    lines = [f"Paired Δ over {len(summary['runs'])} runs: {', '.join(summary['runs'])}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary["arms"]:
        cells = [f"{row['display']} vs {row['vs']}"]
        for s in splits:
            c = row["splits"].get(s)
            cells += ([" / ".join(pct(v, sign=True) for v in c["per_run"]), pct(c["mean"], c["ci95"], sign=True),
                       pct(c["mdd80"])] if c else ["", "", ""])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Δ per run: that run's paired Δ (results.md of the run). Over runs: mean ± 95% Student t half-width "
              "with the runs as the unit (n - 1 df); MDD: the true Δ this detects with 80% power at the 5% level."]
    return "\n".join(lines) + "\n"
