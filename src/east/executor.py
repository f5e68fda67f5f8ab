"""Where sample and evaluation shards are drawn: in this process (`sampling.executor: local`, the default) or on
Ray actors (`sampling.executor: ray`), with the same result either way.

    east run configs/demo.yaml sampling.executor=ray sampling.data_parallel_size=2        # a local Ray cluster
    ray start --head ...; east run CONFIG sampling.executor=ray sampling.ray_address=auto  # a cluster (docs/scaling.md)

A shard (sampling.shard_size questions) is the unit of work. Its draws are fixed by what it is, not by who draws
it: a sample shard by its own seed (east.pipeline.shard_seed), an evaluation shard by the prompt indices it covers
(`first_index`: the samplers number prompts from there). Each replica (a `ShardWorker`; data_parallel_size of
them) loads the configured backend once and writes every shard it draws to its final path in the run directory
atomically (temporary name + rename, east.io), so a shard file is either whole or absent. The orchestrator (the one
`east run` process, which holds the run lock and writes the manifests) skips shards already on disk, hands the
rest to the replicas through `ray.util.ActorPool` and merges the files in shard order. Several nodes need only a
filesystem that every node sees at the same path.

With `sampling.executor: launcher` the orchestrator writes the plan (the shards still to draw and the Backend) to
PLAN_FILE in the shard directory and runs `<sampling.launcher> -m east.executor_worker PLAN` (e.g. torchrun): each
of its processes draws every WORLD_SIZE-th shard of the plan, from its RANK on (east.executor_worker), writing each
file atomically as above; the orchestrator then checks that every shard is on disk and merges as before.

Which executor drew a shard, on how many replicas and where, is left out of stage keys
(`SamplingConfig.key_dump`): a run started on a cluster and resumed in process keeps its finished shards.
Ray start-up is not free (a local cluster takes ~6 s, each replica loads the model): benchmarks/executor.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from east import io
from east.config import ModelConfig, SamplingConfig
from east.errors import UserError

RAY_MISSING = ("sampling.executor=ray needs Ray: pip install 'east-selftrain[distributed]' (or set "
               "sampling.executor=local)")


# ----------------------------------------------------------------------------------------------------
# The configured sampler, as something a replica can load


@dataclass(frozen=True)
class Backend:
    """The configured sampler (sampling and model sections, model path), picklable so that Ray ships it to every
    replica: `load` once, then `draw` as often as needed."""

    sampling: SamplingConfig
    model: ModelConfig
    path: str

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer): an HF model, or for backend vllm a `vllm.LLM` and its tokenizer."""
        if self.sampling.backend == "vllm":
            from east.sampling.vllm import load_llm

            try:
                llm = load_llm(self.path, tensor_parallel_size=self.sampling.tensor_parallel_size,
                               gpu_memory_utilization=self.sampling.gpu_memory_utilization, seed=self.sampling.seed,
                               trust_remote_code=self.model.trust_remote_code)
            except ImportError as exc:
                raise UserError(f"sampling.backend=vllm: {exc}; pip install 'east-selftrain[vllm]' on a GPU "
                                "machine") from None
            return llm, llm.get_tokenizer()
        from east.models import load_model_and_tokenizer

        return load_model_and_tokenizer(self.path, dtype=self.model.dtype, trust_remote_code=self.model.trust_remote_code)

    def load_for_prompts(self) -> tuple[Any, Any]:
        """What the orchestrator needs to render and check prompts without holding the model (the replicas do):
        a stand-in carrying the model's config (its context length), and the tokenizer. For vllm, as `load`
        gives, no config: vLLM checks lengths itself."""
        from east.models import load_tokenizer

        tokenizer = load_tokenizer(self.path, trust_remote_code=self.model.trust_remote_code)
        if self.sampling.backend == "vllm":
            return SimpleNamespace(), tokenizer
        from transformers import AutoConfig

        return SimpleNamespace(config=AutoConfig.from_pretrained(self.path, trust_remote_code=self.model.trust_remote_code)), tokenizer

    def draw(self, loaded: tuple[Any, Any], prompts: list[str], n: int, *, seed: int, temperature: float | None = None,
             max_new_tokens: int | None = None, token_budget: int | None = None, first_index: int = 0,
             progress: bool = False):
        """n samples per prompt; settings not given come from the sampling section. `first_index`: the index of
        prompts[0] in the sampler's per-prompt random draws (the CPU sampler and vLLM honour it; HF `generate` on
        an accelerator draws from one torch generator per call and cannot)."""
        cfg = self.sampling
        model, tokenizer = loaded
        temperature = cfg.temperature if temperature is None else temperature
        max_new_tokens = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        token_budget = cfg.token_budget if token_budget is None else token_budget
        if cfg.backend == "vllm":
            from east.sampling import vllm

            return vllm.sample(model, prompts, n, temperature=temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                               max_new_tokens=max_new_tokens, seed=seed, stop=cfg.stop or None, progress=progress,
                               first_index=first_index)
        from east.sampling.hf import sample

        return sample(model, tokenizer, prompts, n, temperature=temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                      max_new_tokens=max_new_tokens, seed=seed, stop=cfg.stop or None, token_budget=token_budget,
                      progress=progress, first_index=first_index, gemm=cfg.gemm)


# ----------------------------------------------------------------------------------------------------
# Shards: what to draw and where its file goes


@dataclass(frozen=True)
class SampleShard:
    """Questions [start, start + len) of a sample stage: n samples each, one Parquet file of SampleSet rows."""

    index: int
    path: Path
    question_ids: tuple[str, ...]
    prompts: tuple[str, ...]
    n: int
    seed: int

    def draw(self, backend: Backend, loaded, progress: bool = False) -> int:
        generations = backend.draw(loaded, list(self.prompts), self.n, seed=self.seed, progress=progress)
        rows = [g.to_sample_set(q, p).to_dict() for q, p, g in zip(self.question_ids, self.prompts, generations)]
        io.write_parquet(self.path, rows)
        return len(rows)


@dataclass(frozen=True)
class EvalShard:
    """Questions [first_index, first_index + len) of an evaluation split: greedy (and k sampled) answers graded,
    one JSONL file of per-question rows, exactly the rows `evaluate` gives those questions in one call."""

    index: int
    path: Path
    questions: tuple[dict, ...]  # Question.to_dict()
    prompts: tuple[str, ...]
    first_index: int
    kind: str
    k: int
    k_temperature: float
    timeout: float
    max_new_tokens: int
    token_budget: int

    def draw(self, backend: Backend, loaded, progress: bool = False) -> int:
        from east.evaluation import evaluate
        from east.records import Question

        def generate(prompts, n, temperature, seed):
            return backend.draw(loaded, prompts, n, seed=seed, temperature=temperature, first_index=self.first_index,
                                max_new_tokens=self.max_new_tokens, token_budget=self.token_budget, progress=progress)

        rows, _ = evaluate([Question.from_dict(q) for q in self.questions], list(self.prompts), generate,
                           kind=self.kind, k=self.k, k_temperature=self.k_temperature, timeout=self.timeout)
        io.write_jsonl(self.path, rows)
        return len(rows)


def shard_path(directory: Path, index: int, fingerprint: str, suffix: str) -> Path:
    """A shard's file: its index, and the fingerprint of everything that determines it (a changed setting never
    reuses a stale shard)."""
    return Path(directory) / f"shard-{index:05d}-{fingerprint}{suffix}"


def spans(count: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive shards of `size` items covering `count` items."""
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def sample_shards(question_ids: Sequence[str], prompts: Sequence[str], *, size: int, n: int,
                  seed_of: Callable[[int], int], directory: Path, fingerprint: str) -> list[SampleShard]:
    return [SampleShard(index, shard_path(directory, index, fingerprint, ".parquet"), tuple(question_ids[a:b]),
                        tuple(prompts[a:b]), n, seed_of(index))
            for index, (a, b) in enumerate(spans(len(prompts), size))]


def eval_shards(questions: Sequence[dict], prompts: Sequence[str], *, size: int, directory: Path, fingerprint: str,
                **settings) -> list[EvalShard]:
    """`settings`: kind, k, k_temperature, timeout, max_new_tokens, token_budget."""
    return [EvalShard(index, shard_path(directory, index, fingerprint, ".jsonl"), tuple(questions[a:b]),
                      tuple(prompts[a:b]), a, **settings)
            for index, (a, b) in enumerate(spans(len(prompts), size))]


def remove_stale(directory: Path, fingerprint: str) -> list[Path]:
    """Delete shard files of another fingerprint (drawn with other settings or inputs) and return them."""
    stale = [p for p in Path(directory).glob("shard-*") if not p.stem.endswith(f"-{fingerprint}")]
    for path in stale:
        path.unlink()
    return stale


def read_shard(path: Path) -> list[dict]:
    return io.read_parquet(path) if path.suffix == ".parquet" else io.read_jsonl(path)


def unfinished(shards: Iterable, log: Callable[[str], None] = lambda msg: None) -> list:
    """The shards still to draw: no file, or a damaged one (removed, and said). Reading a file whole is the check,
    a Parquet file's footer being its last bytes; a rename makes a torn file unlikely, not a bad disk."""
    todo = []
    for shard in shards:
        if shard.path.exists():
            try:
                read_shard(shard.path)
                continue
            except UserError:
                log(f"[yellow]output damaged: {shard.path}; sampling that shard again[/yellow]")
                shard.path.unlink()
        todo.append(shard)
    return todo


def merged_rows(shards: Iterable) -> list[dict]:
    """Every shard's rows, in shard order."""
    return [row for shard in shards for row in read_shard(shard.path)]


# ----------------------------------------------------------------------------------------------------
# Replicas and the orchestrator's loop


class ShardWorker:
    """One replica: loads the backend once (or takes what the caller has loaded) and draws shards."""

    def __init__(self, backend: Backend, loaded: tuple[Any, Any] | None = None, progress: bool = False):
        self.backend = backend
        self.loaded = loaded
        self.progress = progress  # a progress bar per shard (in process, on a terminal)

    def draw(self, shard) -> tuple[int, int]:
        """(shard index, rows written)."""
        # Loaded at the first shard, not in __init__: under Ray an error in a method reaches the orchestrator
        # with its cause (a UserError stays one line); one in an actor's constructor only as "the actor died".
        if self.loaded is None:
            self.loaded = self.backend.load()
        return shard.index, shard.draw(self.backend, self.loaded, self.progress)


def draw_shards(shards: Sequence, backend: Backend, *, local_worker: Callable[[], ShardWorker],
                log: Callable[[str], None] = lambda msg: None, total: int | None = None) -> None:
    """Draw `shards` (those not yet on disk, see `unfinished`) with the executor of backend.sampling.
    `local_worker` makes the in-process replica (the caller may already hold the model); called only if needed.
    `total`: questions of the whole stage, for the progress lines (default: those of `shards`)."""
    if not shards:
        return
    progress = Progress(shards, total, log)
    if backend.sampling.executor == "ray":
        draw_on_ray(shards, backend, progress)
        return
    if backend.sampling.executor == "launcher":
        draw_through_launcher(shards, backend, progress)
        return
    worker = local_worker()
    for shard in shards:
        progress.done(*worker.draw(shard))


class Progress:
    """`shard I: K/N questions sampled` as shards finish, K counting the questions of shards already on disk."""

    def __init__(self, shards: Sequence, total: int | None, log: Callable[[str], None]):
        pending = sum(len(s.prompts) for s in shards)
        self.total = pending if total is None else total
        self.count = self.total - pending
        self.log = log

    def done(self, index: int, rows: int) -> None:
        self.count += rows
        self.log(f"  shard {index}: {self.count}/{self.total} questions sampled")


def replica_resources(sampling: SamplingConfig) -> dict[str, float]:
    """What one replica reserves on the Ray cluster: its CPUs, and its GPUs (by default the GPUs its vLLM engine
    spans, none for the HF backend)."""
    gpus = sampling.ray_num_gpus
    if gpus is None:
        gpus = sampling.tensor_parallel_size if sampling.backend == "vllm" else 0
    return {"num_cpus": sampling.ray_num_cpus, "num_gpus": float(gpus)}


def check_fits(resources: dict[str, float], nodes: list[dict[str, float]]) -> None:
    """Refuse, in one line, a replica no node of the cluster can hold (Ray would wait for it forever). `nodes`:
    each live node's resources ({"CPU": 64.0, "GPU": 8.0, ...})."""
    for key, name, what in (("num_cpus", "CPU", "ray_num_cpus"), ("num_gpus", "GPU", "ray_num_gpus")):
        largest = max((node.get(name, 0.0) for node in nodes), default=0.0)
        if resources[key] > largest:
            raise UserError(f"sampling.{what}={resources[key]:g}: each replica asks for that many {name}s but the "
                            f"largest node of the Ray cluster has {largest:g}; lower sampling.{what} (or "
                            "tensor_parallel_size) or join a cluster whose nodes have them (sampling.ray_address)")


def node_resources(ray) -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(RAY_MISSING) from None
    return ray


def check_available(sampling: SamplingConfig) -> None:
    """At the start of a run, not after hours of other stages: executor ray needs Ray installed."""
    if sampling.executor == "ray":
        import_ray()


def connect(sampling: SamplingConfig):
    """The `ray` module, connected: to the cluster already joined in this process, to sampling.ray_address, or
    (None) to a new local cluster with this machine's CPUs and GPUs."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    # A cluster started here runs its workers at niceness 0: they do the stage's work, and Ray's default (15)
    # starves them behind every other process of a shared machine. A joined cluster keeps its own settings.
    system = {"worker_niceness": 0} if sampling.ray_address is None else None
    try:
        ray.init(address=sampling.ray_address, include_dashboard=False, _system_config=system)
    except ConnectionError as exc:
        raise UserError(f"sampling.ray_address={sampling.ray_address!r}: no Ray cluster to join "
                        f"({io.first_line(exc)}); start one with `ray start --head` or set sampling.ray_address=null "
                        "for a local one") from None
    return ray


def draw_on_ray(shards: Sequence, backend: Backend, progress: Progress) -> None:
    """data_parallel_size replicas (at most one per shard) as Ray actors; shards handed out as replicas free up."""
    from ray.util import ActorPool

    ray = connect(backend.sampling)
    resources = replica_resources(backend.sampling)
    check_fits(resources, node_resources(ray))
    replica = ray.remote(**resources)(ShardWorker)
    actors = [replica.remote(backend) for _ in range(min(backend.sampling.data_parallel_size, len(shards)))]
    progress.log(f"  {len(shards)} shard(s) on {len(actors)} Ray replica(s)")
    try:
        pool = ActorPool(actors)
        for index, rows in pool.map_unordered(lambda actor, shard: actor.draw.remote(shard), shards):
            progress.done(index, rows)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UserError):  # the user's to fix: one line, as in process
            raise UserError(str(cause)) from None
        raise
    finally:
        for actor in actors:
            ray.kill(actor)


# ----------------------------------------------------------------------------------------------------
# sampling.executor: launcher (the workers are east.executor_worker)

PLAN_FILE = "launcher-plan.json"
LOG_FILE = "launcher-worker.log"
SHARD_TYPES = {"sample": SampleShard, "eval": EvalShard}


def plan_json(shards: Sequence, backend: Backend) -> dict[str, Any]:
    """The shards to draw and the Backend, as JSON a worker process rebuilds them from (`plan_from_json`)."""
    kind = {cls: name for name, cls in SHARD_TYPES.items()}[type(shards[0])]
    return {"kind": kind, "backend": {"sampling": backend.sampling.model_dump(mode="json"),
                                      "model": backend.model.model_dump(mode="json"), "path": backend.path},
            "shards": [{**asdict(shard), "path": str(shard.path)} for shard in shards]}


def plan_from_json(plan: dict[str, Any]) -> tuple[list, Backend]:
    cls = SHARD_TYPES[plan["kind"]]
    tuples = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}  # JSON made them lists
    shards = [cls(**{k: Path(v) if k == "path" else tuple(v) if k in tuples else v for k, v in shard.items()})
              for shard in plan["shards"]]
    backend = plan["backend"]
    return shards, Backend(SamplingConfig.model_validate(backend["sampling"]),
                           ModelConfig.model_validate(backend["model"]), backend["path"])


def rank_shards(shards: Sequence, rank: int, world: int) -> list:
    """The shards process `rank` of `world` draws: every world-th of the plan from its rank on. By position in the
    plan (the shards still to draw), not by shard index, so a resumed stage's leftovers are spread evenly too."""
    return list(shards[rank::world])


def draw_through_launcher(shards: Sequence, backend: Backend, progress: Progress) -> None:
    """Run east.executor_worker under sampling.launcher on a plan of `shards`; then every shard must be on disk."""
    import shlex

    from east.pipeline import launched_exit_code, worker_error

    directory = shards[0].path.parent
    plan, log = directory / PLAN_FILE, directory / LOG_FILE
    io.write_json(plan, plan_json(shards, backend))
    command = [*shlex.split(backend.sampling.launcher), "-m", "east.executor_worker", str(plan)]
    progress.log(f"  {len(shards)} shard(s): {shlex.join(command)}  (log: {log})")
    code = launched_exit_code(command, log, "sampling.launcher")
    if code != 0:
        raise UserError(f"the sampling worker failed (exit {code}{worker_error(log)}); see {log}")
    missing = unfinished(shards)
    if missing:
        raise UserError(f"the sampling worker exited 0 but {len(missing)} shard(s) are not on disk (first: "
                        f"{missing[0].path}); see {log}")
    for shard in shards:
        progress.done(shard.index, len(shard.prompts))
