"""The training jobs of tests/test_distributed.py, run once in 1 process and once in 2 (gloo, CPU):

    python tests/distributed_job.py OUT CASE [CASE ...]
    ACCELERATE_USE_CPU=true python -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no tests/distributed_job.py OUT CASE [CASE ...]

Each case trains the built-in backbone for a few steps with unequal row weights and writes its parameters to
OUT/<case>.pt (main process). Both runs see the same global batch: 2 rows per process and micro-batch, with the
1-process run accumulating twice as many micro-batches as the 2-process one. Cases ending in "-control" undo one
condition of the equivalence, so the test can show them differing:

    sft            weighted SFT, gradient accumulation (2 processes x 2 micro-batches = 1 x 4), rows of unequal length
    sft-control    the same with average_tokens_across_devices=False: each rank normalises by its own tokens
    sft-lwp        the same as sft with LW(P) local weights (normalised over each micro-batch of 2 rows)
    dpo            weighted DPO, 8 pairs (every micro-batch full)
    dpo-control    7 pairs: the last batch is not full, accelerate pads it with a row from the epoch's start
    kto            weighted KTO, loss_type "kto", with a reference model that differs from the policy
    kto-control    the same with TRL 1.16's own KL estimate, gathered over the processes
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from east.backbone import builtin_checkpoint

ROWS_PER_DEVICE = 2


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def weight(i: int) -> float:
    return [0.2, 1.7, 0.9, 3.0, 0.5, 1.1, 2.4, 0.05][i % 8]


def prompt(i: int) -> str:
    return f"What is {i} + {i + 1}?"


def sft_rows(n: int) -> list[dict]:
    return [{"prompt": prompt(i), "completion": f" {2 * i + 1}" + " ok" * (i % 4), "weight": weight(i)} for i in range(n)]


def dpo_rows(n: int) -> list[dict]:
    return [{"prompt": prompt(i), "chosen": f" {2 * i + 1}" + "." * (i % 3), "rejected": f" {2 * i + 2} maybe",
             "weight": weight(i)} for i in range(n)]


def kto_rows(n: int) -> list[dict]:
    return [{"prompt": prompt(i), "completion": f" {2 * i + 1}" if i % 2 == 0 else f" {2 * i + 3} or so",
             "label": i % 2 == 0, "weight": weight(i)} for i in range(n)]


def common(out: Path, case: str, accumulation: int) -> dict:
    """Settings of both runs; `accumulation` is that of the 2-process run (the 1-process run doubles it)."""
    return dict(output_dir=str(out / f"trainer-{case}-{world()}"), bf16=False, report_to="none", save_strategy="no",
                logging_steps=1, per_device_train_batch_size=ROWS_PER_DEVICE,
                gradient_accumulation_steps=accumulation * (2 // world()), num_train_epochs=1, learning_rate=5e-3,
                seed=0, dataloader_num_workers=0, disable_tqdm=True, max_length=64, gradient_checkpointing=False,
                warmup_steps=0, lr_scheduler_type="constant")


def load():
    path = str(builtin_checkpoint())
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def reference_model():
    """The backbone with every parameter moved by seeded noise: a reference that differs from the policy."""
    model, _ = load()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    return model


def trainer_for(case: str, out: Path):
    from datasets import Dataset
    from trl import DPOConfig, KTOConfig, KTOTrainer, SFTConfig

    from east.training import WeightedDPOTrainer, WeightedKTOTrainer, WeightedSFTTrainer
    from east.training.mixin import patch_trl_method

    model, tokenizer = load()
    if case.startswith("sft"):
        args = SFTConfig(**common(out, case, 2), average_tokens_across_devices=case != "sft-control")
        return WeightedSFTTrainer(model, args=args, train_dataset=Dataset.from_list(sft_rows(16)), processing_class=tokenizer,
                                  local_weighting="lw_p" if case == "sft-lwp" else None)
    if case.startswith("dpo"):
        rows = dpo_rows(8 if case == "dpo" else 7)
        args = DPOConfig(**common(out, case, 1), beta=0.5)
        return WeightedDPOTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer_cls = WeightedKTOTrainer
    if case == "kto-control":
        class StockKLTrainer(WeightedKTOTrainer):  # the row weights, but TRL's KL estimate gathered over ranks
            _compute_loss = patch_trl_method(
                KTOTrainer._compute_loss, "loss = losses.nanmean()",
                "loss = self._east_weighted_nanmean(losses, torch.cat((chosen_idx, rejected_idx)))")

        trainer_cls = StockKLTrainer
    args = KTOConfig(**common(out, case, 1), beta=0.5)
    return trainer_cls(model, ref_model=reference_model(), args=args, train_dataset=Dataset.from_list(kto_rows(8)),
                       processing_class=tokenizer)


def main(out: Path, cases: list[str]) -> None:
    for case in cases:
        trainer = trainer_for(case, out)
        trainer.train()
        if trainer.accelerator.is_main_process:
            model = trainer.accelerator.unwrap_model(trainer.model)
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            logged = [{k: v for k, v in e.items() if "weight/" in k} for e in trainer.state.log_history if "weight/mean" in e]
            torch.save({"state": state, "logged": logged, "steps": trainer.state.global_step}, out / f"{case}-{world()}.pt")
        trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
