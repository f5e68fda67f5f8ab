"""Fault injection on a finished tiny run directory: truncate each kind of artifact, garble a manifest, fill
the disk during a model save, leave a dead process's temporary files, run out of memory. Each time a rerun
recovers to the same results, or the command ends in one line naming the file and the fix.

One `east run` builds the directory (module fixture, ~10 s); each test damages a copy of it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from test_bad_input import error_line

from east import io, rundir
from east.cli import app
from east.config import RunConfig
from east.bookkeeping import Run, stage_key

runner = CliRunner()

CONFIG = {
    "name": "faults",
    "task": {"name": "arith", "train_size": 8, "test_size": 4},
    "sampling": {"n": 4, "max_new_tokens": 48, "shard_size": 4},
    "evaluation": {"max_new_tokens": 48},
    "train": {"epochs": 1, "batch_size": 8, "sft": {"learning_rate": 1.0e-4}},
    "arms": [{"name": "sft"}],
}
ARTIFACTS = {  # what each stage wrote, and the stage
    "seed-0/samples.parquet": "seed-0/sample",
    "seed-0/graded.parquet": "seed-0/grade",
    "seed-0/sft/stats.parquet": "seed-0/sft/weight",
    "seed-0/sft/rows.parquet": "seed-0/sft/select",
    "seed-0/sft/model/model.safetensors": "seed-0/sft/train",
    "seed-0/sft/eval-test.json": "seed-0/sft/evaluate-test",
    "data/train.jsonl": "questions",
}


def east(*args) -> object:
    return runner.invoke(app, [*map(str, args)])


def text(result) -> str:
    return result.output.replace("\n", " ")


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return text(result)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("faults")
    config = base / "faults.yaml"
    config.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    ok(east("run", config, "--out", base / "run"))
    return config, base / "run"


@pytest.fixture
def copy(finished, tmp_path) -> tuple[Path, Path]:
    config, reference = finished
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return config, out


def run_again(config: Path, out: Path) -> str:
    return ok(east("run", config, "--out", out))


def same_files(out: Path, reference: Path) -> None:
    for name in ARTIFACTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


# ----------------------------------------------------------------------------------------------------
# Damaged artifacts are noticed and redone; the stages after them follow only if what they read changed


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_truncated_artifact_redoes_its_stage_with_identical_results(copy, finished, name):
    config, out = copy
    path = out / name
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    log = run_again(config, out)
    stage = ARTIFACTS[name]
    assert f"redo {stage}: output damaged: {path}" in log
    assert f"{stage} ..." in log
    # Every stage here is deterministic, so the redone stage writes the same bytes and nothing after it is redone.
    redone = [s for s in ARTIFACTS.values() if f"{s} ..." in log]
    assert redone == [stage], log
    same_files(out, finished[1])
    assert io.read_json(out / "results.json")["arms"] == io.read_json(finished[1] / "results.json")["arms"]


def test_zero_byte_rows_parquet_and_a_dead_processes_temp_files(copy, finished):
    config, out = copy
    (out / "seed-0/sft/rows.parquet").write_bytes(b"")
    dead = dead_pid()
    leftovers = [out / f"seed-0/sft/.model.tmp-{dead}", out / f"seed-0/.graded.parquet.tmp-{dead}.k2j4x",
                 out / f"manifests/.seed-0__grade.json.tmp-{dead}.abc", out / f"seed-0/sft/.model.old-{dead}"]
    for path in leftovers[::3]:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"\0" * 4096)
    for path in leftovers[1:3]:
        path.write_bytes(b"PAR1 half")
    alive = out / f"seed-0/.samples.parquet.tmp-{os.getppid()}.zz"  # a live process's: not ours to remove
    alive.write_bytes(b"busy")
    log = run_again(config, out)
    assert "removed 4 temporary file(s) left by a process that was killed" in log
    assert not any(p.exists() for p in leftovers)
    assert alive.exists()
    assert f"redo seed-0/sft/select: output damaged: {out / 'seed-0/sft/rows.parquet'} (0 bytes" in log
    assert "skip seed-0/sft/train" in log
    same_files(out, finished[1])


def test_truncated_shard_of_an_unfinished_sampling_is_sampled_again(copy, finished):
    config, out = copy
    (out / "seed-0/samples.parquet").unlink()
    (out / "manifests/seed-0__sample.json").unlink()  # as if killed between the last shard and the manifest
    shard = sorted((out / "seed-0/shards").glob("shard-*.parquet"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    log = run_again(config, out)
    assert f"output damaged: {shard}; sampling that shard again" in log
    assert "shard 1: 8/8 questions sampled" in log and "shard 0:" not in log
    assert "skip seed-0/grade" in log  # the same samples again: nothing after sampling is redone
    same_files(out, finished[1])


def test_garbled_manifest_is_listed_by_status_and_its_stage_redone(copy, finished):
    config, out = copy
    manifest = out / "manifests/seed-0__grade.json"
    manifest.write_text('{"stage": "seed-0/grade", "key": ')
    shown = ok(east("status", out))
    assert f"damaged manifest: {manifest}: not valid JSON" in shown
    log = run_again(config, out)
    assert f"redo seed-0/grade: manifest damaged: {manifest}: not valid JSON" in log
    assert "skip seed-0/sft/weight" in log
    same_files(out, finished[1])


def test_redone_stage_that_writes_other_bytes_redoes_its_readers(tmp_path):
    """The key chain: a stage redone with the same inputs keeps its config key, so its readers must be redone
    exactly when its outputs differ from what they read."""
    run = Run(config=RunConfig(), root=tmp_path, log=lambda msg: None)
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"

    def pipeline(content: str) -> list[str]:
        run.executed.clear()
        run.stage("a", {"x": 1}, [], [first], lambda: io.write_text(first, content) and None)
        run.stage("b", {"y": 1}, ["a"], [second], lambda: io.write_text(second, first.read_text()) and None)
        return list(run.executed)

    assert pipeline("one") == ["a", "b"]
    assert pipeline("one") == []
    first.write_text("on")  # damaged; redone with the same bytes: b still holds
    assert pipeline("one") == ["a"]
    first.write_text("on")  # damaged; redone with other bytes (a nondeterministic stage): b is redone too
    assert pipeline("two") == ["a", "b"]
    assert second.read_text() == "two"


def test_sampled_check_covers_ends_and_full_check_the_rest(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(3 << 20))
    records = rundir.output_records(tmp_path, [path])
    assert rundir.damage(tmp_path, records) is None
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + 12345] ^= 1  # between the sampled blocks: only the full check sees it
    path.write_bytes(bytes(data))
    assert rundir.damage(tmp_path, records) is None
    assert "content differs" in rundir.damage(tmp_path, records, full=True)
    data[-1] ^= 1  # the last bytes (a Parquet footer) are always sampled
    path.write_bytes(bytes(data))
    assert "content differs" in rundir.damage(tmp_path, records)


def test_status_verify_finds_damage_the_sampled_check_misses_and_stale_config(copy):
    config, out = copy
    model = out / "seed-0/sft/model/model.safetensors"
    original = model.read_bytes()
    data = bytearray(original)
    data[len(data) // 2 + 12345] ^= 1
    model.write_bytes(bytes(data))
    assert "output damaged" not in ok(east("status", out))  # the cheap check (what a run does) passes
    result = east("status", "--verify", out)
    assert result.exit_code == 1, result.output
    assert f"stale seed-0/sft/train: output damaged: {model} (content differs" in text(result)

    model.write_bytes(original)  # repaired
    changed = out.parent / "changed.yaml"
    changed.write_text(yaml.safe_dump({**CONFIG, "sampling": {**CONFIG["sampling"], "n": 3}}))
    result = east("status", "--verify", out, "--config", changed)
    assert result.exit_code == 1, result.output
    shown = text(result)
    assert "stale seed-0/sample: config changed: sampling.n 4 -> 3" in shown
    assert "stale seed-0/grade: input changed: seed-0/sample" in shown  # grade reads the samples
    assert ok(east("status", "--verify", out)).count("done") >= 8


def test_partial_rerun_with_another_config_shows_stale_stages_and_old_results(copy):
    config, out = copy
    ok(east("sample", config, "sampling.n=3", "--out", out))
    shown = ok(east("status", out))
    assert "stale seed-0/grade: input changed: seed-0/sample" in shown  # grade and all after it are not "done"
    assert "stale seed-0/sft/evaluate-test: input changed: seed-0/sft/train" in shown
    assert "results.json was written for an earlier config.yaml" in shown


# ----------------------------------------------------------------------------------------------------
# One line for every failure


def test_disk_full_during_model_save_removes_the_temp_dir_then_resumes(copy, finished, monkeypatch):
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError

    config, out = copy
    shutil.rmtree(out / "seed-0/sft/model")
    real = modeling_utils.safe_save_file

    def full_disk(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 1000)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_disk)
    line = error_line(east("run", config, "--out", out))
    assert "No space left on device" in line and "model.safetensors" in line
    assert "free some disk space" in line and "rerun to resume" in line
    assert not list((out / "seed-0/sft").glob(".model*")), "the failed save left its temp dir"
    assert not (out / "seed-0/sft/model").exists()
    monkeypatch.setattr(modeling_utils, "safe_save_file", real)
    assert "seed-0/sft/train ..." in run_again(config, out)
    same_files(out, finished[1])


def test_trained_model_follows_the_umask(finished):
    mask = io.current_umask()
    model = finished[1] / "seed-0/sft/model"
    modes = {p.name: p.stat().st_mode & 0o777 for p in model.iterdir()}
    assert modes["model.safetensors"] == 0o666 & ~mask, modes
    assert set(modes.values()) == {0o666 & ~mask}
    others = [p for p in finished[1].rglob("*") if p.is_file() and p.stat().st_mode & 0o777 != 0o666 & ~mask]
    assert others == []


def test_out_that_is_a_file(tmp_path, finished):
    out = tmp_path / "file"
    out.write_text("x")
    line = error_line(east("run", finished[0], "--out", out))
    assert f"--out {out} is a file, not a directory" in line and "rerun" not in line


def test_damaged_config_yaml(copy):
    config, out = copy
    (out / "config.yaml").write_text("")
    line = error_line(east("status", out))
    assert f"{out / 'config.yaml'}: damaged (empty)" in line and f"--out {out}" in line
    line = error_line(east("report", out))
    assert f"{out / 'config.yaml'}: damaged (empty)" in line
    log = run_again(config, out)  # the run rewrites it instead of advising to delete the run directory
    assert "config.yaml was damaged (empty); rewritten" in log and "skip seed-0/sft/train" in log


def test_truncated_eval_json_in_report(copy):
    _, out = copy
    path = out / "seed-0/sft/eval-test.json"
    path.write_text(path.read_text()[:20])
    line = error_line(east("report", out))
    assert f"{path}: damaged, not valid JSON" in line and "delete it and rerun" in line


def test_truncated_parquet_read_by_a_stage_names_the_file_not_the_arm(copy):
    config, out = copy
    path = out / "seed-0/graded.parquet"
    (out / "manifests/seed-0__sft__weight.json").unlink()  # weight runs and reads graded.parquet ...
    (out / "manifests/seed-0__grade.json").write_text(  # ... whose manifest still trusts it (an old manifest)
        (out / "manifests/seed-0__grade.json").read_text().replace('"files"', '"files-old"'))
    path.write_bytes(path.read_bytes()[:-40])
    line = error_line(east("weight", config, "--out", out))
    assert f"{path}: damaged or not a Parquet file" in line and "arm sft" not in line


def test_out_of_memory_and_unexpected_errors_are_one_line(copy, monkeypatch):
    from east import executor

    config, out = copy
    (out / "seed-0/samples.parquet").unlink()

    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes")

    monkeypatch.setattr(executor.Backend, "draw", oom)
    (out / "seed-0/shards").rename(out / "seed-0/old-shards")
    line = error_line(east("run", config, "--out", out))
    assert "out of memory (in stage seed-0/sample)" in line and "task.max_prompt_tokens" in line

    def bug(*args, **kwargs):
        raise KeyError("nope")

    monkeypatch.setattr(executor.Backend, "draw", bug)
    line = error_line(east("run", config, "--out", out))
    assert "KeyError: 'nope' (in stage seed-0/sample)" in line and "--verbose" in line


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_stage_key_is_unchanged_for_old_manifests():
    """Manifests written before outputs were recorded hand on their plain key: old run directories keep working."""
    manifest = {"key": stage_key({"a": 1}, {})}
    assert rundir.chain_key(manifest) == manifest["key"]
    assert rundir.chain_key({**manifest, "files": {"x": {"sha256": "0" * 64}}}) != manifest["key"]


def test_damaged_model_given_by_the_user(tmp_path, finished):
    model = tmp_path / "model"
    shutil.copytree(finished[1] / "seed-0/sft/model", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    line = error_line(east("sample", finished[0], f"model.path={model}", "--out", tmp_path / "run"))
    assert f"model '{model}': its weights file is damaged" in line and "replace it" in line


def test_permission_denied_names_the_file_and_the_fix(copy, monkeypatch):
    config, out = copy
    (out / "seed-0/sft/stats.parquet").unlink()

    def denied(path, rows):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(io, "write_parquet", denied)
    line = error_line(east("run", config, "--out", out))
    assert f"Permission denied ({out / 'seed-0/sft/stats.parquet'}) (in stage seed-0/sft/weight)" in line
    assert "make it writable" in line and "rerun to resume" in line


def test_checkpoint_cut_short_is_not_resumed_from(tmp_path):
    from east.training.run import last_checkpoint

    for step, complete in ((2, True), (4, True), (6, False)):
        directory = tmp_path / f"checkpoint-{step}"
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(b"\0" * 100)
        if complete:
            (directory / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert not (tmp_path / "checkpoint-6").exists()


def test_os_error_inside_a_library_error_gets_its_fix():
    from safetensors import SafetensorError

    from east.cli import error_line as line_of

    exc = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    exc.add_note("in stage seed-0/sft/train")
    line = line_of(exc)
    assert line.startswith("No space left on device (in stage seed-0/sft/train)") and "free some disk space" in line
