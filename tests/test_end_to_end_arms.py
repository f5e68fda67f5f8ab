"""Tiny end-to-end runs of every arm kind beyond vanilla SFT / EAST: DPO and KTO (with EAST and local
weights), DAST-P (SFT and DPO), DAST-L, DAST-P + EAST, out-of-domain evaluation, and iterations."""

import json

from typer.testing import CliRunner

from east import io
from east.cli import app

runner = CliRunner()

TINY = [
    "task.train_size=20", "task.test_size=8", "sampling.n=6", "sampling.max_new_tokens=40",
    "evaluation.max_new_tokens=40", "train.epochs=1", "train.batch_size=8",
    "train.sft.learning_rate=1e-4", "train.dpo.learning_rate=1e-5", "train.kto.learning_rate=1e-5",
]
OOD = ("task.ood_arith={min_steps: 2, max_steps: 3, start_min: 2, start_max: 30, operand_min: 1, "
       "operand_max: 12, factors: [2], ops: [add, sub, mul], max_value: 150}")


def run(out, *overrides):
    result = runner.invoke(app, ["run", "configs/demo.yaml", "--out", str(out), *TINY, *overrides])
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text()), result.output


def test_dpo_and_kto_arms(tmp_path):
    arms = ("arms=[{name: dpo, loss: dpo}, {name: dpo+lw_w, loss: dpo, weighting: lw_w}, "
            "{name: kto+east, loss: kto, weighting: entropy, a: 1}, {name: kto+lw_p, loss: kto, weighting: lw_p}]")
    results, _ = run(tmp_path / "run", "name=prefs", arms)
    assert [e["arm"] for e in results["arms"]] == ["dpo", "dpo+lw_w", "kto+lw_p", "kto+east"]
    rows = io.read_parquet(tmp_path / "run" / "seed-0" / "dpo" / "rows.parquet")
    assert set(rows[0]) >= {"question_id", "prompt", "chosen", "rejected", "weight"}
    kto = io.read_parquet(tmp_path / "run" / "seed-0" / "kto+east" / "rows.parquet")
    assert {r["label"] for r in kto} == {True, False}
    metrics = json.loads((tmp_path / "run" / "seed-0" / "kto+lw_p" / "train_metrics.json").read_text())
    assert metrics["global_step"] >= 1
    assert results["arms"][1]["splits"]["test"]["delta_vs_vanilla"]["n"] == 1


def test_dast_arms_and_ood(tmp_path):
    arms = ("arms=[{name: sft, loss: sft}, {name: dast-p, loss: sft, data: dast_p}, "
            "{name: dast-d, loss: dpo, data: dast_p}, {name: dast-l, loss: sft, data: dast_l}, "
            "{name: dast-p+east, loss: sft, data: dast_p, weighting: entropy, a: 1}]")
    out = tmp_path / "run"
    results, output = run(out, "name=dast", arms, OOD, "dast.global_budget=60", "dast.cap_per_question=14",
                          "dast.round_size=4", "dast.n_long=4", "dast.few_shot=1")
    assert results["splits"] == ["test", "ood"]
    assert all(e["splits"]["ood"]["mean"] is not None for e in results["arms"])
    levels = io.read_json(out / "seed-0" / "levels-dast_p.json")
    assert levels["report"]["extra_samples"] <= 60
    assert sum(levels["histogram"].values()) == 20
    sft_rows = io.read_parquet(out / "seed-0" / "sft" / "rows.parquet")
    dast_rows = io.read_parquet(out / "seed-0" / "dast-p" / "rows.parquet")
    assert len(dast_rows) >= len(sft_rows)  # DAST-P keeps more correct responses (and all-correct questions)
    long_sets = io.read_parquet(out / "seed-0" / "samples-dast_l.parquet")
    graded_l = io.read_parquet(out / "seed-0" / "graded-dast_l.parquet")
    prompts = {g["question_id"]: g["prompt"] for g in io.read_parquet(out / "seed-0" / "graded.parquet")}
    for row in graded_l:  # DAST-L trains on the plain prompt, whatever prompt the responses came from
        assert row["prompt"] == prompts[row["question_id"]]
    assert all(s["prompt"].count("<|user|>") == 2 for s in long_sets)  # one few-shot example + the question
    text = (out / "results.md").read_text()
    assert "SFT + DAST-P + EAST" in text and "difficulty levels" in text


def test_iterations_sample_from_the_previous_model(tmp_path):
    out = tmp_path / "run"
    results, output = run(out, "name=iter", "iterations=2", "arms=[{name: east, weighting: entropy, a: 1}]")
    entry = results["arms"][0]
    assert sorted(map(int, entry["iterations"])) == [1, 2]
    second = out / "seed-0" / "east" / "iter-2"
    assert (second / "samples.parquet").exists() and (second / "model" / "config.json").exists()
    manifest = io.read_json(out / "manifests" / "seed-0__east__iter-2__sample.json")
    assert "seed-0/east/train" in manifest["inputs"]
    assert (out / "figure4.png").exists()
    assert "over self-training iterations" in (out / "results.md").read_text()
