"""Warm-up of the built-in backbone: a fresh tiny Llama trained with stock `trl.SFTTrainer` on the
labelled `warmup` split of the arith task, saved (model + tokenizer + bootstrap.json) atomically.

    python -m east.backbone.bootstrap OUT_DIR            # default settings (the shipped checkpoint)
    from east.backbone.bootstrap import bootstrap, builtin_checkpoint
    bootstrap("runs/backbone", n_rows=200, epochs=1)     # any setting by keyword

The shipped checkpoint (src/east/backbone/checkpoint/) is the output of the first command; its
bootstrap.json records the settings and the measured training time.

The warm-up prompts have no system turn, so sample and evaluate this backbone with
`render_prompt(tokenizer, q, system_prompt=None)`: it has never seen a system message, and with the
paper's system prompt its greedy test accuracy falls from about 50% to about 4% (measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from east.backbone.model import build_model, count_parameters
from east.backbone.tokenizer import build_tokenizer
from east.tasks.arith import ARITH_DEFAULT, ArithSpec, make_questions
from east.tasks.prompts import render_prompt

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"


class BootstrapSettings(BaseModel):
    """Everything that determines a bootstrap run; the defaults produce the shipped checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: ArithSpec = Field(ARITH_DEFAULT, description="Difficulty of the warmup problems.")
    n_rows: int = Field(6000, ge=1, description="Warmup questions (one SFT row each).")
    epochs: float = Field(3.0, gt=0, description="Passes over the warmup rows.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate (cosine schedule, 10% warm-up).")
    hidden: int = Field(160, ge=8, description="Model width.")
    layers: int = Field(4, ge=1, description="Transformer blocks.")
    heads: int = Field(4, ge=1, description="Attention heads (hidden must be divisible by it).")
    batch_size: int = Field(32, ge=1, description="Rows per optimiser step.")
    seed: int = Field(0, description="Seeds the warmup questions, the initial weights and the data order.")
    max_seconds: float | None = Field(None, gt=0, description="Stop training after this wall time (None: no limit).")
    few_shot_share: float = Field(
        0.0, ge=0, le=1, description="Share of warm-up rows shown after 1..few_shot_max worked examples as earlier "
        "chat turns, so that few-shot prompts (DAST-L, prompt.few_shot) are within the backbone's competence. "
        "0 (the shipped checkpoint) leaves every row single-turn.")
    few_shot_max: int = Field(3, ge=1, description="Most worked examples before a few-shot warm-up row.")

    def record(self) -> dict:
        """The settings as bootstrap.json and the run directory's stage key hold them."""
        return self.model_dump(mode="json")


DEFAULTS = BootstrapSettings()


def warmup_rows(tokenizer, spec: ArithSpec, n_rows: int, seed: int, few_shot_share: float = 0.0,
                few_shot_max: int = 3) -> list[dict[str, str]]:
    """TRL prompt/completion rows: the chat-rendered question (no system prompt) and its worked solution;
    a `few_shot_share` of them after 1..few_shot_max other warm-up questions with their solutions as
    earlier turns (the form of DAST-L's long prompts)."""
    questions = make_questions("warmup", n_rows, spec, seed)
    # Its own generator, used only when asked for: share 0 draws nothing and keeps the shipped rows exactly.
    rng = random.Random(f"warmup-few-shot|{seed}")
    rows = []
    for index, q in enumerate(questions):
        shots = []
        if few_shot_share > 0 and len(questions) > 1 and rng.random() < few_shot_share:
            others = [j for j in rng.sample(range(len(questions)), min(len(questions), few_shot_max + 1)) if j != index]
            shots = [questions[j] for j in others[: rng.randint(1, few_shot_max)]]
        rows.append({"prompt": render_prompt(tokenizer, q, system_prompt=None, few_shot=shots), "completion": q.solution})
    return rows


def _time_limit_callback(max_seconds: float):
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        """Ends training once the wall-time budget is spent (the cosine schedule is left as planned)."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - self.start > max_seconds:
                control.should_training_stop = True

    return TimeLimit()


def _replace_dir(staged: Path, out_dir: Path) -> None:
    """Moves `staged` to `out_dir`; an existing `out_dir` is swapped out and removed only afterwards."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        staged.rename(out_dir)
        shutil.rmtree(old)
    else:
        staged.rename(out_dir)


def bootstrap(
    out_dir: str | Path,
    *,
    spec: ArithSpec = DEFAULTS.spec,
    n_rows: int = DEFAULTS.n_rows,
    epochs: float = DEFAULTS.epochs,
    lr: float = DEFAULTS.lr,
    hidden: int = DEFAULTS.hidden,
    layers: int = DEFAULTS.layers,
    heads: int = DEFAULTS.heads,
    batch_size: int = DEFAULTS.batch_size,
    seed: int = DEFAULTS.seed,
    max_seconds: float | None = DEFAULTS.max_seconds,
    few_shot_share: float = DEFAULTS.few_shot_share,
    few_shot_max: int = DEFAULTS.few_shot_max,
    report_to: Sequence[str] = ("none",),
    run_name: str | None = None,
    logging_dir: str | Path | None = None,
) -> Path:
    """Trains a fresh backbone on the warmup split and saves it to `out_dir` (replaced if present).

    report_to / run_name: trackers of the warm-up (east.tracking); they change nothing in the model, so they are
    not settings. TensorBoard events go to `logging_dir`, by default `tensorboard/<out_dir name>` beside out_dir:
    out_dir itself is replaced whole at the end."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from east.tracking import training_run
    from east.training.run import point_tensorboard

    settings = BootstrapSettings(
        spec=spec, n_rows=n_rows, epochs=epochs, lr=lr, hidden=hidden, layers=layers, heads=heads,
        batch_size=batch_size, seed=seed, max_seconds=max_seconds, few_shot_share=few_shot_share,
        few_shot_max=few_shot_max,
    )
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    tokenizer = build_tokenizer()
    model = build_model(hidden, layers, heads, tokenizer=tokenizer, seed=seed)
    dataset = Dataset.from_list(warmup_rows(tokenizer, spec, n_rows, seed, few_shot_share, few_shot_max))

    # The pid in the name lets the next run remove it if this process is killed (east.rundir).
    staged = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}.", dir=out_dir.parent))
    staged.chmod(0o755)  # mkdtemp makes it owner-only; the result is meant to be shared (package data)
    try:
        with tempfile.TemporaryDirectory(prefix="east-bootstrap-") as scratch:
            config = SFTConfig(
                output_dir=scratch,
                num_train_epochs=epochs,
                per_device_train_batch_size=batch_size,
                learning_rate=lr,
                lr_scheduler_type="cosine",
                warmup_steps=0.1,  # transformers 5: a float in [0, 1) is the warm-up ratio
                weight_decay=0.0,
                bf16=False,  # TRL's default bf16=True fails on CPU
                # TRL defaults to checkpointing on; at this size recomputation only costs time. transformers
                # 5 renamed the flag (activation_checkpointing); setting both avoids its deprecation warning.
                gradient_checkpointing=False,
                activation_checkpointing=False,
                report_to=list(report_to),
                run_name=run_name,
                save_strategy="no",
                logging_steps=50,
                disable_tqdm=True,
                seed=seed,
                data_seed=seed,
                dataloader_num_workers=0,
                dataloader_pin_memory=False,  # CPU only: pinning has no device to serve and only warns
            )
            trainer = SFTTrainer(
                model=model,
                args=config,
                train_dataset=dataset,
                processing_class=tokenizer,
                callbacks=[_time_limit_callback(max_seconds)] if max_seconds else None,
            )
            point_tensorboard(trainer, Path(logging_dir or out_dir.parent / "tensorboard" / out_dir.name))
            train_started, cpu_started = time.perf_counter(), time.process_time()
            with training_run(report_to, run_name, out_dir.parent):
                result = trainer.train()
            train_seconds = time.perf_counter() - train_started
            # CPU time / wall time near the thread count means the run had the cores to itself.
            train_cpu_seconds = time.process_time() - cpu_started
            losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]

        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        from east.precision import cpu_description

        record = {
            "settings": settings.record(),
            "train_seconds": round(train_seconds, 1),
            "train_cpu_seconds": round(train_cpu_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            "steps": trainer.state.global_step,
            "planned_steps": trainer.state.max_steps,
            "stopped_by_time_limit": trainer.state.global_step < trainer.state.max_steps,
            "final_loss": round(losses[-1], 4) if losses else None,
            "mean_train_loss": round(result.training_loss, 4),
            "parameters": count_parameters(model),
            # The processor too: fp32 training is bit-for-bit repeatable on one processor family, not across them.
            "machine": {"cpus": os.cpu_count(), "processor": cpu_description(), "python": platform.python_version(),
                        **_versions()},
        }
        (staged / "bootstrap.json").write_text(json.dumps(record, indent=2) + "\n")
        for file in staged.iterdir():
            file.chmod(0o644)  # safetensors are written owner-only; package data must be readable by all
        _replace_dir(staged, out_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return out_dir


def _versions() -> dict[str, str]:
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}


def builtin_checkpoint() -> Path:
    """The shipped checkpoint directory, loadable with AutoModelForCausalLM/AutoTokenizer.from_pretrained."""
    if not (CHECKPOINT_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"no built-in checkpoint at {CHECKPOINT_DIR}; create it with "
            f"`python -m east.backbone.bootstrap {CHECKPOINT_DIR}`"
        )
    return CHECKPOINT_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description="Bootstrap the built-in backbone with the default settings.")
    parser.add_argument("out_dir", type=Path)
    out = bootstrap(parser.parse_args().out_dir)
    print(json.loads((out / "bootstrap.json").read_text()))


if __name__ == "__main__":
    main()
