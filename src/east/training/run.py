"""The one training entry point: `train(rows, model_path, out_dir, loss=...)` -> path of the trained model.

Loads the model and tokenizer from `model_path`, builds TRL's config for the loss, trains the weighted trainer
(east.training.sft / dpo / kto), and writes under `out_dir`:

    out_dir/checkpoints/checkpoint-N/   Trainer checkpoints (only with save_steps), used by resume=True
    out_dir/model/                      final model + tokenizer (save_pretrained), written atomically
    out_dir/train_metrics.json          loss curve, weight stats, time, settings
    out_dir/tensorboard/                TensorBoard events, with report_to=["tensorboard"] (or `logging_dir`)

Called by the pipeline (one call per self-training iteration) as
`east.training.train(rows, "path/to/model", "runs/it1/train", loss="dpo", beta=0.01, ...)`.

Under a launcher (`accelerate launch ...`, see east.training.worker) every process calls `train` with the same
arguments and trains its share of each batch; the weights are gathered whole (DeepSpeed ZeRO-3 shards them), the
main process alone writes model/ and train_metrics.json, and the others wait for it at a barrier.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import DPOConfig, KTOConfig, SFTConfig

from east import io
from east.rundir import sample_digest
from east.errors import UserError
from east.tasks.prompts import auto_prefix, training_prompt
from east.tracking import training_run
from east.training.dpo import WeightedDPOTrainer
from east.training.kto import WeightedKTOTrainer
from east.training.local_weights import check_kind
from east.training.sft import WeightedSFTTrainer

Loss = Literal["sft", "dpo", "kto"]
TRAINERS = {"sft": (WeightedSFTTrainer, SFTConfig), "dpo": (WeightedDPOTrainer, DPOConfig), "kto": (WeightedKTOTrainer, KTOConfig)}
METRICS_FILE = "train_metrics.json"


def train(
    rows: Sequence[dict[str, Any]] | Dataset,
    model_path: str | Path,
    out_dir: str | Path,
    *,
    loss: Loss,
    local_weighting: Literal["lw_p", "lw_w"] | None = None,
    learning_rate: float,
    num_train_epochs: float,
    per_device_train_batch_size: int,
    gradient_accumulation_steps: int = 1,
    warmup_ratio: float = 0.1,
    beta: float | None = None,
    max_length: int | None = 1024,
    seed: int = 0,
    lora: dict[str, Any] | None = None,
    save_steps: int | None = None,
    resume: bool = False,
    logging_steps: int = 10,
    lr_scheduler_type: str = "linear",
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    report_to: Sequence[str] = ("none",),
    run_name: str | None = None,
    logging_dir: str | Path | None = None,
    precision: Literal["fp32", "bf16"] | None = None,
    group_by_length: bool = False,
) -> Path:
    """Train on `rows` (selection.py's dicts with a `weight` column) and return `out_dir/model`.

    beta: DPO/KTO temperature (None: TRL's default; refused for SFT). lora: peft.LoraConfig kwargs plus an optional
    `merge` (default True: save the merged full model, loadable with from_pretrained like the input; False saves the
    adapter only). resume: continue from the last checkpoint in out_dir/checkpoints (needs an earlier call with
    save_steps); the same seed and settings give the same final weights as an uninterrupted run.
    report_to: TRL's trackers ("tensorboard", "wandb"; east.tracking), run_name their name for this run, logging_dir
    the TensorBoard directory (default out_dir/tensorboard). The weighted trainers' weight/* statistics go there too.
    precision: "fp32", or "bf16" (on CPU: fp32 weights, forward and backward under bf16 autocast; on CUDA: bf16
    weights, as before); None: the device's default as before the setting existed (bf16 on a CUDA device that has
    it, else fp32). group_by_length (SFT only): batches of rows of similar length, for less padding.
    """
    if loss not in TRAINERS:
        raise ValueError(f"loss must be 'sft', 'dpo' or 'kto', got {loss!r}")
    if beta is not None and loss == "sft":
        raise ValueError("beta is a DPO/KTO setting; SFT has none")
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    check_kind(local_weighting)
    if group_by_length and loss != "sft":
        raise ValueError(f"group_by_length is for SFT only, got loss {loss!r} (DPO rows have no single length; KTO "
                         "builds its KL pairs per batch)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    dtype, bf16 = training_dtype(precision)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
    source = rows if isinstance(rows, Dataset) else Dataset.from_list(list(rows))
    dataset = trainer_prompts(source, tokenizer)
    if loss == "kto":
        # KTO samples sequentially (its KL pairs are built within fixed batches), so the shuffling happens here.
        dataset = dataset.shuffle(seed=seed).flatten_indices()

    trainer_cls, config_cls = TRAINERS[loss]
    checkpoints = out_dir / "checkpoints"
    config = config_cls(
        output_dir=str(checkpoints),
        learning_rate=learning_rate,
        num_train_epochs=num_train_epochs,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        warmup_steps=warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        max_length=max_length,
        seed=seed,
        bf16=bf16,
        # bf16 autocast on CPU: transformers enables it only for a CPU run it knows is one.
        **({"use_cpu": True} if bf16 and not torch.cuda.is_available() else {}),
        **({"train_sampling_strategy": "group_by_length"} if group_by_length else {}),
        report_to=list(report_to),
        run_name=run_name,
        # transformers 5 renamed the flag (activation_checkpointing); setting both avoids its deprecation warning.
        gradient_checkpointing=gradient_checkpointing,
        activation_checkpointing=gradient_checkpointing,
        dataloader_pin_memory=torch.cuda.is_available(),
        ddp_backend=cpu_backend(),
        lr_scheduler_type=lr_scheduler_type,
        logging_steps=logging_steps,
        disable_tqdm=True,  # the pipeline prints one line per stage; the loss curve goes to train_metrics.json
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        **({"beta": beta} if beta is not None else {}),
    )
    trainer = trainer_cls(
        model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(lora),
        local_weighting=local_weighting,
    )
    check_distributed(trainer)
    trainer.remove_callback(PrinterCallback)
    point_tensorboard(trainer, Path(logging_dir or out_dir / "tensorboard"))
    settings = {
        "loss": loss, "local_weighting": local_weighting, "model_path": str(model_path), "num_rows": len(dataset),
        "learning_rate": learning_rate, "num_train_epochs": num_train_epochs,
        "per_device_train_batch_size": per_device_train_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps, "warmup_ratio": warmup_ratio, "beta": beta,
        "max_length": max_length, "seed": seed, "lora": lora, "dtype": str(dtype),
        "lr_scheduler_type": lr_scheduler_type, "gradient_checkpointing": gradient_checkpointing,
        "processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type.value),
        "bf16_autocast": bf16, "group_by_length": group_by_length,
    }
    # The start model counts by its files, not its path (training_identity); the settings recorded in
    # train_metrics.json are the rest of what decides the weights.
    identity = training_identity(model_path, source._fingerprint, {k: v for k, v in settings.items() if k != "model_path"})
    # Called without resume too: it records whose checkpoints the ones to come are, for a later resume.
    checkpoint = resumable_checkpoint(checkpoints, identity, trainer.accelerator)
    checkpoint = checkpoint if resume else None
    with training_run(report_to, run_name, out_dir), fp32_attention(model, enabled=bf16 and dtype == torch.float32):
        result = trainer.train(resume_from_checkpoint=checkpoint)

    final = save_model(trainer, tokenizer, out_dir / "model", merge=(lora or {}).get("merge", True))
    if not trainer.accelerator.is_main_process:
        return final
    write_metrics(
        out_dir / METRICS_FILE,
        trainer,
        train_runtime=result.metrics.get("train_runtime"),
        wall_time=time.monotonic() - started,
        resumed_from=checkpoint,
        settings=settings,
    )
    return final


def cpu_backend() -> str | None:
    """"gloo" for a multi-process run without GPUs, else None (accelerate's choice). Under DeepSpeed on CPU
    (DS_ACCELERATOR=cpu) accelerate picks no backend by itself and every process then trains alone as rank 0 of 1."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return "gloo" if launched and not torch.cuda.is_available() else None


def check_distributed(trainer) -> None:
    """Refuse a launcher config that asked for FSDP or DeepSpeed when accelerate did not enable it: accelerate turns
    FSDP on only for GPU runs and otherwise trains plain DDP without a word (a model that fits no single device then
    fails much later, or a "sharded" benchmark measures DDP)."""
    from accelerate.utils import DistributedType

    got = trainer.accelerator.distributed_type
    for env, wanted, fix in (
        ("ACCELERATE_USE_FSDP", DistributedType.FSDP, "FSDP needs GPUs; on CPU use configs/accelerate/ddp.yaml or "
                                                      "zero3.yaml with DS_ACCELERATOR=cpu"),
        ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED, "set DS_ACCELERATOR=cpu on CPU and use_cpu: false"),
    ):
        if os.environ.get(env, "false").lower() == "true" and got != wanted:
            raise UserError(f"the accelerate config asks for {wanted.value} but accelerate runs {got.value} "
                            f"({env}=true was ignored); {fix}")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != trainer.accelerator.num_processes:
        raise UserError(f"the launcher started {launched} processes but each trains alone as 1 of "
                        f"{trainer.accelerator.num_processes} ({got.value}); check the accelerate config's backend")


def trainer_prompts(dataset: Dataset, tokenizer) -> Dataset:
    """Rendered prompts carry their own special tokens (sampling tokenises them without adding any), but TRL's
    trainers tokenise string prompts WITH the tokenizer's: a Llama-3 row would start with two <|begin_of_text|>.
    Hand TRL each prompt without the BOS the tokenizer adds anyway, so training sees the sampler's exact ids."""
    if not auto_prefix(tokenizer):
        return dataset
    return dataset.map(lambda row: {"prompt": training_prompt(tokenizer, row["prompt"])})


def training_dtype(precision: str | None = None) -> tuple[torch.dtype, bool]:
    """(model dtype, bf16 flag). None: bf16 on a CUDA device that supports it, float32 otherwise (as before the
    precision setting). "bf16" on CPU keeps fp32 weights (the optimizer's master copy) under bf16 autocast."""
    from east.precision import cuda_has_bf16, previous_default

    precision = previous_default() if precision is None else precision
    if precision == "fp32":
        return torch.float32, False
    if precision != "bf16":
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return (torch.bfloat16 if cuda_has_bf16() else torch.float32), True


FP32_ATTENTION = "east_fp32_sdpa"


def fp32_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention with autocast off and q, k, v in fp32, returned in the query's dtype.

    Why: under CPU bf16 autocast (fp32 weights) torch 2.13's CPU flash-attention backward is ~5x slower in bf16
    than in fp32 at the built-in backbone's head size (40): 22 ms against 4.6 ms per call, profiled on an Intel
    Xeon with AMX, 2026-12-02, which ate what bf16 gains in the matmuls. Attention is a small share of the
    FLOPs, so fp32 here costs little and is the more precise of the two.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(query.dtype), weights


@contextmanager
def fp32_attention(model, enabled: bool) -> Iterator[None]:
    """Train with `fp32_sdpa` in place of sdpa (bf16 autocast on CPU only), restoring the model's own attention
    before it is saved, so that its config.json names nothing only east knows."""
    config = getattr(model, "config", None)
    if not enabled or config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    from transformers import AttentionInterface

    AttentionInterface.register(FP32_ATTENTION, fp32_sdpa)
    config._attn_implementation = FP32_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


def point_tensorboard(trainer, directory: Path) -> None:
    """transformers 5 has no `logging_dir`: its TensorBoard callback writes to output_dir/runs/<date> (here inside
    the checkpoints) unless TENSORBOARD_LOGGING_DIR is set, so tell the callback itself where to write."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(directory)


def lora_config(lora: dict[str, Any] | None):
    if lora is None:
        return None
    from peft import LoraConfig

    kwargs = {k: v for k, v in lora.items() if k != "merge"}
    kwargs.setdefault("task_type", "CAUSAL_LM")
    return LoraConfig(**kwargs)


IDENTITY_FILE = "training_identity.json"


def training_identity(model_path: str | Path, rows_fingerprint: str, settings: dict[str, Any]) -> str:
    """A digest of what decides the weights a training reaches: its settings, its rows and its start model (each
    file's size and sampled blocks, as run manifests fingerprint outputs: a retrained policy at the same path
    counts as another model, a copy of the same one does not)."""
    path = Path(model_path)
    model = ({f.name: sample_digest(f, f.stat().st_size) for f in sorted(path.iterdir()) if f.is_file()}
             if path.is_dir() else str(model_path))
    text = json.dumps({"settings": settings, "rows": rows_fingerprint, "model": model}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def resumable_checkpoint(checkpoints: Path, identity: str, accelerator) -> str | None:
    """The checkpoint to resume from: the newest complete one, unless the checkpoints were written by a training of
    another identity (other rows, settings or start model, e.g. a stage rerun after its config changed), which are
    removed rather than resumed from. Checkpoints without a record (written before it existed) count as this
    training's. Every process reads the record before the main process replaces it, and all resume from the same."""
    recorded = checkpoints / IDENTITY_FILE
    stale = recorded.is_file() and io.read_json(recorded).get("identity") != identity
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if stale:
            for old in checkpoints.glob("checkpoint-*"):
                shutil.rmtree(old)
        checkpoints.mkdir(parents=True, exist_ok=True)
        io.write_json(recorded, {"identity": identity})
    accelerator.wait_for_everyone()
    return last_checkpoint(checkpoints)


def last_checkpoint(checkpoints: Path) -> str | None:
    """The newest complete Trainer checkpoint. Trainer writes trainer_state.json last, so a checkpoint without
    it was cut short (a kill or a full disk during the save); it is removed rather than resumed from."""
    if not checkpoints.is_dir():
        return None
    for partial in checkpoints.glob("checkpoint-*"):
        if partial.is_dir() and not (partial / "trainer_state.json").is_file():
            shutil.rmtree(partial, ignore_errors=True)  # every process of a multi-process run tries
    return get_last_checkpoint(str(checkpoints))


def save_model(trainer, tokenizer, final: Path, merge: bool) -> Path:
    """save_pretrained into a temp dir beside `final`, then swap it in, so `final` is never half written.

    Every process takes part in gathering ZeRO-3's sharded weights whole; the main process alone writes (LoRA is
    merged there), the others wait at a barrier. A failed save removes its temp dir (with a real model, gigabytes
    on a disk that may be full); a safetensors error carrying an OS error (disk full, permission) is raised as that
    OSError."""
    with whole_parameters(trainer.model):
        if trainer.accelerator.is_main_process:
            write_model(trainer.accelerator.unwrap_model(trainer.model), tokenizer, final, merge)
    trainer.accelerator.wait_for_everyone()
    return final


@contextmanager
def whole_parameters(model) -> Iterator[None]:
    """Under DeepSpeed ZeRO-3 each process holds a shard of every parameter (the module's own tensors are empty):
    gather them whole on every process for the duration (the full model's memory on each, once, at the end)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield


def write_model(model, tokenizer, final: Path, merge: bool) -> None:
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        io.follow_umask(tmp)  # safetensors writes its files 0600; every other artifact follows the umask
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if type(exc).__name__ == "SafetensorError":
            raise save_error(exc, tmp / "model.safetensors") from None
        raise
    replace_dir(tmp, final)


def save_error(exc: BaseException, path: Path) -> Exception:
    """The OSError inside a SafetensorError's message ("... No space left on device (os error 28)")."""
    found = re.search(r"os error (\d+)", str(exc))
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code), str(path))
    return UserError(f"{path}: the model could not be saved ({io.first_line(exc)}); rerun to resume from the last checkpoint")


def replace_dir(src: Path, dst: Path) -> None:
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        dst.rename(old)  # rename, not delete, first: dst is complete at every moment but one rename
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def write_metrics(path: Path, trainer, **extra) -> None:
    history = trainer.state.log_history
    steps = [entry for entry in history if "loss" in entry]
    metrics = {
        "loss_curve": [{"step": e["step"], "loss": e["loss"]} for e in steps],
        "weight_stats": [
            {"step": e["step"], **{k: v for k, v in e.items() if k.startswith(("weight/", "local_weight/"))}}
            for e in steps
        ],
        "global_step": trainer.state.global_step,
        **extra,
        "log_history": history,
    }
    io.write_json(path, metrics)
