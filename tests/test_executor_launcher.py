"""east.executor with `sampling.executor: launcher`: the plan written for the worker processes comes back as the same
shards and Backend; each rank draws every WORLD_SIZE-th shard and together they draw each once; the config refuses
a launcher without the executor and the reverse, and keeps `launcher` out of stage keys; a failed worker, or one that
leaves a shard undrawn, is one line naming its log. Slow: 2 processes under `python -m torch.distributed.run` (CPU,
no process group) draw sample and evaluation shards identical to the local executor's, told apart from another seed;
`east sample` under that launcher writes the local run's samples.parquet byte for byte, under the same stage key.

    pytest tests/test_executor_launcher.py               (the slow test: add -m slow)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from east import executor, io
from east.config import PLACEMENT_KEYS, ModelConfig, SamplingConfig, TaskConfig
from east.errors import UserError
from east.sampling import Generation


def plan(tmp_path, count=7, size=2, seed=100):
    return executor.sample_shards([f"q{i}" for i in range(count)], [f"p{i}" for i in range(count)], size=size, n=2,
                                  seed_of=lambda i: seed + i, directory=tmp_path, fingerprint="f")


def launcher_backend(launcher: str, path: str = "model", **sampling) -> executor.Backend:
    return executor.Backend(SamplingConfig(executor="launcher", launcher=launcher, **sampling), ModelConfig(), path)


def test_plan_round_trips_through_json(tmp_path):
    shards = plan(tmp_path)
    backend = launcher_backend("torchrun --nproc_per_node 2", max_new_tokens=7)
    io.write_json(tmp_path / "plan.json", executor.plan_json(shards, backend))
    assert executor.plan_from_json(io.read_json(tmp_path / "plan.json")) == (shards, backend)
    evals = executor.eval_shards([{"question_id": "a", "answer": "1"}, {"question_id": "b", "answer": "2"}], ["x", "y"],
                                 size=1, directory=tmp_path, fingerprint="f", kind="arith", k=2, k_temperature=1.0,
                                 timeout=5.0, max_new_tokens=8, token_budget=64)
    assert executor.plan_from_json(executor.plan_json(evals, backend))[0] == evals


def test_ranks_draw_every_shard_once_and_evenly():
    shards = list(range(7))
    parts = [executor.rank_shards(shards, rank, 3) for rank in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert executor.rank_shards(shards, 0, 1) == shards


def test_each_process_of_a_node_takes_its_own_gpus():
    from east.executor_worker import own_devices

    assert own_devices(0, 1, 1, None) is None  # one process: it sees what it was given
    assert [own_devices(r, 4, 2, None) for r in range(4)] == ["0,1", "2,3", "4,5", "6,7"]
    assert [own_devices(r, 2, 1, "3,5,7") for r in range(2)] == ["3", "5"]
    with pytest.raises(UserError, match="2 processes per node, each taking sampling.tensor_parallel_size=2"):
        own_devices(0, 2, 2, "0,1,2")


def test_launcher_and_executor_must_come_together():
    with pytest.raises(ValidationError, match="sampling.executor=launcher needs sampling.launcher"):
        SamplingConfig(executor="launcher")
    with pytest.raises(ValidationError, match="sampling.launcher is used only by sampling.executor=launcher"):
        SamplingConfig(launcher="torchrun --nproc_per_node 2")
    placed = SamplingConfig(executor="launcher", launcher="torchrun --nproc_per_node 8")
    assert "launcher" in PLACEMENT_KEYS and placed.key_dump() == SamplingConfig().key_dump()


def test_failed_worker_is_one_line_naming_its_log(tmp_path):
    # The launcher runs `-c CODE -m east.executor_worker PLAN`: python executes CODE, the rest is its argv.
    code = "import sys; print('error: model: not found'); sys.exit(3)"
    shards = plan(tmp_path)
    with pytest.raises(UserError) as raised:
        executor.draw_shards(shards, launcher_backend(f"{sys.executable} -c \"{code}\""), local_worker=None)
    message, log = str(raised.value), tmp_path / executor.LOG_FILE
    assert "\n" not in message and "exit 3" in message and "model: not found" in message and str(log) in message
    assert executor.plan_from_json(io.read_json(tmp_path / executor.PLAN_FILE))[0] == shards


def test_worker_that_left_a_shard_undrawn_is_an_error(tmp_path):
    shards = plan(tmp_path)
    for shard in shards[:-1]:  # as if one rank drew its shards and another wrote nothing
        io.write_parquet(shard.path, [Generation(["a", "b"], [1, 1], [True, True]).to_sample_set("q", "p").to_dict()])
    with pytest.raises(UserError, match=f"exited 0 but 1 shard.*{shards[-1].path.name}.*launcher-worker.log"):
        executor.draw_shards(shards, launcher_backend(f"{sys.executable} -c pass"), local_worker=None)


def test_missing_launcher_program_is_one_line(tmp_path):
    with pytest.raises(UserError, match="sampling.launcher: 'no-such-launcher-east' not found"):
        executor.draw_shards(plan(tmp_path), launcher_backend("no-such-launcher-east --x"), local_worker=None)


# ----------------------------------------------------------------------------------------------------
# 2 processes under torch.distributed.run, against the local executor


@pytest.fixture(scope="module")
def material():
    from east.backbone import builtin_checkpoint
    from east.models import load_tokenizer
    from east.tasks.loaders import load_questions
    from east.tasks.prompts import render_prompt

    path = str(builtin_checkpoint())
    tokenizer = load_tokenizer(path)
    questions = load_questions(TaskConfig(train_size=6), "train")
    return path, questions, [render_prompt(tokenizer, q, None) for q in questions]


def drawn(shards, backend):
    executor.draw_shards(executor.unfinished(shards), backend, local_worker=lambda: executor.ShardWorker(backend))
    return executor.merged_rows(shards)


@pytest.mark.slow
def test_two_launched_processes_draw_what_the_local_executor_draws(material, tmp_path, monkeypatch):
    path, questions, prompts = material
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    local = executor.Backend(SamplingConfig(max_new_tokens=24), ModelConfig(), path)
    launched = launcher_backend(f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node 2", path,
                                max_new_tokens=24)

    def sample_plan(directory, seed=0):
        return executor.sample_shards([q.question_id for q in questions], prompts, size=2, n=3,
                                      seed_of=lambda i: seed + i, directory=tmp_path / directory, fingerprint="f")

    def eval_plan(directory):
        return executor.eval_shards([q.to_dict() for q in questions], prompts, size=2, directory=tmp_path / directory,
                                    fingerprint="f", kind="arith", k=2, k_temperature=1.0, timeout=5.0,
                                    max_new_tokens=24, token_budget=4096)

    samples = drawn(sample_plan("local"), local)
    assert drawn(sample_plan("launched"), launched) == samples
    assert drawn(sample_plan("other-seed", seed=50), local) != samples  # the comparison can fail
    log = (tmp_path / "launched" / executor.LOG_FILE).read_text()
    assert "rank 0: shard 0" in log and "rank 1: shard 1" in log and "rank 0: shard 2" in log  # both ranks drew
    assert drawn(eval_plan("eval-launched"), launched) == drawn(eval_plan("eval-local"), local)


@pytest.mark.slow
def test_east_sample_under_a_launcher_writes_the_local_samples_parquet(tmp_path):
    """Through the pipeline (stage_sample): the same samples.parquet, byte for byte, and the same stage key, so a run
    sampled under a launcher resumes in process without redrawing."""
    import os
    import subprocess

    tiny = ["task.train_size=8", "task.test_size=4", "sampling.n=2", "sampling.max_new_tokens=24",
            "sampling.shard_size=2"]
    launcher = f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node 2"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name, extra in (("local", []), ("launched", ["sampling.executor=launcher", f"sampling.launcher={launcher}"])):
        proc = subprocess.run([sys.executable, "-m", "east.cli", "sample", "configs/demo.yaml", "--out",
                               str(tmp_path / name), *tiny, *extra], env=env, capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    local, launched = (tmp_path / name / "seed-0" for name in ("local", "launched"))
    assert (launched / "samples.parquet").read_bytes() == (local / "samples.parquet").read_bytes()
    assert "rank 1: shard" in (launched / "shards" / executor.LOG_FILE).read_text()
    keys = [io.read_json(tmp_path / name / "manifests" / "seed-0__sample.json")["key"] for name in ("local", "launched")]
    assert keys[0] == keys[1]
