"""The run directory and the stages that fill it: questions -> sample -> grade -> weight -> select ->
train -> evaluate -> report, for every seed and arm of a config.

    east run configs/demo.yaml --out runs/demo

Layout of a run directory (every file is written atomically; a stage's manifest is written last):

    config.yaml                     the resolved config
    manifests/<stage>.json          one per finished stage: key, inputs, config, counts, seconds
    backbone/                       the bootstrapped tiny model (model.path: bootstrap)
    data/{train,test,ood}.jsonl     the questions
    default/eval-{split}.jsonl|json the untrained model's evaluation
    seed-<s>/shards/                sample shards, written as they complete (resume point)
    seed-<s>/samples.parquet        SampleSet rows
    seed-<s>/graded.parquet         GradedSet rows
    seed-<s>/<arm>/stats.parquet    QuestionStats rows (with the arm's weights)
    seed-<s>/<arm>/rows.parquet     training rows (TRL format + weight)
    seed-<s>/<arm>/model/           the trained model
    seed-<s>/<arm>/eval-{split}.*   per-question rows (.jsonl) and the summary (.json)
    results.json, results.md        the table (report.py)
    tensorboard/<scope>/, wandb/    with train.report_to: TensorBoard events, offline W&B runs (tracking.py)

A stage is skipped when its manifest's key matches the key computed from its config section and the
keys of the stages it reads, and its outputs are still what it wrote (size and sampled content, see
east.rundir); otherwise it is redone and the reason is printed ("output damaged: PATH" for damage).
A stage redone after damage hands on a key that changes only if its outputs' bytes changed, so the
stages after it are redone exactly when what they read is different.

That bookkeeping (manifests, stage keys, the lock, resuming a directory, finished shards) is
east.bookkeeping; this module holds the stages and the order they run in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from east import io, rundir
from east.bookkeeping import (Run, RunLock, check_out_dir, console, prepare_run_dir, shard_seed,
                              stage_key)
from east.config import GLOBAL_WEIGHTINGS, LOCAL_WEIGHTINGS, ArmConfig, RunConfig, SamplingConfig, expand_arms
from east.errors import UserError
from east.records import GradedSet, Question, QuestionStats, SampleSet
from east.tracking import Tracker


# ----------------------------------------------------------------------------------------------------
# Stages


def questions_path(run: Run, split: str) -> Path:
    return run.root / "data" / f"{split}.jsonl"


def read_questions(path: Path) -> list[Question]:
    return [Question.from_dict(row) for row in io.read_jsonl(path)]


def stage_questions(run: Run) -> None:
    from east.tasks.loaders import load_questions

    cfg = run.config.task
    splits = ["train", "test"] + (["ood"] if cfg.ood_arith is not None else [])
    outputs = [questions_path(run, s) for s in splits]

    def build():
        counts = {}
        for split, path in zip(splits, outputs):
            questions = load_questions(cfg, split, run.config.grading_kind())
            io.write_jsonl(path, [q.to_dict() for q in questions])
            counts[split] = len(questions)
        return counts

    config = cfg.model_dump(mode="json", exclude={"max_prompt_tokens"})  # applies to prompts (sample, evaluate)
    if run.config.grading.kind != "auto":  # the golds are checked against the grader (only then not the task's)
        config["grading_kind"] = run.config.grading_kind()
    run.stage("questions", config, [], outputs, build)


def model_path(run: Run) -> str:
    """Where the base model lives: the shipped backbone, a bootstrapped one, or the user's path / hub id."""
    path = run.config.model.path
    if path == "builtin":
        from east.backbone import builtin_checkpoint

        return str(builtin_checkpoint())
    if path == "bootstrap":
        return str(run.root / "backbone")
    return path


def stage_bootstrap(run: Run) -> None:
    """Train the tiny backbone into the run directory when model.path is 'bootstrap'."""
    if run.config.model.path != "bootstrap":
        return
    from east.backbone import bootstrap

    cfg = run.config.bootstrap
    out = run.root / "backbone"

    def build():
        bootstrap(out, **dict(cfg), **run.tracker.trainer_args("bootstrap"))
        return {"rows": cfg.n_rows}

    run.stage("bootstrap", cfg.record(), [], [out], build)


def base_dependencies(run: Run) -> list[str]:
    return ["bootstrap"] if run.config.model.path == "bootstrap" else []


def prompts_for(run: Run, tokenizer, questions: list[Question]) -> list[str]:
    from east.tasks.prompts import render_prompt

    shots = few_shot_examples(run)
    return [render_prompt(tokenizer, q, run.config.prompt.system, shots) for q in questions]


def fitting_prompts(run: Run, model, tokenizer, questions: list[Question], prompts: list[str],
                    split: str) -> tuple[list[Question], list[str], int]:
    """The questions whose prompt fits (task.max_prompt_tokens, else the model's context), their prompts and how
    many were skipped. A prompt too long is a one-line error naming its row unless task.skip_bad_rows: checked
    before sampling, since the sampler would otherwise try to allocate its cache (a 1 MB question: ~1 TB)."""
    limit, what = prompt_limit(run, model)
    if limit is None:
        return questions, prompts, 0
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if too_long and not run.config.task.skip_bad_rows:
        i = too_long[0]
        raise UserError(f"{questions_path(run, split)}:{i + 1}: question {questions[i].question_id} has a prompt of "
                        f"{lengths[i]} tokens, more than {what} ({limit}); shorten or remove it, or set "
                        "task.skip_bad_rows=true to skip such questions")
    if too_long:
        run.log(f"  {split}: skipped {len(too_long)} question(s) with a prompt over {limit} tokens ({what})")
    keep = [i for i, n in enumerate(lengths) if n <= limit]
    return [questions[i] for i in keep], [prompts[i] for i in keep], len(too_long)


def prompt_limit(run: Run, model) -> tuple[int | None, str]:
    if run.config.task.max_prompt_tokens is not None:
        return run.config.task.max_prompt_tokens, "task.max_prompt_tokens"
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return (context, "the model's context length") if isinstance(context, int) else (None, "")


def sampling_key(run: Run) -> dict[str, Any]:
    """The sampling section as part of a stage key, without settings left at a default that predates them and
    without where the samples are drawn (SamplingConfig.key_dump)."""
    return run.config.sampling.key_dump()


def evaluation_sampling_key(run: Run) -> dict[str, Any]:
    """The sampling settings evaluation's outputs depend on (it has no sampling section of its own: the backend, the
    stop strings, the matmul path, and top_p / top_k for its sampled metrics), each only when not the default, so
    the keys of run directories evaluated before they were part of it stay valid."""
    cfg, defaults = run.config.sampling, SamplingConfig()
    return {name: getattr(cfg, name) for name in ("backend", "stop", "gemm", "top_p", "top_k")
            if getattr(cfg, name) != getattr(defaults, name)}


def run_precision(run: Run) -> str:
    """"fp32" or "bf16": a model.dtype of float32 / bfloat16 says it (the config refuses a contradicting
    precision), else the precision setting, resolved for this machine."""
    from east.precision import resolve_precision

    named = {"float32": "fp32", "bfloat16": "bf16"}.get(run.config.model.dtype)
    return named or resolve_precision(run.config.precision)


def precision_key(run: Run) -> dict[str, str]:
    """The resolved precision as part of a stage key, only when it differs from what east used before the setting
    existed (so those run directories stay valid; a directory resumed on hardware that resolves `auto` otherwise
    redoes the stages it changes)."""
    from east.precision import previous_default

    precision = run_precision(run)
    return {} if precision == previous_default() else {"precision": precision}


def prompt_limit_key(run: Run) -> dict[str, int]:
    """The prompt limit as part of a stage key, only when set (keys of runs without it stay as they were)."""
    limit = run.config.task.max_prompt_tokens
    return {} if limit is None else {"max_prompt_tokens": limit}


def few_shot_examples(run: Run) -> list[Question]:
    k = run.config.prompt.few_shot
    if k == 0:
        return []
    from east.tasks.loaders import load_questions

    # Worked examples: the built-in task's labelled warm-up split, else training questions with solutions.
    split = "warmup" if run.config.task.name == "arith" else "train"
    pool = [q for q in load_questions(run.config.task, split) if q.solution]
    if len(pool) < k:
        raise UserError(f"prompt.few_shot={k} but the task has only {len(pool)} worked examples")
    return random.Random(0).sample(pool, k)


@dataclass(frozen=True)
class Cell:
    """One (seed, arm, iteration). Iteration 1 of every arm shares the seed's samples of the base model;
    iteration t > 1 samples from the arm's own model of iteration t - 1."""

    seed: int
    arm: ArmConfig | None = None  # None: the shared first-iteration samples
    iteration: int = 1

    @property
    def shared(self) -> bool:
        return self.iteration == 1

    def samples_name(self) -> str:
        if self.shared:
            return f"seed-{self.seed}"
        return f"seed-{self.seed}/{self.arm.label()}/iter-{self.iteration}"

    def arm_name(self) -> str:
        suffix = "" if self.iteration == 1 else f"/iter-{self.iteration}"
        return f"seed-{self.seed}/{self.arm.label()}{suffix}"

    def previous(self) -> Cell:
        return Cell(self.seed, self.arm, self.iteration - 1)

    def arm_seed(self) -> int:
        """The seed of the arm's own draws (selection, training order): iteration 1 keeps the plain seed,
        replicates get their own (ArmConfig.replicate)."""
        return self.seed * 1000 + self.iteration - 1 + 1_000_003 * self.arm.replicate

    def draw_seed(self, index: int) -> int:
        """The sampler seed of this cell's draw number `index` (a shard, or a DAST round)."""
        return shard_seed(self.seed * 1000 + self.iteration, index)


def samples_dir(run: Run, cell: Cell) -> Path:
    return run.root / cell.samples_name()


def arm_dir(run: Run, cell: Cell) -> Path:
    return run.root / cell.arm_name()


def policy(run: Run, cell: Cell) -> tuple[str, list[str]]:
    """The model a cell samples from, and the stages that produced it."""
    if cell.shared:
        return model_path(run), base_dependencies(run)
    prev = cell.previous()
    return str(arm_dir(run, prev) / "model"), [f"{prev.arm_name()}/train"]


def stage_sample(run: Run, cell: Cell) -> None:
    cfg = run.config.sampling
    out = samples_dir(run, cell) / "samples.parquet"
    shard_dir = out.parent / "shards"
    source, deps = policy(run, cell)
    key_config = {"sampling": sampling_key(run), "prompt": run.config.prompt.model_dump(mode="json"),
                  "model": run.config.model.model_dump(mode="json"), "seed": cell.seed, "iteration": cell.iteration,
                  **prompt_limit_key(run), **precision_key(run)}
    deps = ["questions", *deps]

    def build():
        from east import executor

        questions = read_questions(questions_path(run, "train"))
        backend = sampler(run, source)
        model, tokenizer = loaded_for_prompts(run, backend)
        questions, prompts, skipped = fitting_prompts(run, model, tokenizer, questions,
                                                      prompts_for(run, tokenizer, questions), "train")
        # Shards carry the fingerprint of everything that determines them, so a changed setting never
        # reuses a stale shard, and a resumed run keeps exactly the shards it finished (east.executor).
        fingerprint = stage_key(key_config, {d: run.key_of(d) for d in deps})
        executor.remove_stale(shard_dir, fingerprint)
        shards = executor.sample_shards([q.question_id for q in questions], prompts, size=cfg.shard_size, n=cfg.n,
                                        seed_of=cell.draw_seed, directory=shard_dir, fingerprint=fingerprint)
        executor.draw_shards(executor.unfinished(shards, run.log), backend, log=run.log, total=len(questions),
                             local_worker=lambda: executor.ShardWorker(backend, (model, tokenizer), console.is_terminal))
        rows = executor.merged_rows(shards)
        io.write_parquet(out, rows)
        tokens = sum(sum(r["num_tokens"]) for r in rows)
        counts = {"questions": len(rows), "samples": sum(len(r["responses"]) for r in rows), "tokens": tokens,
                  **sampler_choices(run, model)}
        return {**counts, "skipped_long_prompts": skipped} if skipped else counts

    run.stage(f"{cell.samples_name()}/sample", key_config, deps, [out], build)


def sampler_choices(run: Run, model) -> dict[str, str]:
    """For the manifest, where `auto` settings decided something: the precision and matmul path sampling used."""
    choices = {}
    if run.config.precision == "auto":
        choices["precision"] = run_precision(run)
    if run.config.sampling.gemm == "auto" and run.config.sampling.backend == "hf" and is_fp32_cpu(model):
        from east.sampling.onednn import resolve_gemm

        choices["gemm"] = resolve_gemm(model, "auto")  # timed once per process and model shape: this reads the choice
    return choices


def is_fp32_cpu(model) -> bool:
    """Whether `sampling.gemm` applies to this model: fp32 weights on CPU (bf16 products have one path)."""
    import torch

    return getattr(model, "device", None) == torch.device("cpu") and getattr(model, "dtype", None) == torch.float32


def generate(run: Run, model, tokenizer, prompts: list[str], n: int, *, seed: int, temperature: float | None = None,
             max_new_tokens: int | None = None, token_budget: int | None = None):
    """n samples per prompt with the configured backend, in this process; settings not given come from the
    sampling section."""
    return sampler(run, "").draw((model, tokenizer), prompts, n, seed=seed, temperature=temperature,
                                 max_new_tokens=max_new_tokens, token_budget=token_budget, progress=console.is_terminal)


def sampler(run: Run, path: str):
    """The configured backend for the model at `path`, as east.executor's replicas load it: model.dtype resolved
    from `precision` here, so every replica loads what this machine would."""
    return backend_for(run.config, path)


def backend_for(config: RunConfig, path: str):
    """`sampler` for a config without a run directory (east.backbone.competence)."""
    from east.executor import Backend
    from east.precision import model_dtype, resolve_precision

    model = config.model
    if model.dtype == "auto":
        model = model.model_copy(update={"dtype": model_dtype(resolve_precision(config.precision))})
    return Backend(config.sampling, model, path)


def loaded_for_prompts(run: Run, backend) -> tuple[Any, Any]:
    """In process: the model (it draws here too) and its tokenizer. Under Ray the replicas hold the model; the
    orchestrator needs only the tokenizer and the model's context length to render and check prompts (so too under
    sampling.launcher, whose processes hold it)."""
    return backend.load_for_prompts() if run.config.sampling.executor != "local" else backend.load()


def grade_sets(run: Run, sample_sets: list[SampleSet], golds: dict[str, str]) -> tuple[list[GradedSet], dict]:
    from east.grading import grade_sample_sets

    cfg = run.config.grading
    return grade_sample_sets(sample_sets, golds, run.config.grading_kind(), timeout=cfg.timeout, workers=cfg.workers,
                             verify_steps=cfg.verify_steps)


def train_golds(run: Run) -> dict[str, str]:
    return {q.question_id: q.gold for q in read_questions(questions_path(run, "train"))}


def stage_grade(run: Run, cell: Cell) -> None:
    base = samples_dir(run, cell)
    out = base / "graded.parquet"

    def build():
        sample_sets = [SampleSet.from_dict(r) for r in io.read_parquet(base / "samples.parquet")]
        graded, counts = grade_sets(run, sample_sets, train_golds(run))
        io.write_parquet(out, [g.to_dict() for g in graded])
        return dict(counts)

    grading = run.config.grading.model_dump(mode="json")
    if not grading["verify_steps"]:
        del grading["verify_steps"]  # so run directories graded before the option existed stay valid
    cfg = {"grading": grading, "kind": run.config.grading_kind()}
    run.stage(f"{cell.samples_name()}/grade", cfg, [f"{cell.samples_name()}/sample", "questions"], [out], build)


def read_graded(path: Path) -> list[GradedSet]:
    return [GradedSet.from_dict(r) for r in io.read_parquet(path)]


# ----------------------------------------------------------------------------------------------------
# DAST augmentation: more (DAST-P) or longer (DAST-L) correct responses for harder questions


def augmented_name(cell: Cell, data: str) -> str:
    return f"{cell.samples_name()}/{data}"


def graded_input(run: Run, cell: Cell) -> tuple[Path, str]:
    """The graded sets an arm trains from (augmented for DAST arms) and the stage that wrote them."""
    if cell.arm.data == "vanilla":
        return samples_dir(run, cell) / "graded.parquet", f"{cell.samples_name()}/grade"
    return samples_dir(run, cell) / f"graded-{cell.arm.data}.parquet", augmented_name(cell, cell.arm.data)


def levels_path(run: Run, cell: Cell, data: str) -> Path:
    return samples_dir(run, cell) / f"levels-{data}.json"


def greedy_verdicts(run: Run, model, tokenizer, questions: list[Question], prompts: list[str]) -> dict[str, bool]:
    generations = generate(run, model, tokenizer, prompts, 1, temperature=0.0, seed=0)
    sets = [g.to_sample_set(q.question_id, p) for q, p, g in zip(questions, prompts, generations)]
    graded, _ = grade_sets(run, sets, {q.question_id: q.gold for q in questions})
    return {g.question_id: bool(g.correct[0]) for g in graded}


def stage_augment(run: Run, cell: Cell) -> None:
    """DAST-P / DAST-L data for a cell, shared by every arm of the cell that uses the same data."""
    from east import dast

    data = cell.arm.data
    out, _ = graded_input(run, cell)
    levels_out = levels_path(run, cell, data)
    cfg = run.config.dast
    source, deps = policy(run, cell)

    def build():
        graded = read_graded(samples_dir(run, cell) / "graded.parquet")
        questions = {q.question_id: q for q in read_questions(questions_path(run, "train"))}
        model, tokenizer = load_model_and_tokenizer(run, source)
        greedy = None
        if cfg.use_greedy:
            qs = [questions[g.question_id] for g in graded]
            greedy = greedy_verdicts(run, model, tokenizer, qs, [g.prompt for g in graded])
        levels = dast.question_levels(graded, cfg, greedy)
        if data == "dast_p":
            merged, report = dast.dast_p_rounds(graded, cfg, sample_more_fn(run, cell, model, tokenizer, questions, graded), levels=levels)
        else:
            merged, report = dast_l_merge(run, cell, model, tokenizer, questions, graded, levels)
        io.write_parquet(out, [g.to_dict() for g in merged])
        io.write_json(levels_out, {"levels": levels, "histogram": dast.level_histogram(levels), "report": report})
        return {"histogram": dast.level_histogram(levels), "report": report}

    config = {"dast": cfg.model_dump(mode="json"), "data": data, "sampling": sampling_key(run),
              "seed": cell.seed, "iteration": cell.iteration, **precision_key(run)}
    run.stage(augmented_name(cell, data), config, [f"{cell.samples_name()}/grade", "questions", *deps], [out, levels_out], build)


def sample_more_fn(run: Run, cell: Cell, model, tokenizer, questions: dict[str, Question], graded: list[GradedSet]):
    prompts = {g.question_id: g.prompt for g in graded}  # the exact first-round prompts
    golds = {qid: q.gold for qid, q in questions.items()}

    def sample_more(ids: list[str], n: int, round_index: int) -> list[GradedSet]:
        generations = generate(run, model, tokenizer, [prompts[i] for i in ids], n,
                               seed=cell.draw_seed(1_000_000 + round_index))
        sets = [g.to_sample_set(i, prompts[i]) for i, g in zip(ids, generations)]
        return grade_sets(run, sets, golds)[0]

    return sample_more


def dast_l_merge(run: Run, cell: Cell, model, tokenizer, questions, graded, levels):
    from east import dast
    from east.tasks.loaders import load_questions
    from east.tasks.prompts import render_prompt

    cfg = run.config.dast
    if run.config.task.name != "arith":
        raise UserError("DAST-L needs labelled worked examples; only the built-in arith task has them so far")
    pool = [q for q in load_questions(run.config.task, "warmup") if q.solution]
    shots = dast.long_few_shot_examples(pool, cfg.few_shot, seed=0)
    ids = dast.long_prompt_questions(levels, cfg)
    long_sets: list[SampleSet] = []
    if ids:
        prompts = [render_prompt(tokenizer, questions[i], run.config.prompt.system, shots) for i in ids]
        generations = generate(run, model, tokenizer, prompts, cfg.n_long, seed=cell.draw_seed(2_000_000))
        long_sets = [g.to_sample_set(i, p) for i, p, g in zip(ids, prompts, generations)]
        io.write_parquet(samples_dir(run, cell) / "samples-dast_l.parquet", [s.to_dict() for s in long_sets])
    graded_long = grade_sets(run, long_sets, {i: questions[i].gold for i in ids})[0] if long_sets else []
    merged = dast.merge_long(graded, graded_long, levels, cfg)
    return merged, {"long_questions": len(ids), "few_shot_steps": [q.meta.get("steps") for q in shots],
                    "lengths": dast.length_report(graded, merged, levels)}


# ----------------------------------------------------------------------------------------------------
# Per-arm stages


def weighting_args(run: Run, arm: ArmConfig) -> dict[str, Any]:
    return stats_args(run.config, arm)


def stats_args(config: RunConfig, arm: ArmConfig) -> dict[str, Any]:
    """Arguments of `question_stats`: the arm's signal and mapping, or uniform for vanilla and local arms.

    DAST arms keep all-correct questions (they get base_target rows), see east.dast. `official_filter`
    appears only when set, so the weight stages of runs made before it existed keep their keys."""
    keep_all_correct = config.filter.keep_all_correct or arm.data != "vanilla"
    common = {"epsilon": config.filter.epsilon, "keep_all_correct": keep_all_correct}
    if config.selection.official_filter:
        common["official_filter"] = True
    if arm.weighting in GLOBAL_WEIGHTINGS:
        return {"signal": arm.weighting, "mapping": arm.mapping, "a": float(arm.a), "linear_range": arm.linear_range, **common}
    return {"signal": "entropy", "mapping": "uniform", "a": 1.0, "linear_range": None, **common}


def stage_weight(run: Run, cell: Cell) -> None:
    from east.weighting import question_stats, summarise

    out = arm_dir(run, cell) / "stats.parquet"
    graded_path, graded_stage = graded_input(run, cell)
    args = weighting_args(run, cell.arm)

    def build():
        graded = read_graded(graded_path)  # outside the try: a damaged file is not the arm's fault
        try:
            stats = question_stats(graded, **args)
        except ValueError as exc:
            raise UserError(f"arm {cell.arm.label()}: {exc}") from None
        levels = difficulty_levels(run, cell, stats)
        io.write_parquet(out, [{**s.to_dict(), "level": levels[s.question_id]} for s in stats])
        return summarise(stats)

    cuts = {k: getattr(run.config.dast, k) for k in ("easy_above", "medium_from", "hard_above")}
    config = {**args, "level_cuts": cuts}
    run.stage(f"{cell.arm_name()}/weight", config, [graded_stage], [out], build)


def difficulty_levels(run: Run, cell: Cell, stats: list[QuestionStats]) -> dict[str, str]:
    """DAST levels of the sampling model: for DAST arms those of its first round, else from sampled accuracy."""
    from east.weighting.difficulty import difficulty_levels as levels_of

    if cell.arm.data != "vanilla":
        return io.read_json(levels_path(run, cell, cell.arm.data))["levels"]
    return levels_of(stats, None, run.config.dast.cuts())


def stage_select(run: Run, cell: Cell) -> None:
    from east import dast, selection

    arm = cell.arm
    directory = arm_dir(run, cell)
    out = directory / "rows.parquet"
    cfg = run.config.selection
    graded_path, graded_stage = graded_input(run, cell)
    seed = cell.arm_seed()

    def build():
        graded = read_graded(graded_path)
        stats = [QuestionStats.from_dict(r) for r in io.read_parquet(directory / "stats.parquet")]
        counts: dict[str, Any] = {}
        if arm.data == "dast_p":
            levels = io.read_json(levels_path(run, cell, "dast_p"))["levels"]
            if arm.loss == "sft":
                rows = dast.dast_p_sft_rows(graded, stats, levels, run.config.dast, seed=seed, boxed_only=cfg.boxed_only)
            else:
                rows, counts = dast.dast_p_dpo_rows(graded, stats, levels, run.config.dast, seed=seed, boxed_only=cfg.boxed_only)
        elif arm.loss == "sft":
            rows = selection.sft_rows(graded, stats, mode=cfg.mode, seed=seed, boxed_only=cfg.boxed_only)
        elif arm.loss == "dpo":
            rows, counts = selection.dpo_rows(graded, stats, pairs_per_question=cfg.pairs_per_question, seed=seed,
                                              boxed_only=cfg.boxed_only)
        else:
            rows, counts = selection.kto_rows(graded, stats, seed=seed, boxed_only=cfg.boxed_only)
        if not rows:
            raise UserError(f"arm {arm.label()}: no training rows left after selection ({counts}); "
                            "sample more (sampling.n) or relax filter/selection")
        io.write_parquet(out, rows)
        return {"rows": len(rows), **counts}

    # official_filter acts in the weight stage (an input here): keeping it out leaves older runs' keys alone.
    config = {"selection": cfg.model_dump(mode="json", exclude={"official_filter"}), "loss": arm.loss,
              "data": arm.data, "seed": seed}
    if arm.data == "dast_p":
        config["dast"] = run.config.dast.model_dump(mode="json")
    run.stage(f"{cell.arm_name()}/select", config, [graded_stage, f"{cell.arm_name()}/weight"], [out], build)


def stage_train(run: Run, cell: Cell) -> None:
    from east.training import train

    arm = cell.arm
    directory = arm_dir(run, cell)
    out = directory / "model"
    cfg = run.config.train
    hyper = getattr(cfg, arm.loss)
    if cell.shared or run.config.train_from == "base":
        start, deps = model_path(run), base_dependencies(run)
    else:
        start, deps = policy(run, cell)
    args = {
        "loss": arm.loss,
        "local_weighting": arm.weighting if arm.weighting in LOCAL_WEIGHTINGS else None,
        "learning_rate": hyper.learning_rate,
        "beta": hyper.beta,
        "num_train_epochs": cfg.epochs,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "warmup_ratio": cfg.warmup_ratio,
        "max_length": cfg.max_length,
        "lr_scheduler_type": cfg.lr_scheduler,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "trust_remote_code": run.config.model.trust_remote_code,
        "logging_steps": cfg.logging_steps,
        "save_steps": cfg.save_steps,
        "lora": cfg.lora.model_dump() if cfg.lora else None,
        "seed": cell.seed + 1_000_003 * arm.replicate,
        **train_speed_args(run),
    }

    def build():
        rows = io.read_parquet(directory / "rows.parquet")
        # Tracking arguments stay out of `args`: they change no result, so they must not change the stage key.
        tracking = run.tracker.trainer_args(f"{cell.arm_name()}/train")
        if cfg.launcher:
            return {"rows": len(rows), **train_through_launcher(run, cell, start, args, tracking)}
        train(rows, start, directory, resume=True, **args, **tracking)
        return {"rows": len(rows)}

    config = {**args, "train_from": run.config.train_from if not cell.shared else "base"}
    if cfg.launcher:  # its processes multiply the global batch; absent when unset, so older keys stay valid
        config["launcher"] = cfg.launcher
    run.stage(f"{cell.arm_name()}/train", config, [f"{cell.arm_name()}/select", *deps], [out], build)


def train_through_launcher(run: Run, cell: Cell, start: str, args: dict[str, Any], tracking: dict[str, Any]) -> dict:
    """Run east.training.worker for the cell under `train.launcher` and check what it wrote; the counts it reports.

    This process keeps the run directory's lock and writes the manifest; the worker's output goes to its log file,
    named (with its last error line) in the one-line error if it fails."""
    import shlex
    import sys

    from east.training import worker

    directory = arm_dir(run, cell)
    io.write_json(worker.spec_path(directory), {"start": start, "args": args,
                                                "tracking": {k: str(v) if isinstance(v, Path) else v
                                                             for k, v in tracking.items()}})
    log = directory / worker.LOG_FILE
    (directory / "train_metrics.json").unlink(missing_ok=True)  # an earlier run's must not pass for this one's
    command = [*shlex.split(run.config.train.launcher), "-m", "east.training.worker", str(run.root), cell.arm_name()]
    run.log(f"  {shlex.join(command)}  (log: {log})")
    code = launched_exit_code(command, log, "train.launcher",
                              f" (e.g. {sys.executable} -m accelerate.commands.launch ...)")
    if code != 0:
        raise UserError(f"arm {cell.arm.label()}: the training worker failed (exit {code}{worker_error(log)}); "
                        f"see {log}")
    return launched_counts(cell, directory, log)


def launched_exit_code(command: list[str], log: Path, key: str, hint: str = "") -> int:
    """The exit code of a launcher command run with its output in `log`, killed if `east` dies; a launcher program
    that does not exist is a one-line error naming the config key."""
    import subprocess

    with open(log, "w") as handle:
        try:
            return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  preexec_fn=die_with_parent).returncode
        except FileNotFoundError:
            raise UserError(f"{key}: {command[0]!r} not found; install it or give its full path{hint}") from None


def die_with_parent() -> None:
    """In the launcher's process before it starts (Linux): SIGTERM it when `east run` dies, even by SIGKILL, so a
    rerun never trains beside an orphaned worker in the same directory (torchrun passes SIGTERM to its workers)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: an orphaned worker finishes on its own


def worker_error(log: Path) -> str:
    """': <message>' from the worker log's last "error:" line (a UserError in the worker), else ''."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error: ")]
    return f": {lines[-1][len('error: '):]}" if lines else ""


def launched_counts(cell: Cell, directory: Path, log: Path) -> dict[str, Any]:
    """What a worker that exited 0 must have written: non-empty weights and its metrics (processes it ran on)."""
    weights = [p for p in (directory / "model").glob("*.safetensors") if p.stat().st_size > 0]
    metrics_path = directory / "train_metrics.json"
    if not weights or not metrics_path.is_file():
        raise UserError(f"arm {cell.arm.label()}: the training worker exited 0 but wrote no "
                        f"{'model weights' if not weights else 'train_metrics.json'} in {directory}; see {log}")
    settings = io.read_json(metrics_path).get("settings", {})
    return {"processes": settings.get("processes"), "distributed_type": settings.get("distributed_type")}
def train_speed_args(run: Run) -> dict[str, Any]:
    """The speed settings of training, only where they differ from east's behaviour before they existed (they are
    part of the stage key: run directories trained before keep their keys)."""
    args: dict[str, Any] = {}
    if precision_key(run):
        args["precision"] = run_precision(run)
    if run.config.train.group_by_length:
        args["group_by_length"] = True
    return args


def eval_splits(run: Run) -> list[str]:
    return ["test"] + (["ood"] if run.config.task.ood_arith is not None else [])


def stage_evaluate(run: Run, name: str, path_of_model: str, deps: list[str], directory: Path) -> None:
    from east.evaluation import evaluate

    cfg = run.config.evaluation
    for split in eval_splits(run):
        rows_path = directory / f"eval-{split}.jsonl"
        summary_path = directory / f"eval-{split}.json"
        config = {"evaluation": cfg.model_dump(mode="json"), "prompt": run.config.prompt.model_dump(mode="json"),
                  "split": split, "kind": run.config.grading_kind(), **prompt_limit_key(run), **precision_key(run),
                  **evaluation_sampling_key(run)}

        def build(split=split, rows_path=rows_path, summary_path=summary_path, config=config):
            questions = read_questions(questions_path(run, split))
            backend = sampler(run, path_of_model)
            model, tokenizer = loaded_for_prompts(run, backend)
            questions, prompts, skipped = fitting_prompts(run, model, tokenizer, questions,
                                                          prompts_for(run, tokenizer, questions), split)
            if run.config.sampling.executor != "local":
                fingerprint = stage_key(config, {d: run.key_of(d) for d in deps + ["questions"]})
                rows, summary = sharded_evaluation(run, backend, questions, prompts,
                                                   directory / f"eval-{split}-shards", fingerprint)
            else:
                rows, summary = evaluate(
                    questions, prompts,
                    lambda ps, n, temperature, seed: generate(run, model, tokenizer, ps, n, temperature=temperature,
                                                              seed=seed, max_new_tokens=cfg.max_new_tokens,
                                                              token_budget=cfg.token_budget),
                    kind=run.config.grading_kind(), k=cfg.k, k_temperature=cfg.temperature,
                    timeout=run.config.grading.timeout,
                )
            if skipped:
                summary["skipped_long_prompts"] = skipped
            io.write_jsonl(rows_path, rows)
            io.write_json(summary_path, summary)
            return summary

        run.stage(f"{name}/evaluate-{split}", config, deps + ["questions"], [rows_path, summary_path], build)


def sharded_evaluation(run: Run, backend, questions: list[Question], prompts: list[str], shard_dir: Path,
                       fingerprint: str) -> tuple[list[dict], dict]:
    """`evaluate`'s rows and summary, drawn in shards by the executor's replicas (finished shards kept)."""
    from east import executor
    from east.evaluation import summary_of

    cfg = run.config.evaluation
    executor.remove_stale(shard_dir, fingerprint)
    shards = executor.eval_shards([q.to_dict() for q in questions], prompts, size=run.config.sampling.shard_size,
                                  directory=shard_dir, fingerprint=fingerprint, kind=run.config.grading_kind(), k=cfg.k,
                                  k_temperature=cfg.temperature, timeout=run.config.grading.timeout,
                                  max_new_tokens=cfg.max_new_tokens, token_budget=cfg.token_budget)
    executor.draw_shards(executor.unfinished(shards, run.log), backend, log=run.log, total=len(questions),
                         local_worker=lambda: executor.ShardWorker(backend))
    rows = executor.merged_rows(shards)
    return rows, summary_of(rows, cfg.k)


def load_model_and_tokenizer(run: Run, path: str):
    """The sampling model: an HF model, or for backend vllm a `vllm.LLM` (with its tokenizer for prompts)."""
    return sampler(run, path).load()


# ----------------------------------------------------------------------------------------------------
# The whole run

STAGES = ("bootstrap", "sample", "grade", "weight", "train", "evaluate", "report")


def run_pipeline(config: RunConfig, root: Path, until: str = "report") -> Run:
    """Run every stage up to `until` for every seed, arm and iteration, skipping what is already done."""
    if until not in STAGES:
        raise UserError(f"unknown stage {until!r}; one of {', '.join(STAGES)}")
    check_out_dir(root)
    from east.executor import check_available

    check_available(config.sampling)  # sampling.executor=ray without Ray: now, not after the first stages
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    with RunLock(root), Tracker.open(config, root) as tracker:
        removed = rundir.remove_dead_temporaries(root)
        if removed:
            console.print(f"removed {len(removed)} temporary file(s) left by a process that was killed", highlight=False)
        run = prepare_run_dir(config, root)
        run.tracker = tracker
        run_stages(run, STAGES.index(until))
        if until == "report":
            from east.report import write_report

            tracker.results(write_report(root))
        return run


def plan_run(config: RunConfig, root: Path, *, full: bool = False) -> Run:
    """What `east run` would do with this config, without doing it: `Run.stale` maps every stage that would
    be (re)done to the reason, `Run.skipped` lists the finished ones; full=True reads every output whole."""
    run = Run(config=config, root=root, log=lambda msg: None, dry=True, full=full)
    run_stages(run, STAGES.index("evaluate"))
    return run


def run_stages(run: Run, stop: int) -> None:
    stage_bootstrap(run)
    if stop == 0:
        return
    stage_questions(run)
    if stop >= STAGES.index("evaluate"):
        stage_evaluate(run, "default", model_path(run), base_dependencies(run), run.root / "default")
    for seed in run.config.seeds:
        run_seed(run, seed, stop)


def run_seed(run: Run, seed: int, stop: int) -> None:
    arms = expand_arms(run.config.arms)
    iterations = run.config.iterations if stop >= STAGES.index("train") else 1
    for iteration in range(1, iterations + 1):
        if iteration == 1:  # every arm starts from the same samples of the base model
            sample_and_grade(run, Cell(seed), stop)
        if stop < STAGES.index("weight"):
            continue
        for arm in arms:
            cell = Cell(seed, arm, iteration)
            if iteration > 1:
                sample_and_grade(run, cell, stop)
            train_and_evaluate(run, cell, stop)


def sample_and_grade(run: Run, cell: Cell, stop: int) -> None:
    stage_sample(run, cell)
    if stop >= STAGES.index("grade"):
        stage_grade(run, cell)


def train_and_evaluate(run: Run, cell: Cell, stop: int) -> None:
    if cell.arm.data != "vanilla":
        stage_augment(run, cell)
    stage_weight(run, cell)
    stage_select(run, cell)
    if stop >= STAGES.index("train"):
        stage_train(run, cell)
    if stop >= STAGES.index("evaluate"):
        stage_evaluate(run, cell.arm_name(), str(arm_dir(run, cell) / "model"), [f"{cell.arm_name()}/train"],
                       arm_dir(run, cell))
