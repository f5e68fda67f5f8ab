"""east.executor without a Ray cluster: shard planning, atomic shard files, skipping finished shards, the
placement keys kept out of stage keys, one-line configuration errors, and evaluation shards equal to one
evaluation call (the built-in backbone on CPU). The Ray path itself: tests/test_executor_ray.py (slow)."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import torch
from pydantic import ValidationError

from east import executor
from east.config import PLACEMENT_KEYS, ModelConfig, RunConfig, SamplingConfig, TaskConfig
from east.errors import UserError
from east.evaluation import evaluate, summary_of
from east.sampling import Generation


class FakeBackend:
    """Draws "<prompt>#<seed>/<sample>" and counts calls; fails on a prompt named "boom"."""

    def __init__(self):
        self.calls = []

    def draw(self, loaded, prompts, n, *, seed, **settings):
        self.calls.append(list(prompts))
        if "boom" in prompts:
            raise RuntimeError("the sampler died mid-shard")
        return [Generation([f"{p}#{seed}/{j}" for j in range(n)], [1] * n, [True] * n) for p in prompts]


def plan(tmp_path, count=7, size=3, fingerprint="abc"):
    ids = [f"q{i}" for i in range(count)]
    prompts = [f"p{i}" for i in range(count)]
    return executor.sample_shards(ids, prompts, size=size, n=2, seed_of=lambda i: 100 + i, directory=tmp_path,
                                  fingerprint=fingerprint)


def test_shards_cover_every_question_once_in_order(tmp_path):
    shards = plan(tmp_path, count=7, size=3)
    assert [s.question_ids for s in shards] == [("q0", "q1", "q2"), ("q3", "q4", "q5"), ("q6",)]
    assert [s.seed for s in shards] == [100, 101, 102]
    assert [s.path.name for s in shards] == [f"shard-0000{i}-abc.parquet" for i in range(3)]
    assert executor.spans(6, 3) == [(0, 3), (3, 6)] and executor.spans(0, 3) == []


def test_shard_file_is_written_whole_or_not_at_all(tmp_path):
    backend = FakeBackend()
    shard = plan(tmp_path)[0]
    assert executor.ShardWorker(backend, loaded=("m", "t")).draw(shard) == (0, 3)
    rows = executor.read_shard(shard.path)
    assert [r["question_id"] for r in rows] == ["q0", "q1", "q2"] and rows[0]["responses"] == ["p0#100/0", "p0#100/1"]
    broken = executor.SampleShard(5, tmp_path / "shard-00005-abc.parquet", ("q9",), ("boom",), 2, 7)
    with pytest.raises(RuntimeError):
        executor.ShardWorker(backend, loaded=("m", "t")).draw(broken)
    assert not broken.path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard.path.name]  # no temporary left behind


def test_finished_shards_are_skipped_and_damaged_ones_redrawn(tmp_path):
    backend = FakeBackend()
    shards = plan(tmp_path)
    worker = executor.ShardWorker(backend, loaded=("m", "t"))
    worker.draw(shards[0])
    worker.draw(shards[2])
    shards[2].path.write_bytes(shards[2].path.read_bytes()[:-10])  # a torn file, as a bad disk would leave
    logged = []
    todo = executor.unfinished(shards, logged.append)
    assert [s.index for s in todo] == [1, 2] and "output damaged" in logged[0] and not shards[2].path.exists()
    backend.calls.clear()
    executor.draw_shards(todo, executor.Backend(SamplingConfig(), ModelConfig(), "unused"), local_worker=lambda: worker)
    assert backend.calls == [["p3", "p4", "p5"], ["p6"]]  # the finished shard was not drawn again
    assert [r["question_id"] for r in executor.merged_rows(shards)] == [f"q{i}" for i in range(7)]
    assert executor.unfinished(shards) == []


def test_local_worker_is_not_built_when_nothing_is_left(tmp_path):
    def fail():
        raise AssertionError("the model was loaded for nothing")

    executor.draw_shards([], executor.Backend(SamplingConfig(), ModelConfig(), "unused"), local_worker=fail)


def test_stale_shards_of_other_settings_are_removed(tmp_path):
    backend = FakeBackend()
    worker = executor.ShardWorker(backend, loaded=("m", "t"))
    old = plan(tmp_path, fingerprint="old")
    new = plan(tmp_path, fingerprint="new")
    worker.draw(old[0])
    worker.draw(new[1])
    (tmp_path / ".shard-00000-new.parquet.tmp-1.x").write_text("a temporary is the run lock's business")
    assert executor.remove_stale(tmp_path, "new") == [old[0].path]
    assert new[1].path.exists() and [s.index for s in executor.unfinished(new)] == [0, 2]


def test_placement_keys_stay_out_of_stage_keys():
    placed = SamplingConfig(executor="ray", data_parallel_size=8, ray_address="auto", ray_num_cpus=4, ray_num_gpus=1)
    assert placed.key_dump() == SamplingConfig().key_dump()
    assert not PLACEMENT_KEYS & set(placed.key_dump())
    # What draws the samples stays in: a different n or tensor_parallel_size is a different key.
    assert SamplingConfig(n=4).key_dump() != SamplingConfig().key_dump()
    # The keys of runs made before the executor existed are unchanged.
    assert set(SamplingConfig().key_dump()) == {"backend", "n", "temperature", "top_p", "top_k", "max_new_tokens", "seed",
                                                "token_budget", "stop", "shard_size", "tensor_parallel_size",
                                                "gpu_memory_utilization"}


def test_replicas_without_ray_are_refused_in_one_line():
    with pytest.raises(ValidationError, match="data_parallel_size=4 runs that many Ray replicas; set sampling.executor=ray"):
        RunConfig(sampling={"data_parallel_size": 4})
    with pytest.raises(ValidationError, match="data_parallel_size=2 .* set sampling.executor=ray"):
        SamplingConfig(backend="vllm", tensor_parallel_size=2, data_parallel_size=2)
    SamplingConfig(executor="ray", data_parallel_size=4)


def test_missing_ray_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(UserError, match=r"east-selftrain\[distributed\]"):
        executor.check_available(SamplingConfig(executor="ray"))
    executor.check_available(SamplingConfig())  # local needs nothing


def test_replica_resources_and_a_cluster_that_cannot_place_them():
    assert executor.replica_resources(SamplingConfig()) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert executor.replica_resources(SamplingConfig(backend="vllm", tensor_parallel_size=2)) == {"num_cpus": 1.0,
                                                                                                  "num_gpus": 2.0}
    assert executor.replica_resources(SamplingConfig(ray_num_gpus=0.5, ray_num_cpus=2))["num_gpus"] == 0.5
    executor.check_fits({"num_cpus": 1.0, "num_gpus": 0.0}, [{"CPU": 2.0}])
    with pytest.raises(UserError, match="sampling.ray_num_gpus=2: each replica asks for that many GPUs but the "
                                        "largest node of the Ray cluster has 0"):
        executor.check_fits({"num_cpus": 1.0, "num_gpus": 2.0}, [{"CPU": 64.0}])
    eight_gpu_nodes = [{"CPU": 64.0, "GPU": 8.0}] * 4
    executor.check_fits({"num_cpus": 1.0, "num_gpus": 8.0}, eight_gpu_nodes)
    with pytest.raises(UserError, match="ray_num_gpus=16: .* largest node of the Ray cluster has 8"):
        executor.check_fits({"num_cpus": 1.0, "num_gpus": 16.0}, eight_gpu_nodes)  # 32 GPUs, but not on one node


# ----------------------------------------------------------------------------------------------------
# Evaluation shards: the built-in backbone, drawn in pieces, gives what one call gives


@pytest.fixture(scope="module")
def backbone():
    from east.backbone import builtin_checkpoint
    from east.tasks.loaders import load_questions
    from east.tasks.prompts import render_prompt

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    backend = executor.Backend(SamplingConfig(max_new_tokens=64), ModelConfig(), str(builtin_checkpoint()))
    loaded = backend.load()
    questions = load_questions(TaskConfig(test_size=10), "test")
    prompts = [render_prompt(loaded[1], q, None) for q in questions]
    yield backend, loaded, questions, prompts
    torch.set_num_threads(before)


EVAL = {"kind": "arith", "k": 4, "k_temperature": 1.0, "timeout": 5.0, "max_new_tokens": 64, "token_budget": 4096}


def whole_evaluation(backend, loaded, questions, prompts):
    def generate(ps, n, temperature, seed):
        return backend.draw(loaded, ps, n, seed=seed, temperature=temperature, max_new_tokens=64, token_budget=4096)

    return evaluate(questions, prompts, generate, kind="arith", k=4, k_temperature=1.0)


def test_first_index_draws_what_the_whole_call_draws(backbone):
    backend, loaded, _, prompts = backbone
    whole = backend.draw(loaded, prompts, 3, seed=5, max_new_tokens=64)
    piece = backend.draw(loaded, prompts[4:7], 3, seed=5, max_new_tokens=64, first_index=4)
    assert piece == whole[4:7]
    # The control: numbered from 0, the same slice draws other samples, so the comparison above can fail.
    assert backend.draw(loaded, prompts[4:7], 3, seed=5, max_new_tokens=64) != whole[4:7]


def test_evaluation_shards_merge_into_the_whole_evaluation(backbone, tmp_path):
    backend, loaded, questions, prompts = backbone
    rows, summary = whole_evaluation(backend, loaded, questions, prompts)
    shards = executor.eval_shards([q.to_dict() for q in questions], prompts, size=4, directory=tmp_path,
                                  fingerprint="f", **EVAL)
    assert [s.first_index for s in shards] == [0, 4, 8]
    executor.draw_shards(executor.unfinished(shards), backend, local_worker=lambda: executor.ShardWorker(backend, loaded))
    merged = executor.merged_rows(shards)
    assert merged == rows
    assert summary_of(merged, 4) == summary
    # The control: a shard that numbers its prompts from 0 draws other k samples, and the rows show it.
    misplaced = replace(shards[1], first_index=0, path=tmp_path / "misplaced.jsonl")
    executor.ShardWorker(backend, loaded).draw(misplaced)
    assert executor.read_shard(misplaced.path) != rows[4:8]
