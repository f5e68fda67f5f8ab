"""east.executor on a local Ray cluster (`ray.init(num_cpus=2)`, as on CI's 2 cores): sample shards drawn by Ray
replicas equal, row for row, the same shards drawn in process; a different seed is told apart (the comparison
can fail); finished shards are not drawn again; evaluation through Ray equals one in-process evaluation.

Slow (about a minute: the cluster starts in ~6 s and every replica loads the model). Needs
east-selftrain[distributed]."""

from __future__ import annotations

import pytest

from east import executor
from east.config import ModelConfig, SamplingConfig, TaskConfig
from east.evaluation import evaluate, summary_of

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'east-selftrain[distributed]'")

pytestmark = pytest.mark.slow

RAY = {"executor": "ray", "data_parallel_size": 2, "max_new_tokens": 48, "n": 4}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def material():
    from east.backbone import builtin_checkpoint
    from east.models import load_tokenizer
    from east.tasks.loaders import load_questions
    from east.tasks.prompts import render_prompt

    path = str(builtin_checkpoint())
    tokenizer = load_tokenizer(path)
    train = load_questions(TaskConfig(train_size=12), "train")
    test = load_questions(TaskConfig(test_size=12), "test")
    return path, train, [render_prompt(tokenizer, q, None) for q in train], test, [render_prompt(tokenizer, q, None) for q in test]


def backends(path, **sampling):
    """The same sampler, drawn in process and on two Ray replicas."""
    local = executor.Backend(SamplingConfig(**{**RAY, "executor": "local", "data_parallel_size": 1, **sampling}),
                             ModelConfig(), path)
    remote = executor.Backend(SamplingConfig(**{**RAY, **sampling}), ModelConfig(), path)
    return local, remote


def sample_plan(train, prompts, directory, *, seed=0):
    return executor.sample_shards([q.question_id for q in train], prompts, size=4, n=4, seed_of=lambda i: seed * 1000 + i,
                                  directory=directory, fingerprint="f")


def draw(shards, backend, log=None):
    executor.draw_shards(executor.unfinished(shards), backend, local_worker=lambda: executor.ShardWorker(backend),
                         log=log or (lambda msg: None))
    return executor.merged_rows(shards)


def test_ray_replicas_sample_what_one_process_samples(cluster, material, tmp_path):
    path, train, prompts, _, _ = material
    local, remote = backends(path)
    in_process = draw(sample_plan(train, prompts, tmp_path / "local"), local)
    logged = []
    on_ray = draw(sample_plan(train, prompts, tmp_path / "ray"), remote, logged.append)
    assert "3 shard(s) on 2 Ray replica(s)" in logged[0]
    assert len(on_ray) == 12 and on_ray == in_process
    assert len({r for row in on_ray for r in row["responses"]}) > 12  # sampled, not one answer copied around
    # The control: another seed draws other samples, and the comparison says so.
    other = draw(sample_plan(train, prompts, tmp_path / "other", seed=1), local)
    assert [r["question_id"] for r in other] == [r["question_id"] for r in in_process] and other != in_process


def test_finished_shards_are_not_drawn_again_on_ray(cluster, material, tmp_path):
    path, train, prompts, _, _ = material
    local, remote = backends(path)
    shards = sample_plan(train, prompts, tmp_path)
    executor.ShardWorker(local).draw(shards[1])  # as if an earlier run had finished this one before it was stopped
    finished = shards[1].path.stat()
    logged = []
    rows = draw(shards, remote, logged.append)
    assert "2 shard(s) on 2 Ray replica(s)" in logged[0]
    assert sorted(line.split(":")[0].strip() for line in logged[1:]) == ["shard 0", "shard 2"]
    after = shards[1].path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (finished.st_ino, finished.st_mtime_ns)
    assert rows == draw(sample_plan(train, prompts, tmp_path / "whole"), local)


def test_evaluation_on_ray_equals_one_evaluation_in_process(cluster, material, tmp_path):
    path, _, _, test, prompts = material
    local, remote = backends(path)
    loaded = local.load()

    def generate(ps, n, temperature, seed):
        return local.draw(loaded, ps, n, seed=seed, temperature=temperature, max_new_tokens=48, token_budget=4096)

    rows, summary = evaluate(test, prompts, generate, kind="arith", k=3, k_temperature=1.0)
    shards = executor.eval_shards([q.to_dict() for q in test], prompts, size=5, directory=tmp_path, fingerprint="f",
                                  kind="arith", k=3, k_temperature=1.0, timeout=5.0, max_new_tokens=48, token_budget=4096)
    merged = draw(shards, remote)
    assert [r["response"] for r in merged] == [r["response"] for r in rows]  # greedy, answer for answer
    assert merged == rows and summary_of(merged, 3) == summary


def test_a_model_the_replicas_cannot_load_is_a_one_line_error(cluster, tmp_path):
    from east.errors import UserError

    backend = executor.Backend(SamplingConfig(**RAY), ModelConfig(), str(tmp_path / "no-model"))
    shards = executor.sample_shards(["q0"], ["p"], size=1, n=1, seed_of=lambda i: i, directory=tmp_path, fingerprint="f")
    with pytest.raises(UserError, match="could not be loaded") as raised:
        executor.draw_shards(shards, backend, local_worker=lambda: None)
    assert "\n" not in str(raised.value) and "Traceback" not in str(raised.value)
