"""What the weighted SFT, DPO and KTO trainers share: the `weight` column's path from dataset to loss.

Written against TRL 1.16.0 (pinned in pyproject.toml). The trainers in sft.py, dpo.py and kto.py combine
`WeightedTrainerMixin` with the TRL trainer; this module is not used on its own.

The path of a row weight:
1. `require_weight_column` refuses a training set without a `weight` column (or with negative / non-finite weights).
2. TRL's `_prepare_dataset` keeps unknown columns, and `_set_signature_columns_if_needed` adds `weight` to the
   columns `remove_unused_columns` keeps.
3. `WeightCollator` wraps TRL's collator: it takes `weight` out of each example before TRL's collator sees it and
   adds it back to the batch as a float tensor. Collators built before the wrap (DPO/KTO
   `precompute_ref_log_probs`, run inside TRL's `__init__`) never see a weight tensor at all.
4. `compute_loss` pops `weight` from the batch before anything reaches TRL, so it never reaches `model.forward`.
5. `PolicyTap` wraps the model handed to TRL's loss for one call and observes the one policy forward that scores
   the batch (fused LM head, the batch's `input_ids` by value: TRL's KTO moves the batch with `.to(device)`, which
   copies it under CPU data parallel). There each trainer applies its weights: SFT scales the
   per-token log-probs (the loss is linear in them); DPO/KTO stash per-row weights that a one-line patch of TRL's
   final reduction uses (see `patch_trl_method`). Local weights (LW(P), LW(W)) are computed there too, under
   no_grad, from the same forward's outputs, and multiply the row weight.
6. `log` adds mean/min/max of the row weights (and local weights) seen since the last logging step, over the
   rows of every process (gathered: each rank sees only its share of the batch).
"""

from __future__ import annotations

import inspect
import textwrap
import types
from collections.abc import Callable
from typing import Any

import torch

from east.training.batches import ShuffledLengthGroupedSampler
from east.training.local_weights import check_kind, pair_local_weights, row_local_weights

WEIGHT = "weight"

# Every per-token field the fused LM head can return. LW(W) needs `log_sum_sq_probs`, which TRL only requests for
# WPO, so with lw_w the head is re-added asking for all of them (a small extra cost per token).
ALL_FUSED_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def column_names(dataset) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:  # IterableDataset without known features
        names = list(next(iter(dataset)).keys())
    return list(names)


def require_weight_column(dataset, name: str = "training") -> None:
    """Refuse a dataset without a usable `weight` column, in one line."""
    if dataset is None:
        raise ValueError(f"the {name} set is required")
    if WEIGHT not in column_names(dataset):
        raise ValueError(
            f"the {name} set has no `weight` column: weighted trainers need one float per row (use 1.0 for unweighted)"
        )
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        check_weight_values(torch.as_tensor(dataset[WEIGHT], dtype=torch.float64), name)


def check_weight_values(weights: torch.Tensor, name: str = "training") -> None:
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"the {name} set's `weight` column must be finite and >= 0")


class WeightCollator:
    """Wraps a TRL collator: collates `weight` into a float tensor, hides it from the wrapped collator."""

    def __init__(self, inner: Callable[[list[dict]], dict]):
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        weights = [example.get(WEIGHT) for example in examples]
        batch = self.inner([{k: v for k, v in example.items() if k != WEIGHT} for example in examples])
        if all(w is not None for w in weights):  # eval sets may come without weights: they weigh 1
            batch[WEIGHT] = torch.tensor(weights, dtype=torch.float32)
        return batch

    def __getattr__(self, name: str):  # pad_token_id, max_length, ... of the TRL collator
        if name == "inner":  # not set yet (unpickling in a dataloader worker): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class PolicyTap:
    """Calls the model; on the policy's scoring forward (fused LM head, the batch's own input_ids) applies `hook`.

    TRL's loss code also calls the model for KTO's KL completions and for `return_outputs` logits; those pass
    through untouched. The policy forward is recognised by its `input_ids` VALUES, not by tensor identity: TRL's
    KTO moves the batch with `.to(self.accelerator.device)`, which copies it under CPU data parallel. KTO's KL
    forwards run under no_grad, so while training only a forward with gradients counts. Out of training
    (evaluation runs everything under no_grad) a later forward with the same ids has the same inputs and so the
    same outputs, and is let through: the first one carries the weights.
    """

    def __init__(self, model, input_ids: torch.Tensor, hook: Callable[[Any], Any], training: bool):
        self.model, self.input_ids, self.hook, self.training, self.fired = model, input_ids, hook, training, 0

    def __call__(self, *args, **kwargs):
        outputs = self.model(*args, **kwargs)
        if self.is_policy_forward(kwargs.get("input_ids")) and getattr(outputs, "log_probs", None) is not None:
            self.fired += 1
            outputs = self.hook(outputs)
        return outputs

    def is_policy_forward(self, input_ids) -> bool:
        if not isinstance(input_ids, torch.Tensor) or input_ids.shape != self.input_ids.shape:
            return False
        if self.training and not torch.is_grad_enabled():
            return False  # KTO's KL forward
        if not self.training and self.fired:
            return False  # same ids as the forward already weighed: same outputs
        return input_ids is self.input_ids or torch.equal(input_ids.to(self.input_ids.device), self.input_ids)

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def check(self) -> None:
        if self.fired != 1:
            raise RuntimeError(
                f"the policy forward was seen {self.fired} times instead of once: TRL's loss code changed "
                "(written for trl 1.16.0); update east/training"
            )


def patch_trl_method(func: Callable, old: str, new: str, also: tuple[tuple[str, str], ...] = ()) -> Callable:
    """A copy of TRL method `func` with the one source fragment `old` replaced by `new` (and each (old, new) of
    `also`, for KTO's KL estimate).

    Used for the single line where DPO/KTO reduce per-row losses to the batch loss: TRL 1.16 computes the loss in
    one monolithic `_compute_loss` with no hook, and copying ~300 lines to change one would drift silently. The
    copy is compiled against TRL's own module globals and line numbers, so tracebacks point into TRL's file, and
    it refuses to build unless `old` occurs exactly once.
    """
    source = textwrap.dedent(inspect.getsource(func))
    for fragment, replacement in ((old, new), *also):
        if source.count(fragment) != 1:
            raise RuntimeError(f"cannot find {fragment!r} once in {func.__qualname__}: TRL changed (written for trl 1.16.0)")
        source = source.replace(fragment, replacement)
    if func.__code__.co_freevars:
        raise RuntimeError(f"{func.__qualname__} has a closure; it cannot be patched by source")
    padding = "\n" * (func.__code__.co_firstlineno - 1)
    module = compile(padding + source, inspect.getsourcefile(func), "exec")
    code = next(c for c in module.co_consts if isinstance(c, types.CodeType) and c.co_name == func.__name__)
    patched = types.FunctionType(code, func.__globals__, func.__name__, func.__defaults__)
    patched.__qualname__, patched.__doc__ = func.__qualname__, func.__doc__
    return patched


def base_model(model):
    """The model TRL added the fused LM head to (the base model under a PEFT wrapper)."""
    return model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model


class WeightedTrainerMixin:
    """Row weights (+ optional local weights) for a TRL trainer; see the module docstring.

    Subclasses set `pairs` (DPO: rows come as [chosen..., rejected...], one weight per pair) and implement
    `_apply_weights(outputs, weights)`, called on the policy's scoring forward with the final per-example weights.
    """

    pairs = False

    def _east_before_init(self, train_dataset, local_weighting: str | None) -> None:
        require_weight_column(train_dataset)
        check_kind(local_weighting)
        self.local_weighting = local_weighting
        self._east_seen: dict[str, list[torch.Tensor]] = {"weight": [], "local_weight": []}
        self._east_active: torch.Tensor | None = None

    def _east_after_init(self) -> None:
        self.data_collator = WeightCollator(self.data_collator)
        if self.local_weighting == "lw_w":
            from trl.trainer.utils import add_fused_lm_head

            add_fused_lm_head(base_model(self.model), outputs=ALL_FUSED_OUTPUTS)

    # --- columns and batches -------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        # Overrides transformers 5.x `Trainer._get_train_sampler` (TRL 1.16.0's SFT trainer keeps it): with
        # group_by_length, batches of similar length in a shuffled order instead of transformers' long-to-short
        # cycles (east.training.batches says why). Other strategies are transformers' own.
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = [len(ids) for ids in dataset["input_ids"]]
        return ShuffledLengthGroupedSampler(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if WEIGHT not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, WEIGHT]

    def _east_pop_weight(self, inputs: dict[str, Any], rows: int) -> torch.Tensor:
        """The batch's weights (ones if the batch has none, e.g. an eval set without them), removed from inputs."""
        weight = inputs.pop(WEIGHT, None)
        if weight is None:
            return torch.ones(rows, dtype=torch.float32)
        weight = weight.detach().float()
        if weight.shape != (rows,):
            raise ValueError(f"`weight` has shape {tuple(weight.shape)}, expected ({rows},)")
        check_weight_values(weight, "batch")
        return weight

    # --- the policy forward --------------------------------------------------------------------------------

    def _east_tap(self, model, inputs: dict[str, Any], row_weights: torch.Tensor) -> PolicyTap:
        def hook(outputs):
            weights = row_weights.to(outputs.log_probs.device)
            local = self._east_local_weights(outputs)
            self._east_record(row_weights, local)
            if local is not None:
                weights = weights * local.to(weights.device, weights.dtype)
            return self._apply_weights(outputs, weights)

        return PolicyTap(model, inputs["input_ids"], hook, training=self.model.training)

    def _east_local_weights(self, outputs) -> torch.Tensor | None:
        if self.local_weighting is None:
            return None
        local = pair_local_weights if self.pairs else row_local_weights
        return local(self.local_weighting, outputs.log_probs.detach(), outputs.label_mask, outputs.log_sum_sq_probs)

    def _apply_weights(self, outputs, weights: torch.Tensor):
        raise NotImplementedError

    # --- the reduction (DPO/KTO) ---------------------------------------------------------------------------

    def _east_preference_loss(self, model, inputs, weights, return_outputs, num_items_in_batch):
        """TRL's compute_loss with `weights` held for the patched reduction of this one batch."""
        tap = self._east_tap(model, inputs, weights)
        try:
            result = super().compute_loss(tap, inputs, return_outputs, num_items_in_batch)
        finally:
            self._east_active = None  # never let one batch's weights reach the next
        tap.check()
        return result

    def compute_ref_log_probs(self, model, inputs):
        # DPO / KTO only. After __init__ the collator adds `weight`; the reference pass must not see it.
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != WEIGHT})

    def _east_hold(self, outputs, weights: torch.Tensor):
        """`_apply_weights` of DPO / KTO: keep the weights for the patched reduction, leave the outputs alone."""
        self._east_active = weights
        return outputs

    def _east_current(self) -> torch.Tensor:
        # Set by the policy forward of this batch, cleared by compute_loss after the batch (DPO reads it once per
        # loss type of a multi-loss `loss_type`).
        if self._east_active is None:
            raise RuntimeError("no weights for this batch: the policy forward was not observed")
        return self._east_active

    def _east_weighted_mean(self, per_row_loss: torch.Tensor) -> torch.Tensor:
        """mean_i(w_i * loss_i): replaces TRL's `per_sequence_loss.mean()`.

        The mean is over the micro-batch's rows. Trainer divides each micro-batch's loss by the number of
        accumulation steps and DDP / DeepSpeed average gradients over processes, so an optimizer step follows the
        mean over all its rows whenever every micro-batch holds the same number of rows: exactly when the number of
        rows is a multiple of per_device_train_batch_size x processes (with one process: of the batch size, or the
        last micro-batch is smaller). Otherwise accelerate fills the last batch of an epoch with rows from its start
        (even_batches), which no normaliser can undo; tests/test_distributed.py shows both."""
        weights = self._east_current().to(per_row_loss.device, per_row_loss.dtype)
        return (weights * per_row_loss).mean()

    def _east_weighted_nanmean(self, per_row_loss: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Like TRL's `losses.nanmean()`, each row's loss times its weight; `order` maps loss rows to batch rows."""
        weights = self._east_current().to(per_row_loss.device, per_row_loss.dtype)[order]
        return (weights * per_row_loss).nanmean()

    # --- metrics -------------------------------------------------------------------------------------------

    def _east_record(self, row_weights: torch.Tensor, local: torch.Tensor | None) -> None:
        if not self.model.training:
            return
        self._east_seen["weight"].append(row_weights.detach().float().cpu())
        if local is not None:
            self._east_seen["local_weight"].append(local.detach().float().cpu())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Trainer calls `log` on every process at the same steps (its loss is gathered there too), so the
        # collective in `_east_gathered_stats` runs on all ranks or on none.
        if self.model.training and "loss" in logs:
            for name, seen in self._east_seen.items():
                stats = self._east_gathered_stats(seen)
                seen.clear()
                if stats is not None:
                    logs[f"{name}/mean"], logs[f"{name}/min"], logs[f"{name}/max"] = stats
        super().log(logs, start_time)

    def _east_gathered_stats(self, seen: list[torch.Tensor]) -> tuple[float, float, float] | None:
        """(mean, min, max) of the values every process saw since the last log; None if none saw any."""
        values = torch.cat(seen) if seen else torch.zeros(0)
        local = torch.tensor([values.sum().item(), float(values.numel()),
                              values.min().item() if values.numel() else float("inf"),
                              values.max().item() if values.numel() else float("-inf")], dtype=torch.float64)
        if self.accelerator.num_processes > 1:
            local = self.accelerator.gather(local.to(self.accelerator.device)).cpu().view(-1, 4)
        else:
            local = local.view(1, 4)
        total, count = local[:, 0].sum().item(), local[:, 1].sum().item()
        if count == 0:
            return None
        return total / count, local[:, 2].min().item(), local[:, 3].max().item()
