"""east.executor on a local Ray cluster (`ray.init(num_cpus=2)`, as on CI's 2 cores): sample shards drawn by Ray
replicas equal, row for row, the same shards drawn in process; a different seed is told apart (the comparison
can fail); finished shards are not drawn again; `east run` with sampling.executor=ray writes the same samples and
evaluation as in process, and resumed in process redoes nothing; a model the replicas cannot load is one line.

Slow (a minute or two: the cluster starts in ~6 s and every replica loads the model). Needs
east-selftrain[distributed]."""

from __future__ import annotations

import pytest

from east import executor
from east.config import ModelConfig, SamplingConfig, TaskConfig

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'east-selftrain[distributed]'")

pytestmark = pytest.mark.slow

RAY = {"executor": "ray", "data_parallel_size": 2, "max_new_tokens": 48, "n": 4}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, _system_config={"worker_niceness": 0})  # as east.executor.connect
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


def run_config(**sampling):
    from east.config import RunConfig

    return RunConfig(task={"train_size": 12, "test_size": 10},
                     sampling={"n": 4, "max_new_tokens": 48, "shard_size": 4, **sampling},
                     evaluation={"max_new_tokens": 48, "k": 3, "token_budget": 4096})


def sample_and_evaluate(config, out):
    """`east run ... until sample`, then the untrained model's evaluation stage, as `east run` would run it."""
    from east import pipeline

    logged = []
    pipeline.run_pipeline(config, out, until="sample")
    with pipeline.RunLock(out):
        run = pipeline.prepare_run_dir(config, out)
        run.log = logged.append
        pipeline.stage_questions(run)
        pipeline.stage_evaluate(run, "default", pipeline.model_path(run), [], out / "default")
    return logged


def test_east_run_on_ray_equals_east_run_in_process_and_resumes_in_process(cluster, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    sample_and_evaluate(run_config(), local)
    logged = sample_and_evaluate(run_config(executor="ray", data_parallel_size=2), remote)
    assert "  3 shard(s) on 2 Ray replica(s)" in logged  # the test split: 10 questions in shards of 4
    for name in ("seed-0/samples.parquet", "default/eval-test.jsonl", "default/eval-test.json"):
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name
    assert len(list((remote / "default/eval-test-shards").glob("shard-*.jsonl"))) == 3
    assert not (local / "default/eval-test-shards").exists()  # in process, evaluation is one call, as before
    # Where the shards were drawn is not in the stage keys: the Ray run, resumed in process, is finished.
    from east import pipeline

    run = pipeline.run_pipeline(run_config(), remote, until="sample")
    assert run.executed == [] and "seed-0/sample" in run.skipped


def test_a_model_the_replicas_cannot_load_is_a_one_line_error(cluster, tmp_path):
    from east.errors import UserError

    backend = executor.Backend(SamplingConfig(**RAY), ModelConfig(), str(tmp_path / "no-model"))
    shards = executor.sample_shards(["q0"], ["p"], size=1, n=1, seed_of=lambda i: i, directory=tmp_path, fingerprint="f")
    with pytest.raises(UserError, match="could not be loaded") as raised:
        executor.draw_shards(shards, backend, local_worker=lambda: None)
    assert "\n" not in str(raised.value) and "Traceback" not in str(raised.value)
