"""Every bad input or fault is exactly one clear line on the command line: exit code 2, the file / line / key
named with what to do about it, no traceback (`--verbose` shows one). Driven through `east run` / `east sample`
/ `east weight` with CliRunner on tiny configs; each run stops at the first stage that can show the fault.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from east.cli import app
from east.tasks.arith import make_questions

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

TINY = {
    "model": {"path": "builtin"},
    "sampling": {"n": 2, "max_new_tokens": 16, "shard_size": 4},
    "evaluation": {"max_new_tokens": 16},
    "train": {"epochs": 1, "batch_size": 8, "sft": {"learning_rate": 1.0e-4}},
    "arms": [{"name": "sft"}],
}


def arith_rows(split: str, n: int, answer: str | None = None) -> list[dict]:
    """Built-in arith questions as jsonl rows {question, answer} (answer: the true gold unless given)."""
    return [{"question": q.question, "answer": answer or q.gold} for q in make_questions(split, n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path: Path, name: str = "bad", file: str | None = None, **sections) -> Path:
    """A tiny YAML config in tmp_path (file name: `file` or the run name); `sections` replace or add top-level sections."""
    data = {"name": name, **TINY, **sections}
    path = tmp_path / f"{file or name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def jsonl_config(tmp_path: Path, train: Path, test: Path | None = None, **sections) -> Path:
    test = test or write_jsonl(tmp_path / "test.jsonl", arith_rows("test", 4))
    task = {"name": "jsonl", "train_path": str(train), "test_path": str(test), "train_size": 8, "test_size": 4}
    return config(tmp_path, task=task, **sections)


def arith_task(**extra) -> dict:
    return {"name": "arith", "train_size": 8, "test_size": 4, **extra}


def east(*args: str):
    return runner.invoke(app, [*map(str, args)])


def error_line(result) -> str:
    """The one error line of a failed command (and nothing that looks like a traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


# ----------------------------------------------------------------------------------------------------
# Task files


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    train = tmp_path / "train.jsonl"
    rows = arith_rows("train", 3)
    train.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1])[:-5] + "\n" + json.dumps(rows[2]) + "\n")
    line = error_line(east("sample", jsonl_config(tmp_path, train), "--out", tmp_path / "run"))
    assert f"{train}:2: not valid JSON" in line
    assert "fix or remove that line" in line


def test_missing_field_names_the_field_and_the_fix(tmp_path):
    rows = arith_rows("train", 4)
    rows[2] = {"question": rows[2]["question"], "gold": "7"}
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    line = error_line(east("sample", jsonl_config(tmp_path, train), "--out", tmp_path / "run"))
    assert f"{train}:3: missing field 'answer'" in line
    assert "fields present: gold, question" in line
    assert "set task.answer_field if the file calls it something else" in line
    assert "task.skip_bad_rows=true" in line


def test_wrong_typed_field_names_the_type(tmp_path):
    rows = arith_rows("train", 4)
    rows[1]["question"] = ["Mia has 3 figs.", "How many now?"]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    line = error_line(east("sample", jsonl_config(tmp_path, train), "--out", tmp_path / "run"))
    assert f"{train}:2: field 'question' should be text, got list" in line
    assert "fix the row" in line


def test_empty_split_names_the_file(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("")
    line = error_line(east("sample", jsonl_config(tmp_path, train), "--out", tmp_path / "run"))
    assert f"{train}: no questions found (the file has no rows)" in line
    assert "the train split needs at least one row with a question and a gold answer" in line


def test_empty_test_split_names_the_file(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", arith_rows("train", 4))
    test = tmp_path / "test.jsonl"
    test.write_text("\n\n")
    line = error_line(east("sample", jsonl_config(tmp_path, train, test), "--out", tmp_path / "run"))
    assert f"{test}: no questions found" in line


def test_duplicate_question_id_names_both_lines(tmp_path):
    rows = [{"question_id": f"q{i}", **row} for i, row in enumerate(arith_rows("train", 4))]
    rows[3]["question_id"] = "q1"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    line = error_line(east("sample", jsonl_config(tmp_path, train), "--out", tmp_path / "run"))
    assert f"{train}:4: duplicate question_id 'q1' (first at line 2)" in line
    assert "must be unique" in line


def test_non_utf8_jsonl_names_the_line_and_the_fix(tmp_path):
    rows = arith_rows("train", 4)
    train = tmp_path / "train.jsonl"
    lines = [json.dumps(r).encode() for r in rows]
    lines[2] = lines[2].replace(b"has", b"h\xe4s")  # latin-1
    train.write_bytes(b"\n".join(lines) + b"\n")
    line = error_line(east("sample", jsonl_config(tmp_path, train), "--out", tmp_path / "run"))
    assert f"{train}:3: not UTF-8 text (byte 0xe4" in line and "convert the file to UTF-8" in line


def test_non_number_gold_under_number_grading_is_refused_or_skipped(tmp_path):
    rows = arith_rows("train", 6)
    rows[4]["answer"] = "seven"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    line = error_line(east("sample", jsonl_config(tmp_path, train), "--out", tmp_path / "run"))
    assert f"{train}:5: gold answer 'seven' is not a number, but the gsm8k grader compares numbers" in line
    assert "task.skip_bad_rows=true" in line
    path = jsonl_config(tmp_path, train)
    result = east("sample", path, "task.skip_bad_rows=true", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "skipped 1 row(s)" in result.output
    assert len((tmp_path / "run" / "data" / "train.jsonl").read_text().splitlines()) == 5
    result = east("sample", path, "grading.kind=math", "--out", tmp_path / "run2")  # math compares expressions
    assert result.exit_code == 0, result.output


def test_prompt_longer_than_the_limit_is_refused_or_skipped(tmp_path):
    rows = arith_rows("train", 6)
    rows[3]["question"] = "Mia has 3 figs. " * 80  # ~1,300 characters: over the backbone's 1,024-token context
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    path = jsonl_config(tmp_path, train)
    out = tmp_path / "run"
    line = error_line(east("sample", path, "--out", out))
    assert f"{out / 'data' / 'train.jsonl'}:4: question jsonl-train-00004 has a prompt of" in line
    assert "more than the model's context length (1024)" in line and "task.skip_bad_rows=true" in line
    result = east("sample", path, "task.skip_bad_rows=true", "--out", out)
    assert result.exit_code == 0, result.output
    assert "train: skipped 1 question(s) with a prompt over 1024 tokens" in result.output.replace("\n", " ")
    from east import io

    manifest = io.read_json(out / "manifests" / "seed-0__sample.json")
    assert manifest["counts"]["questions"] == 5 and manifest["counts"]["skipped_long_prompts"] == 1
    line = error_line(east("sample", path, "task.max_prompt_tokens=20", "--out", out))
    assert "more than task.max_prompt_tokens (20)" in line and ":1: question" in line


def test_no_arms_is_a_config_error(tmp_path):
    line = error_line(east("run", config(tmp_path, task=arith_task()), "arms=[]", "--out", tmp_path / "run"))
    assert "key 'arms'" in line and "list at least one" in line
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------
# Config


def test_unknown_config_key_names_the_dotted_key(tmp_path):
    path = config(tmp_path, task=arith_task(), sampling={"n": 2, "temprature": 0.5})
    line = error_line(east("run", path, "--out", tmp_path / "run"))
    assert f"{path}: unknown key 'sampling.temprature'" in line
    assert "check its spelling" in line


def test_unknown_override_key_names_the_dotted_key(tmp_path):
    path = config(tmp_path, task=arith_task())
    line = error_line(east("run", path, "train.sft.lr=1e-4", "--out", tmp_path / "run"))
    assert "unknown key 'train.sft.lr'" in line


def test_wrong_value_type_names_key_and_expected_type(tmp_path):
    path = config(tmp_path, task=arith_task(), sampling={"n": "two", "max_new_tokens": 16})
    line = error_line(east("run", path, "--out", tmp_path / "run"))
    assert f"{path}: key 'sampling.n'" in line
    assert "valid integer" in line
    line = error_line(east("run", config(tmp_path, task=arith_task()), "task.train_size=-3", "--out", tmp_path / "run"))
    assert "key 'task.train_size'" in line and "greater than or equal to 1" in line
    assert not (tmp_path / "run").exists()  # a bad config never creates the run directory


def test_run_dir_of_another_task_or_model_is_refused(tmp_path):
    """PENDING the lead's patch to pipeline.py: `east run` refuses a run directory whose saved config.yaml has a
    different `task` or `model` section ("<dir> was created for a different task/model (...); use another --out")."""
    out = tmp_path / "run"
    first = config(tmp_path, name="first", task=arith_task(train_size=4))
    result = east("sample", first, "--out", out)
    assert result.exit_code == 0, result.output
    saved = (out / "config.yaml").read_text()

    other_task = config(tmp_path, name="first", file="other", task=arith_task(train_size=4, seed=1))
    line = error_line(east("run", other_task, "--out", out))
    assert f"{out} was created for a different task" in line
    assert "seed 0 -> 1" in line  # the (...) says what differs
    assert "use another --out" in line
    assert (out / "config.yaml").read_text() == saved  # the directory is left as it was

    line = error_line(east("run", first, "model.dtype=float32", "--out", out))
    assert f"{out} was created for a different model" in line and "use another --out" in line
    assert (out / "config.yaml").read_text() == saved

    result = east("sample", first, "sampling.n=3", "--out", out)  # other sections may change: stages are redone
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------------------------------
# Faults while running


def test_disk_full_while_writing_keeps_nothing_and_rerun_completes(tmp_path, monkeypatch):
    from east import io

    out = tmp_path / "run"
    path = config(tmp_path, task=arith_task())
    real_write = io.pq.write_table

    def full_disk(table, where, *args, **kwargs):
        if Path(where).name.startswith(".samples.parquet."):
            Path(where).write_bytes(b"PAR1 half a file")  # the disk fills up halfway through
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(io.pq, "write_table", full_disk)
    line = error_line(east("sample", path, "--out", out))
    assert "No space left on device" in line and ".samples.parquet." in line
    assert "nothing half-written was kept, rerun to resume" in line
    seed_dir = out / "seed-0"
    assert not (seed_dir / "samples.parquet").exists()
    assert not list(seed_dir.glob(".samples.parquet*")), "the half-written temporary file was left behind"
    assert not (out / "manifests" / "seed-0__sample.json").exists()
    assert len(list((seed_dir / "shards").glob("*.parquet"))) == 2  # finished shards are kept for the rerun

    monkeypatch.setattr(io.pq, "write_table", real_write)
    result = east("sample", path, "--out", out)
    assert result.exit_code == 0, result.output
    text = result.output.replace("\n", " ")
    assert "skip seed-0/sample" not in text and "seed-0/sample ..." in text
    assert "skip questions" in text
    rows = io.read_parquet(seed_dir / "samples.parquet")
    assert len(rows) == 8 and all(len(r["responses"]) == 2 for r in rows)
    assert (out / "manifests" / "seed-0__sample.json").exists()


def test_disk_full_writing_a_manifest_redoes_the_stage(tmp_path, monkeypatch):
    from east import io

    out = tmp_path / "run"
    path = config(tmp_path, task=arith_task())
    real_write = io.write_json

    def full_disk(target, data):
        if Path(target).name == "questions.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return real_write(target, data)

    monkeypatch.setattr(io, "write_json", full_disk)
    line = error_line(east("sample", path, "--out", out))
    assert "No space left on device" in line and "questions.json" in line
    monkeypatch.setattr(io, "write_json", real_write)
    result = east("sample", path, "--out", out)
    assert result.exit_code == 0, result.output
    assert "skip questions" not in result.output and "questions ..." in result.output


def test_all_zero_signal_names_the_arm_and_the_fix(tmp_path):
    # Greedy sampling gives n identical answers, so every question has entropy 0; keeping the all-correct ones
    # leaves only zero signals, which the power mapping cannot turn into weights of mean 1.
    path = config(tmp_path, task=arith_task(), sampling={"n": 2, "temperature": 0.0, "max_new_tokens": 48},
                  filter={"keep_all_correct": True}, arms=[{"name": "east", "weighting": "entropy", "a": 1.0}])
    line = error_line(east("weight", path, "--out", tmp_path / "run"))
    assert "arm east: entropy signal, power mapping over" in line
    assert "signal values are 0" in line and "set epsilon > 0" in line


def test_non_finite_weights_name_the_arm_and_the_fix(tmp_path):
    # Every kept signal is 10 + 0 (epsilon 10, greedy so entropy 0); 10^(1e308) overflows.
    path = config(tmp_path, task=arith_task(), sampling={"n": 2, "temperature": 0.0, "max_new_tokens": 48},
                  filter={"keep_all_correct": True, "epsilon": 10.0},
                  arms=[{"name": "east", "weighting": "entropy", "a": 1.0e308}])
    line = error_line(east("weight", path, "--out", tmp_path / "run"))
    assert "arm east:" in line and "non-finite weights" in line
    assert "use a smaller |a|" in line


def test_no_question_left_after_filtering(tmp_path):
    # Golds no answer can match: every sample is wrong, every question dropped as all wrong.
    train = write_jsonl(tmp_path / "train.jsonl", arith_rows("train", 8, answer="-123456789"))
    path = jsonl_config(tmp_path, train)
    line = error_line(east("weight", path, "--out", tmp_path / "run"))
    assert "arm sft: no question left to train on: 8 questions, 8 all wrong" in line
    assert "easier questions, more samples, or a stronger model" in line
    assert (tmp_path / "run" / "seed-0" / "graded.parquet").exists()  # sampling and grading are kept


# ----------------------------------------------------------------------------------------------------
# --verbose


def test_verbose_shows_the_traceback(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"question": "Mia has 3 figs.", "answer": "3"}\n{not json}\n')
    path = jsonl_config(tmp_path, train)
    quiet = east("sample", path, "--out", tmp_path / "run")
    assert error_line(quiet).startswith(f"error: {train}:2:")

    result = runner.invoke(app, ["--verbose", "sample", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and type(result.exception).__name__ == "UserError"
    # Outside CliRunner the exception reaches the interpreter, which prints the traceback:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "east.cli", "--verbose", "sample", str(path), "--out",
                           str(tmp_path / "run")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "east/tasks/loaders.py" in proc.stderr and f"{train}:2: not valid JSON" in proc.stderr
