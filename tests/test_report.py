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
