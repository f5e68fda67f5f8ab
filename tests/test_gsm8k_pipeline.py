"""`east run` end to end on a GSM8K-format file (task.name=gsm8k, local JSONL, grading auto -> gsm8k), with the
shipped tiny backbone standing in for the model.

tests/fixtures/gsm8k_pipeline.jsonl: 12 questions written for this test in the built-in task's wording (so the
character-level backbone can solve some of them), with GSM8K-style answers ending in `#### N`. The same file is
the train and the test split (ids differ by split); the point is the plumbing, not the accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from east import io
from east.cli import app

runner = CliRunner()
FIXTURE = Path(__file__).parent / "fixtures" / "gsm8k_pipeline.jsonl"


@pytest.fixture(scope="module")
def gsm8k_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gsm8k")
    config = {
        "name": "gsm8k-pipeline",
        "task": {"name": "gsm8k", "train_path": str(FIXTURE), "test_path": str(FIXTURE), "train_size": 12,
                 "test_size": 6},
        "model": {"path": "builtin"},
        "grading": {"kind": "auto"},
        "sampling": {"n": 4, "max_new_tokens": 48, "shard_size": 6},
        "evaluation": {"max_new_tokens": 48},
        "train": {"epochs": 1, "batch_size": 8, "sft": {"learning_rate": 1.0e-4}},
        "arms": [{"name": "sft", "loss": "sft", "weighting": "none"}],
    }
    path = tmp / "gsm8k.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp / "run"
    result = runner.invoke(app, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def test_questions_come_from_the_gsm8k_file(gsm8k_run):
    out, _ = gsm8k_run
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    train = io.read_jsonl(out / "data" / "train.jsonl")
    test = io.read_jsonl(out / "data" / "test.jsonl")
    assert [q["question"] for q in train] == [r["question"] for r in rows]
    assert [q["gold"] for q in train] == [r["answer"].rsplit("####", 1)[1].strip() for r in rows]
    assert len(test) == 6 and {q["question_id"] for q in train}.isdisjoint(q["question_id"] for q in test)


def test_every_stage_leaves_its_artifact(gsm8k_run):
    out, _ = gsm8k_run
    for path in ["config.yaml", "data/train.jsonl", "data/test.jsonl", "default/eval-test.jsonl",
                 "default/eval-test.json", "seed-0/samples.parquet", "seed-0/graded.parquet",
                 "seed-0/sft/stats.parquet", "seed-0/sft/rows.parquet", "seed-0/sft/model/config.json",
                 "seed-0/sft/eval-test.jsonl", "seed-0/sft/eval-test.json", "results.json", "results.md"]:
        assert (out / path).exists(), path
    samples = io.read_parquet(out / "seed-0" / "samples.parquet")
    assert len(samples) == 12 and all(len(s["responses"]) == 4 for s in samples)


def test_graded_with_the_gsm8k_grader(gsm8k_run):
    out, _ = gsm8k_run
    manifest = io.read_json(out / "manifests" / "seed-0__grade.json")
    assert manifest["config"]["kind"] == "gsm8k"
    graded = io.read_parquet(out / "seed-0" / "graded.parquet")
    assert any(any(row["correct"]) for row in graded), "the backbone solved none of the fixture questions"
    rows = io.read_parquet(out / "seed-0" / "sft" / "rows.parquet")
    assert rows and all(r["prompt"].endswith("<|assistant|>") and r["weight"] == 1.0 for r in rows)


def test_results_have_the_arm(gsm8k_run):
    out, result = gsm8k_run
    results = json.loads((out / "results.json").read_text())
    assert [e["arm"] for e in results["arms"]] == ["sft"]
    assert 0.0 <= results["arms"][0]["splits"]["test"]["mean"] <= 1.0
    assert "default" in result.output
