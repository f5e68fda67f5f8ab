"""Kill `east` with SIGKILL inside sampling, inside training and between stages; the rerun finishes with
results identical to an uninterrupted run, with no duplicated or missing samples."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from east import io

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "name=resume", "task.train_size=30", "task.test_size=8", "sampling.n=4", "sampling.max_new_tokens=40",
    "sampling.shard_size=5", "evaluation.max_new_tokens=40", "train.epochs=2", "train.batch_size=4",
    "train.save_steps=2", "train.sft.learning_rate=1e-4", "arms=[{name: east, weighting: entropy}]",
]


def east(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "east.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(*args: str) -> str:
    proc = east(*args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL `proc` as soon as `ready()` is true; fail if it finished first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail("the process finished before it could be killed: " + proc.stdout.read()[-2000:])
        time.sleep(0.05)
    proc.kill()
    pytest.fail("timed out waiting for the kill point")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    finish("train", "configs/demo.yaml", "--out", str(out), *TINY)
    return out


def sample_rows(out: Path) -> list[dict]:
    return io.read_parquet(out / "seed-0" / "samples.parquet")


def test_kill_inside_sampling_resumes_without_duplicates(reference, tmp_path):
    out = tmp_path / "run"
    shards = out / "seed-0" / "shards"
    proc = east("sample", "configs/demo.yaml", "--out", str(out), *TINY)
    kill_when(proc, lambda: shards.exists() and len(list(shards.glob("*.parquet"))) >= 2)
    done_before = len(list(shards.glob("*.parquet")))
    assert not (out / "seed-0" / "samples.parquet").exists()
    assert not list(shards.glob("*.tmp")) or all(p.name.startswith(".") for p in shards.glob("*.tmp"))
    log = finish("sample", "configs/demo.yaml", "--out", str(out), *TINY)
    rows = sample_rows(out)
    ids = [r["question_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 30
    assert rows == sample_rows(reference)  # identical to the uninterrupted run
    assert done_before >= 2 and "shard 0" not in log  # finished shards were not regenerated


def test_kill_inside_training_resumes_to_the_same_weights(reference, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "run"
    arm = out / "seed-0" / "east"
    proc = east("train", "configs/demo.yaml", "--out", str(out), *TINY)
    kill_when(proc, lambda: any(arm.glob("**/checkpoint-*/trainer_state.json")))
    assert not (arm / "model").exists()
    log = finish("train", "configs/demo.yaml", "--out", str(out), *TINY)
    assert "skip seed-0/sample" in log.replace("\n", " ")
    ours = load_file(arm / "model" / "model.safetensors")
    theirs = load_file(reference / "seed-0" / "east" / "model" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5)


def test_kill_between_stages_skips_finished_ones(reference, tmp_path):
    out = tmp_path / "run"
    proc = east("train", "configs/demo.yaml", "--out", str(out), *TINY)
    kill_when(proc, lambda: (out / "manifests" / "seed-0__grade.json").exists())
    log = finish("train", "configs/demo.yaml", "--out", str(out), *TINY).replace("\n", " ")
    assert "skip seed-0/sample" in log and "skip seed-0/grade" in log
    assert sample_rows(out) == sample_rows(reference)
