"""`east run` through every stage on a tiny config, with the shipped backbone; then a rerun skips everything."""

import json

import pytest
from typer.testing import CliRunner

from east.cli import app

runner = CliRunner()

TINY = [
    "name=tiny", "task.train_size=24", "task.test_size=16", "sampling.n=6", "sampling.max_new_tokens=48",
    "sampling.shard_size=10", "evaluation.max_new_tokens=48", "train.epochs=1", "train.batch_size=8",
    "train.sft.learning_rate=1e-4",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    result = runner.invoke(app, ["run", "configs/demo.yaml", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    return out, result


def test_every_stage_leaves_its_artifact(tiny_run):
    out, result = tiny_run
    for path in ["config.yaml", "data/train.jsonl", "data/test.jsonl", "seed-0/samples.parquet", "seed-0/graded.parquet",
                 "seed-0/sft/stats.parquet", "seed-0/sft/rows.parquet", "seed-0/sft/model/config.json",
                 "seed-0/sft+east/eval-test.jsonl", "default/eval-test.json", "results.json", "results.md"]:
        assert (out / path).exists(), path
    assert len(list((out / "seed-0" / "shards").glob("*.parquet"))) == 3  # 24 questions / 10 per shard


def test_results_table_has_default_and_both_arms(tiny_run):
    out, result = tiny_run
    results = json.loads((out / "results.json").read_text())
    assert [e["arm"] for e in results["arms"]] == ["sft", "sft+east"]
    for entry in results["arms"]:
        assert 0.0 <= entry["splits"]["test"]["mean"] <= 1.0
    assert "SFT + EAST" in result.output and "default" in result.output


def test_weights_have_mean_one_over_kept_questions(tiny_run):
    from east import io

    out, _ = tiny_run
    vanilla = io.read_parquet(out / "seed-0" / "sft" / "stats.parquet")
    east = io.read_parquet(out / "seed-0" / "sft+east" / "stats.parquet")
    kept = [r for r in east if r["kept"]]
    assert kept, "the tiny run kept no question"
    assert {r["level"] for r in east} <= {"easiest", "easy", "medium", "hard", "hardest", "unsolved"}
    assert all(r["level"] == "unsolved" for r in east if r["drop_reason"] == "all_wrong")
    assert sum(r["weight"] for r in kept) / len(kept) == pytest.approx(1.0)
    assert {r["weight"] for r in vanilla if r["kept"]} == {1.0}
    assert [r["kept"] for r in vanilla] == [r["kept"] for r in east]  # the same questions, different weights
    rows = io.read_parquet(out / "seed-0" / "sft+east" / "rows.parquet")
    weight_of = {r["question_id"]: r["weight"] for r in kept}
    assert all(row["weight"] == pytest.approx(weight_of[row["question_id"]]) for row in rows)


def test_rerun_skips_every_stage(tiny_run):
    out, _ = tiny_run
    result = runner.invoke(app, ["run", "configs/demo.yaml", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "0 stage(s) run" in result.output


def test_changed_arm_setting_redoes_only_that_arm(tiny_run):
    out, _ = tiny_run
    arms = "arms=[{name: sft}, {name: sft+east, weighting: entropy, a: 2.0}]"
    result = runner.invoke(app, ["run", "configs/demo.yaml", "--out", str(out), *TINY, arms])
    assert result.exit_code == 0, result.output
    assert "redo seed-0/sft+east/weight: config changed: a 1.5 -> 2.0" in result.output.replace("\n", " ")
    assert "skip seed-0/sft/train" in result.output.replace("\n", " ")


def test_status_lists_finished_stages(tiny_run):
    out, _ = tiny_run
    result = runner.invoke(app, ["status", str(out)])
    assert result.exit_code == 0
    assert "seed-0/sample" in result.output


def test_bad_config_key_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("# Launch: none\nsampling:\n  temprature: 0.5\n")
    result = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "unknown key 'sampling.temprature'" in result.output
    assert "Traceback" not in result.output


def test_bootstrap_command_saves_a_loadable_backbone(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "backbone"
    result = runner.invoke(app, ["bootstrap", "--out", str(out), "bootstrap.n_rows=32", "bootstrap.epochs=0.25",
                                 "bootstrap.hidden=32", "bootstrap.layers=1", "bootstrap.heads=2"])
    assert result.exit_code == 0, result.output
    assert AutoModelForCausalLM.from_pretrained(out).config.hidden_size == 32
    assert AutoTokenizer.from_pretrained(out).chat_template
    assert json.loads((out / "bootstrap.json").read_text())["settings"]["n_rows"] == 32


def test_step_verification_and_an_aa_replicate_end_to_end(tmp_path):
    """grading.verify_steps reaches the graded sets and the per-question table; a replicate arm redraws
    its own choices from the same samples; the report pairs every arm per question."""
    from east import io

    out = tmp_path / "steps"
    arms = "arms=[{name: sft}, {name: sft-aa, replicate: 1}]"
    result = runner.invoke(app, ["run", "configs/demo.yaml", "--out", str(out), *TINY, "grading.verify_steps=true", arms])
    assert result.exit_code == 0, result.output
    graded = io.read_parquet(out / "seed-0" / "graded.parquet")
    assert all(len(g["step_rejected"]) == len(g["responses"]) for g in graded)
    assert all(not (ok and bad) for g in graded for ok, bad in zip(g["correct"], g["step_rejected"]))
    stats = io.read_parquet(out / "seed-0" / "sft" / "stats.parquet")
    assert sum(s["n_step_rejected"] for s in stats) == sum(sum(g["step_rejected"]) for g in graded)
    manifests = {name: io.read_json(out / "manifests" / f"seed-0__{name}__train.json")["config"]["seed"]
                 for name in ("sft", "sft-aa")}
    assert manifests["sft"] != manifests["sft-aa"]
    results = json.loads((out / "results.json").read_text())
    vanilla, replicate = results["arms"]
    assert vanilla["splits"]["test"]["delta_vs_default"]["method"] == "one seed: questions only"
    delta = replicate["splits"]["test"]["delta_vs_vanilla"]
    assert delta["mean"] == pytest.approx(replicate["splits"]["test"]["mean"] - vanilla["splits"]["test"]["mean"])
    assert "[replicate 1]" in replicate["display"]
