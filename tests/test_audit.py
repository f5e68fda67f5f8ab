"""`east audit`: our grader against math-verify and the last number, on a fake run directory whose
graded.parquet the test writes with our own grader (no sampling)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from east import io
from east.audit import CLASSES, audit_run
from east.cli import app
from east.config import dump_config, load_config
from east.grading import grade_sample_sets
from east.records import SampleSet

QUESTIONS = {
    # gold, responses: ours (strict) and the last number read these differently on purpose
    "q1": ("18", ["He packs 3 boxes of 6.\nA: 18", "The answer is 18 million.", "The answer is 17.",
                  "I give up after 2 tries"]),
    "q2": ("5", ["She had 5 pears and ate none.", "The answer is 4.", "The answer is 4."]),
    "q3": ("7", ["The answer is 7.", "The answer is 8."]),
}


def fake_run(root, seeds=(0,)):
    config = load_config(None, ["name=fake", f"seeds={list(seeds)}", "grading.kind=gsm8k"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(dump_config(config))
    sets = [SampleSet(qid, f"prompt {qid}", responses, [5] * len(responses), [True] * len(responses))
            for qid, (_, responses) in QUESTIONS.items()]
    graded, _ = grade_sample_sets(sets, {qid: gold for qid, (gold, _) in QUESTIONS.items()}, "gsm8k")
    for seed in seeds:
        io.write_parquet(root / f"seed-{seed}" / "graded.parquet", [g.to_dict() for g in graded])
    return config


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    fake_run(root)
    return root, audit_run(root, examples=2)


def test_last_number_table_counts_each_class_pair(audited):
    _, report = audited
    table = report["references"]["last number"]["table"]
    assert report["samples"] == 9
    assert table["correct"] == {"correct": 2, "incorrect": 0, "no answer": 0}
    assert table["incorrect"] == {"correct": 1, "incorrect": 4, "no answer": 0}  # "18 million" is not 18 for us
    assert table["no answer"] == {"correct": 1, "incorrect": 1, "no answer": 0}
    assert report["references"]["last number"]["agree"] == 6


def test_examples_name_the_question_and_both_answers(audited):
    _, report = audited
    examples = report["references"]["last number"]["examples"]
    assert set(examples) == {"ours incorrect, reference correct", "ours no answer, reference correct",
                             "ours no answer, reference incorrect"}
    [million] = examples["ours incorrect, reference correct"]
    assert (million["question_id"], million["gold"], million["ours"], million["reference"]) == ("q1", "18", "18 million", "18")
    assert million["response_end"].endswith("18 million.")


def test_kept_flags_and_weights_recomputed_with_the_arms_settings(audited):
    _, report = audited
    arms = report["references"]["last number"]["arms"]["seed-0"]
    # q2 is all wrong for us (dropped) but has a right last number (kept): one kept flag changes.
    assert arms["sft"]["kept_changed"] == 1 and arms["sft"]["weight_changed"] == 0  # vanilla: weight 1 either way
    east = arms["sft+east"]
    assert (east["kept_ours"], east["kept_reference"], east["kept_changed"]) == (2, 3, 1)
    assert east["weight_changed"] == east["weight_changed_over_1pct"] == 2 and "q2" in east["examples"]
    # ours: q1 entropy ln 4, q3 ln 2 -> weights 4/3, 2/3; reference: q1 1.5 ln 2, q2 H(1/3, 2/3), q3 ln 2
    h = [1.5 * math.log(2), -(math.log(1 / 3) / 3 + 2 * math.log(2 / 3) / 3), math.log(2)]
    reference_q1 = h[0] * 3 / sum(h)
    assert east["max_weight_change"] == pytest.approx(max(abs(4 / 3 - reference_q1), abs(2 / 3 - h[2] * 3 / sum(h))))


def test_math_verify_reference_grades_every_sample(audited):
    _, report = audited
    found = report["references"]["math-verify"]
    assert sum(sum(row.values()) for row in found["table"].values()) == 9
    assert found["agree"] == sum(found["table"][c][c] for c in CLASSES)
    assert found["table"]["correct"]["correct"] >= 1  # "The answer is 7." is right for every grader
    assert sum(found["statuses"].values()) == 9 and "timeout" not in found["statuses"]


def test_audit_json_is_strict_json_and_matches(audited):
    root, report = audited
    written = json.loads((root / "audit.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in audit.json"))
    assert written["references"]["last number"]["table"] == report["references"]["last number"]["table"]
    assert not list(root.glob(".audit.json*"))  # no temporary file left behind


def test_cli_prints_tables_and_examples(tmp_path):
    fake_run(tmp_path / "run", seeds=(0, 1))
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "run"), "--examples", "1"])
    assert result.exit_code == 0, result.output
    assert "ours (rows) vs last number (columns): 12 of 18 agree" in result.output
    assert "ours incorrect, last number correct (2)" in result.output
    assert "'18 million'" in result.output
    assert (tmp_path / "run" / "audit.json").exists()


def test_cli_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["audit", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory (no config.yaml)" in result.output
    load = load_config(None, ["name=x"])
    (tmp_path / "config.yaml").write_text(dump_config(load))
    result = CliRunner().invoke(app, ["audit", str(tmp_path)])
    assert result.exit_code == 2 and "no graded samples (seed-*/graded.parquet)" in result.output
    (tmp_path / "seed-0").mkdir()
    (tmp_path / "seed-0" / "graded.parquet").write_text("not parquet")
    result = CliRunner().invoke(app, ["audit", str(tmp_path)])
    assert result.exit_code == 2 and "seed-0/graded.parquet: damaged or not a Parquet file" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_reference_answers_that_are_right_join_the_gold_cluster():
    from east.audit import Verdict, reference_graded
    from east.grading import cluster_key
    from east.records import NO_ANSWER, GradedSet

    gold = "\\frac{\\sqrt{2}}{2}"
    g = GradedSet("q", "p", ["a", "b", "c"], [1, 1, 1], [True] * 3, gold=gold, answers=["x", "y", None],
                  keys=["x", "y", NO_ANSWER], correct=[False, False, False])
    verdicts = [Verdict("\\frac{1}{\\sqrt{2}}", True), Verdict("\\sqrt{2}", False), Verdict(None, False, "no_answer")]
    [theirs] = reference_graded([g], verdicts, "math")
    assert theirs.keys == [cluster_key(gold, "math"), cluster_key("\\sqrt{2}", "math"), NO_ANSWER]
    assert theirs.correct == [True, False, False] and theirs.responses == g.responses


def test_step_rejections_are_named_apart_from_grading_disagreements(tmp_path):
    config = load_config(None, ["name=steps", "grading.verify_steps=true"])
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.yaml").write_text(dump_config(config))
    responses = ["3+4=7\n\\boxed{7}", "3+4=8\n8-1=7\n\\boxed{7}", "3+4=8\n\\boxed{8}"]
    sets = [SampleSet("q1", "p", responses, [5] * 3, [True] * 3)]
    graded, _ = grade_sample_sets(sets, {"q1": "7"}, "arith", verify_steps=True)
    io.write_parquet(tmp_path / "seed-0" / "graded.parquet", [g.to_dict() for g in graded])
    report = audit_run(tmp_path, write=False)
    assert report["step_rejected"] == 1
    found = report["references"]["last number"]
    assert found["table"]["incorrect"]["correct"] == 1  # the flawed working with the right answer
    assert found["step_rejected_reference_correct"] == 1
    result = CliRunner().invoke(app, ["audit", str(tmp_path)])
    assert "1 of the 'ours incorrect, last number correct' samples were refused by step verification" in result.output
