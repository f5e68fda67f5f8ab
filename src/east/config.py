"""Run configuration: pydantic models, one section per stage, loaded from YAML plus dotted overrides.

    east run configs/demo.yaml sampling.n=32 'arms=[{name: east, weighting: entropy, a: 1.5}]'

Every model forbids unknown keys, so a typo is an error that names the key. The resolved config is
saved as `config.yaml` in the run directory; stage manifests hash their own section of it, so a
changed setting re-runs exactly the stages it affects.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from east.backbone.bootstrap import BootstrapSettings
from east.dast import DastConfig
from east.errors import UserError
from east.tasks.arith import ArithSpec

Loss = Literal["sft", "dpo", "kto"]
Weighting = Literal["none", "entropy", "accuracy", "rejection", "lw_p", "lw_w"]
GLOBAL_WEIGHTINGS = ("entropy", "accuracy", "rejection")  # per-question weights computed before training
LOCAL_WEIGHTINGS = ("lw_p", "lw_w")  # per-row weights computed by the trainer from the policy


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def digest(self) -> str:
        """A stable hash of this section, for stage manifests."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class TaskConfig(Section):
    name: Literal["arith", "gsm8k", "math", "jsonl"] = Field("arith", description="Where questions come from.")
    seed: int = Field(0, description="Seed of the built-in task's generator (arith).")
    arith: ArithSpec = Field(default_factory=ArithSpec, description="Difficulty of the built-in task.")
    ood_arith: ArithSpec | None = Field(
        None, description="A harder arith variant evaluated as out-of-domain (None: no OOD evaluation)."
    )
    train_size: int | None = Field(400, ge=1, description="Self-training questions (None: the whole split).")
    test_size: int | None = Field(300, ge=1, description="Test questions (None: the whole split).")
    # gsm8k / math / jsonl
    train_path: str | None = Field(None, description="Local JSONL/Parquet file or hub id of the training split.")
    test_path: str | None = Field(None, description="Local JSONL/Parquet file or hub id of the test split.")
    hub_config: str | None = Field(None, description="Hub dataset config name, e.g. 'main' for openai/gsm8k.")
    question_field: str = Field("question", description="jsonl: the field holding the question.")
    answer_field: str = Field("answer", description="jsonl: the field holding the gold answer.")
    skip_bad_rows: bool = Field(False, description="Skip (and count) rows without a usable gold, with a non-number gold "
                                "under number-based grading, or with a prompt too long, instead of failing.")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Refuse (or with skip_bad_rows skip) questions whose "
                                          "prompt is longer (None: the model's context length).")


class ModelConfig(Section):
    path: str = Field(
        "builtin",
        description="'builtin' (the shipped tiny backbone), 'bootstrap' (train the tiny backbone in the run "
        "directory), an HF hub id or a local path.",
    )
    trust_remote_code: bool = Field(False, description="Allow code from the model repository to run.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")


class PromptConfig(Section):
    system: str | None = Field(None, description="System message (paper: 'Please reason step by step, ...').")
    few_shot: int = Field(0, ge=0, description="Worked examples from the labelled split put before each question.")


# Where sampling runs, not what it draws (SamplingConfig.key_dump leaves them out of stage keys).
PLACEMENT_KEYS = {"executor", "data_parallel_size", "ray_address", "ray_num_cpus", "ray_num_gpus", "launcher"}


class SamplingConfig(Section):
    backend: Literal["hf", "vllm"] = "hf"
    n: int = Field(16, ge=1, description="Samples per training question (paper: 128).")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: no top-k cut.")
    max_new_tokens: int = Field(64, ge=1)
    seed: int = Field(0, description="vllm only: the engine's seed. What every backend draws is set by the run's "
                      "`seeds` (each seed, iteration and shard gets its own sampler seed), so this does not change "
                      "the hf sampler's samples; to draw other samples, use other seeds.")
    token_budget: int = Field(65536, ge=64, description="Tokens held in the KV cache at once (sets the batch).")
    stop: list[str] = Field(default_factory=list, description="Stop strings (EOS always stops).")
    shard_size: int = Field(64, ge=1, description="Questions per shard written to disk (resume granularity).")
    gemm: Literal["onednn", "torch", "auto"] = Field(
        "onednn", description="hf backend on CPU, fp32: the linear layers' matmul. onednn (the default, whose samples "
        "existing runs hold), torch's own matmul, or auto: time both on the model's shapes at first use and take the "
        "faster (east.sampling.onednn). The paths agree up to float rounding.")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm only: GPUs each vLLM engine spans.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vllm only.")
    executor: Literal["local", "ray", "launcher"] = Field(
        "local", description="Where sample and evaluation shards run: in this process, on Ray actors "
        "(east.executor; needs east-selftrain[distributed]), or in the processes of sampling.launcher "
        "(east.executor_worker). The samples are the same either way.")
    data_parallel_size: int = Field(1, ge=1, description="executor ray: replicas of the sampler (Ray actors), each "
                                    "loading the model once and drawing whole shards.")
    ray_address: str | None = Field(None, description="executor ray: the cluster to join ('auto': the one `ray start` "
                                    "made on this node; None: start a local one).")
    ray_num_cpus: float = Field(1.0, gt=0, description="executor ray: CPUs each replica reserves.")
    ray_num_gpus: float | None = Field(None, ge=0, description="executor ray: GPUs each replica reserves (None: "
                                       "tensor_parallel_size for vllm, 0 for hf).")
    launcher: str | None = Field(None, min_length=1, description="executor launcher: the command that starts the "
                                 "sampling processes, run as `<launcher> -m east.executor_worker PLAN` (e.g. "
                                 "'torchrun --nproc_per_node 8'); each process (RANK of WORLD_SIZE) draws its share "
                                 "of the shards.")

    @model_validator(mode="after")
    def _replicas_need_ray(self) -> SamplingConfig:
        if self.data_parallel_size > 1 and self.executor != "ray":
            raise ValueError(f"sampling.data_parallel_size={self.data_parallel_size} runs that many Ray replicas; set "
                             "sampling.executor=ray (with east-selftrain[distributed]) or data_parallel_size=1")
        if self.executor == "launcher" and self.launcher is None:
            raise ValueError("sampling.executor=launcher needs sampling.launcher, the command that starts the "
                             "processes (e.g. 'torchrun --nproc_per_node 8'); or set sampling.executor=local")
        if self.launcher is not None and self.executor != "launcher":
            raise ValueError(f"sampling.launcher is used only by sampling.executor=launcher (it is {self.executor}); "
                             "set sampling.executor=launcher or remove sampling.launcher")
        return self

    def key_dump(self) -> dict[str, Any]:
        """The settings that determine the samples, for stage keys: where and on how many replicas they are drawn
        does not change them, so a run resumed in process, or on another cluster, keeps its finished stages. gemm
        appears only when not the default (run directories sampled before the key existed keep their keys)."""
        return self.model_dump(mode="json", exclude=PLACEMENT_KEYS | ({"gemm"} if self.gemm == "onednn" else set()))


class GradingConfig(Section):
    kind: Literal["auto", "arith", "gsm8k", "math"] = Field("auto", description="auto: the task's own grader.")
    timeout: float = Field(5.0, gt=0, description="Seconds per symbolic comparison before it counts as wrong.")
    workers: int | None = Field(None, ge=1, description="Symbolic grading processes (None: CPU count).")
    verify_steps: bool = Field(
        False, description="Built-in arith task only: a training sample is correct only when every equation line of "
        "its working checks out, besides its final answer (east.grading.steps). Evaluation stays answer-only.")


class FilterConfig(Section):
    keep_all_correct: bool = Field(False, description="Keep questions whose samples are all correct (h = 0).")
    epsilon: float = Field(0.0, ge=0, description="Added to the signal before mapping (lets h = 0 pass a <= 0).")


class SelectionConfig(Section):
    mode: Literal["one", "all_distinct"] = Field("one", description="SFT: one random correct response per question, or all distinct ones.")
    pairs_per_question: int = Field(1, ge=1, description="DPO: pairs per question.")
    boxed_only: bool = Field(False, description="Keep only responses with a \\boxed{} answer (official preprocessing).")
    official_filter: bool = Field(
        False, description="Parity with the official EAST preprocessing: also drop (before weighting, so the "
        "normaliser sees the same questions) questions without a correct response containing \\boxed, and "
        "questions whose incorrect responses all lack \\boxed (e.g. the only wrong samples have no answer).")


class LossHyper(Section):
    learning_rate: float = Field(gt=0)
    beta: float | None = Field(None, gt=0, description="DPO / KTO temperature.")


class LoraConfig(Section):
    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    merge: bool = Field(True, description="Merge the adapter into the saved model.")


class TrainConfig(Section):
    epochs: float = Field(3.0, gt=0)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_length: int | None = Field(1024, ge=8)
    lr_scheduler: str = "linear"
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large models on GPU).")
    logging_steps: int = Field(10, ge=1)
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every k steps (resume point).")
    launcher: str | None = Field(None, min_length=1, description="Run each train stage as `<launcher> -m east.training.worker RUN_DIR "
                                 "ARM`, e.g. 'accelerate launch --config_file configs/accelerate/zero3.yaml' (None: in "
                                 "this process). batch_size is per process: the global batch is processes x batch_size "
                                 "x grad_accum.")
    lora: LoraConfig | None = None
    group_by_length: bool = Field(
        False, description="SFT only: batches of rows of similar length (transformers' LengthGroupedSampler), so "
        "less of each batch is padding. Same rows per epoch, another order.")
    report_to: list[Literal["none", "tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["none"], description="Experiment trackers for the trainers and the run-level "
        "metrics (east.tracking); needs east-selftrain[tracking].")
    sft: LossHyper = Field(default_factory=lambda: LossHyper(learning_rate=2e-6))
    dpo: LossHyper = Field(default_factory=lambda: LossHyper(learning_rate=2e-7, beta=0.01))
    kto: LossHyper = Field(default_factory=lambda: LossHyper(learning_rate=2e-7, beta=0.05))

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("report_to")
    @classmethod
    def _none_alone(cls, value: list[str]) -> list[str]:
        if not value or ("none" in value and len(value) > 1):
            raise ValueError("give 'none' alone, or one or more of tensorboard, wandb")
        return value


class EvaluationConfig(Section):
    max_new_tokens: int = Field(64, ge=1)
    token_budget: int = Field(65536, ge=64)
    k: int = Field(0, ge=0, description="Also draw k samples per test question for maj@k and pass@k (0: off).")
    temperature: float = Field(1.0, ge=0, description="Temperature of the k samples.")


class ArmConfig(Section):
    name: str | None = Field(None, description="Defaults to loss[+weighting][@a].")
    loss: Loss = "sft"
    data: Literal["vanilla", "dast_p", "dast_l"] = Field(
        "vanilla", description="Training data: the paper's (vanilla), DAST-P (more correct responses for harder "
        "questions) or DAST-L (long few-shot prompts for harder questions).")
    weighting: Weighting = "none"
    mapping: Literal["power", "linear", "mean"] = Field("power", description="How the signal becomes a weight.")
    a: float | list[float] = Field(1.0, description="Power exponent; a list expands into one arm per value.")
    linear_range: float | None = Field(None, gt=0, description="Output range R of the linear mapping.")
    replicate: int = Field(
        0, ge=0, description="Replicate number: > 0 redraws the arm's own random choices (which correct response "
        "is kept, the training order) from the same samples. A vanilla replicate beside vanilla is an A/A control: "
        "its difference is pure noise, the floor any comparison of arms must clear.")

    @model_validator(mode="after")
    def _dast_losses(self) -> ArmConfig:
        if self.data != "vanilla" and self.loss == "kto":
            raise ValueError("DAST arms train with sft (DAST-S) or dpo (DAST-D), not kto")
        return self

    @model_validator(mode="after")
    def _linear_needs_range(self) -> ArmConfig:
        if self.mapping == "linear" and self.linear_range is None and self.weighting in GLOBAL_WEIGHTINGS:
            raise ValueError("mapping 'linear' needs linear_range (the output range R of Eq. 4)")
        return self

    def label(self) -> str:
        if self.name:
            return self.name
        data = "" if self.data == "vanilla" else f"+{self.data}"
        data += f"#{self.replicate}" if self.replicate else ""
        if self.weighting == "none":
            return self.loss + data
        suffix = f"@{self.a:g}" if self.weighting in GLOBAL_WEIGHTINGS and self.mapping == "power" else ""
        return f"{self.loss}{data}+{self.weighting}{suffix}"


def default_arms() -> list[ArmConfig]:
    return [ArmConfig(name="sft", weighting="none"), ArmConfig(name="sft+east", weighting="entropy", a=1.0)]


class RunConfig(Section):
    name: str = Field("run", description="Run name; the default run directory is runs/<name>.")
    seeds: list[int] = Field(default_factory=lambda: [0], description="Each seed re-samples and re-trains every arm.")
    iterations: int = Field(1, ge=1, description="Self-training iterations T: iteration t samples from the arm's model of t-1.")
    train_from: Literal["previous", "base"] = Field(
        "previous", description="Iteration t > 1 fine-tunes the previous model, or retrains the base model (ReST-EM).")
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    bootstrap: BootstrapSettings = Field(default_factory=BootstrapSettings, description="model.path: bootstrap trains the tiny backbone with these settings.")
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    grading: GradingConfig = Field(default_factory=GradingConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    dast: DastConfig = Field(default_factory=DastConfig, description="DAST settings, used by arms with data dast_p / dast_l.")
    arms: list[ArmConfig] = Field(default_factory=default_arms)
    # Speed settings (issue 15, README "Speed settings"): the defaults reproduce what east did before them.
    precision: Literal["default", "fp32", "bf16", "auto"] = Field(
        "default", description="Compute precision (east.precision): default (as before the key existed: bf16 on a "
        "CUDA device with bf16, else fp32); fp32; bf16 (sampling in bf16, training with bf16 autocast over fp32 "
        "weights); auto: bf16 where the hardware has it natively (CUDA bf16, a CPU with AMX or avx512_bf16), else fp32.")
    threads: int | None = Field(None, ge=1, description="torch threads (torch.set_num_threads) for the run; None: "
                                "torch's default. On a shared machine, at most the cores this run may use.")

    @field_validator("seeds")
    @classmethod
    def _seeds_distinct(cls, seeds: list[int]) -> list[int]:
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return seeds

    @field_validator("arms")
    @classmethod
    def _arms_not_empty(cls, arms: list[ArmConfig]) -> list[ArmConfig]:
        if not arms:  # sampling everything and training nothing is never what was meant
            raise ValueError("no arms: list at least one, e.g. arms=[{name: sft}]")
        return arms

    @model_validator(mode="after")
    def _arms_distinct(self) -> RunConfig:
        labels = [arm.label() for arm in expand_arms(self.arms)]
        if not labels:
            raise ValueError("arms: every arm lists an empty `a`; give each at least one value")
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        if dupes:
            raise ValueError(f"arm names must be distinct, repeated: {dupes} (give each arm a `name`)")
        return self

    @model_validator(mode="after")
    def _steps_need_arith(self) -> RunConfig:
        if self.grading.verify_steps and self.grading_kind() != "arith":
            raise ValueError(f"grading.verify_steps checks the arith task's equation lines; grading kind "
                             f"{self.grading_kind()!r} has none (set grading.verify_steps: false)")
        return self

    @model_validator(mode="after")
    def _group_by_length_sft_only(self) -> RunConfig:
        others = sorted({arm.loss for arm in self.arms if arm.loss != "sft"})
        if self.train.group_by_length and others:
            raise ValueError(f"train.group_by_length is for SFT only, and arms use {', '.join(others)} (their pairs "
                             "and KTO's KL batches are built per batch); set train.group_by_length: false")
        return self

    @model_validator(mode="after")
    def _precision_matches_dtype(self) -> RunConfig:
        named = {"float32": "fp32", "bfloat16": "bf16"}.get(self.model.dtype)
        if named and self.precision in ("fp32", "bf16") and named != self.precision:
            raise ValueError(f"model.dtype {self.model.dtype} and precision {self.precision} disagree; set "
                             "model.dtype: auto (precision then decides) or make them match")
        return self

    def grading_kind(self) -> str:
        if self.grading.kind != "auto":
            return self.grading.kind
        return {"arith": "arith", "gsm8k": "gsm8k", "math": "math", "jsonl": "gsm8k"}[self.task.name]


def expand_arms(arms: list[ArmConfig]) -> list[ArmConfig]:
    """One arm per value of `a` where an arm lists several (the paper's Figure 3 sweep)."""
    out = []
    for arm in arms:
        values = arm.a if isinstance(arm.a, list) else [arm.a]
        for a in values:
            if not math.isfinite(a):
                raise UserError(f"arm {arm.label()}: a = {a} is not a finite number")
            name = arm.name if len(values) == 1 else (f"{arm.name}@{a:g}" if arm.name else None)
            out.append(arm.model_copy(update={"a": float(a), "name": name}))
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`sampling.n=32` -> (['sampling', 'n'], 32); the value is read as YAML."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not KEY=VALUE (e.g. sampling.n=32)")
    key, _, raw = text.partition("=")
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise UserError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"override {text!r}: the value is not valid YAML ({exc.problem})") from exc
    return path, value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"override {'.'.join(path)}: '{part}' is not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections (task:, sampling:, ...)")
    return data


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """The first problem, as one line naming the dotted key."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}' (check its spelling; configs/demo.yaml shows every section)"
    got = f" (got {err['input']!r})" if not isinstance(err.get("input"), (dict, list, type(None))) else ""
    return f"{source}: key '{key}': {err['msg']}{got}"


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    data = read_yaml(Path(path)) if path else {}
    if path and "name" not in data:
        data["name"] = Path(path).stem
    for text in overrides:
        apply_override(data, *parse_override(text))
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc, str(path or "config"))) from None
    from east.tracking import require_trackers

    require_trackers(config.train.report_to)  # here, not in the model: reading a saved run needs no tracker
    return config


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
