"""The report: mean and 95% CI over seeds, paired differences to vanilla, table and figures from a run directory."""

import json
import math

import pytest

from east import io
from east.config import dump_config, load_config
from east.report import mean_ci, write_report


def test_mean_ci_hand_values():
    m, ci = mean_ci([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6)
    assert ci == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    m, ci = mean_ci([0.4])
    assert m == 0.4 and ci is None


def fake_run(tmp_path, arms_override, accuracies):
    config = load_config(None, ["name=fake", "seeds=[0, 1, 2]", arms_override])
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.yaml").write_text(dump_config(config))
    io.write_json(tmp_path / "default" / "eval-test.json", {"accuracy": 0.40})
    for (arm, seed), acc in accuracies.items():
        io.write_json(tmp_path / f"seed-{seed}" / arm / "eval-test.json", {"accuracy": acc})
    return config


def per_seed(arm: str, accuracies: list[float]) -> dict[tuple[str, int], float]:
    """{(arm, seed): accuracy} for seeds 0, 1, 2, ..."""
    return {(arm, seed): acc for seed, acc in enumerate(accuracies)}


def test_table_has_paired_deltas_and_paper_order(tmp_path):
    accuracies = (per_seed("sft", [0.50, 0.52, 0.54]) | per_seed("east@1", [0.52, 0.55, 0.56])
                  | per_seed("east@2", [0.49, 0.50, 0.55]))
    fake_run(tmp_path, "arms=[{name: east, weighting: entropy, a: [2, 1]}, {name: sft}]", accuracies)
    results = write_report(tmp_path)
    arms = [e["arm"] for e in results["arms"]]
    assert arms == ["sft", "east@1", "east@2"]  # vanilla first, then a ascending
    east1 = results["arms"][1]["splits"]["test"]
    assert east1["mean"] == pytest.approx((0.52 + 0.55 + 0.56) / 3)
    delta = east1["delta_vs_vanilla"]
    assert delta["mean"] == pytest.approx((0.02 + 0.03 + 0.02) / 3)
    assert delta["n"] == 3
    text = (tmp_path / "results.md").read_text()
    assert "| default | 40.0 |" in text
    assert "SFT + EAST (power, a=1)" in text
    assert (tmp_path / "figure3.png").stat().st_size > 1000


def test_figure3_plots_only_sft_entropy_arms(tmp_path, monkeypatch):
    from east import report

    plotted = []
    monkeypatch.setattr(report, "atomic_savefig", lambda fig, path: plotted.append(list(fig.axes[0].lines[0].get_xdata())))
    accuracies = {(arm, s): 0.5 for arm in ("sft", "east@1", "east@2", "dpo", "dpo+east") for s in range(3)}
    fake_run(tmp_path, "arms=[{name: sft}, {name: east, weighting: entropy, a: [1, 2]}, {name: dpo, loss: dpo}, "
                       "{name: dpo+east, loss: dpo, weighting: entropy, a: 1}]", accuracies)
    report.write_report(tmp_path)
    assert plotted[0] == [1.0, 2.0]


def test_missing_seeds_are_reported_not_invented(tmp_path):
    fake_run(tmp_path, "arms=[{name: sft}]", {("sft", 0): 0.5})
    results = write_report(tmp_path)
    cell = results["arms"][0]["splits"]["test"]
    assert cell["seeds_done"] == 1
    assert cell["per_seed"] == {0: 0.5, 1: None, 2: None}


def test_dast_arms_are_compared_with_plain_vanilla_not_with_each_other(tmp_path):
    accuracies = per_seed("sft", [0.50] * 3) | per_seed("dast-l", [0.40] * 3) | per_seed("dast-p", [0.52] * 3)
    fake_run(tmp_path, "arms=[{name: sft}, {name: dast-p, data: dast_p}, {name: dast-l, data: dast_l}]", accuracies)
    results = write_report(tmp_path)
    deltas = {e["arm"]: e["splits"]["test"].get("delta_vs_vanilla") for e in results["arms"]}
    assert deltas["sft"] is None
    assert deltas["dast-p"]["mean"] == pytest.approx(0.02)
    assert deltas["dast-l"]["mean"] == pytest.approx(-0.10)


def test_results_json_is_strict_json_with_one_seed(tmp_path):
    config = load_config(None, ["name=fake", "seeds=[0]", "arms=[{name: sft}, {name: east, weighting: entropy}]"])
    (tmp_path / "config.yaml").write_text(dump_config(config))
    io.write_json(tmp_path / "default" / "eval-test.json", {"accuracy": 0.40})
    for arm, acc in (("sft", 0.5), ("east", 0.52)):
        io.write_json(tmp_path / "seed-0" / arm / "eval-test.json", {"accuracy": acc})
    write_report(tmp_path)
    text = (tmp_path / "results.json").read_text()

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    results = json.loads(text, parse_constant=refuse)  # strict parsers reject NaN / Infinity
    east = results["arms"][1]["splits"]["test"]
    assert east["ci95"] is None and east["delta_vs_vanilla"]["ci95"] is None
    assert "| SFT + EAST (power, a=1) | 52.0 | +2.0 |" in (tmp_path / "results.md").read_text()


def test_over_runs_reads_each_runs_paired_delta_and_their_t_interval(tmp_path):
    from east.report import over_runs, over_runs_markdown

    runs = []
    for r, shift in enumerate((0.01, 0.03, 0.02)):  # dast-l vs sft per run: -0.05 + shift
        root = tmp_path / f"run{r}"
        accuracies = per_seed("sft", [0.50, 0.52, 0.54]) | per_seed("dast-l", [0.45 + shift, 0.47 + shift, 0.49 + shift])
        fake_run(root, "arms=[{name: sft}, {name: dast-l, data: dast_l}]", accuracies)
        runs.append(write_report(root))
    summary = over_runs(runs, ["a", "b", "c"])
    (dast,) = summary["arms"]  # vanilla's Δ to default needs per-question rows, which these runs lack
    cell = dast["splits"]["test"]
    assert dast["vs"] == "vanilla"
    assert cell["per_run"] == pytest.approx([-0.04, -0.02, -0.03])
    assert cell["mean"] == pytest.approx(-0.03)
    assert cell["ci95"] == pytest.approx(4.303 * 0.01 / math.sqrt(3))  # sd of (-4, -2, -3) points is 1
    assert cell["mdd80"] == pytest.approx(cell["ci95"] * (4.303 + 1.061) / 4.303)
    text = over_runs_markdown(summary)
    assert "| SFT + DAST-L vs vanilla | -4.0 / -2.0 / -3.0 | -3.0 ± 2.5 |" in text


def test_over_runs_refuses_runs_of_other_configs(tmp_path):
    from east.report import over_runs

    fake_run(tmp_path / "one", "arms=[{name: sft}, {name: east, weighting: entropy}]", per_seed("sft", [0.5] * 3))
    fake_run(tmp_path / "two", "arms=[{name: sft}]", per_seed("sft", [0.5] * 3))
    results = [write_report(tmp_path / "one"), write_report(tmp_path / "two")]
    with pytest.raises(ValueError, match="two: its arms or splits differ"):
        over_runs(results, ["one", "two"])
    with pytest.raises(ValueError, match="at least two"):
        over_runs(results[:1], ["one"])


def test_east_report_over_several_runs_writes_the_table(tmp_path):
    from typer.testing import CliRunner

    from east.cli import app

    for r in range(2):
        accuracies = per_seed("sft", [0.50] * 3) | per_seed("east", [0.60 + r / 100] * 3)
        fake_run(tmp_path / f"run{r}", "arms=[{name: sft}, {name: east, weighting: entropy}]", accuracies)
    out = tmp_path / "over.md"
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run0"), str(tmp_path / "run1"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run1" / "results.md").exists()
    assert "| SFT + EAST (power, a=1) vs vanilla | +10.0 / +11.0 | +10.5 ± 6.4 |" in out.read_text()
    lone = CliRunner().invoke(app, ["report", str(tmp_path / "run0"), "--out", str(out)])
    assert lone.exit_code != 0 and "two run directories" in lone.output
