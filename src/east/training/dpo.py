"""Weighted DPO on TRL 1.16.0: gradient (and value) of mean_i(w_i * loss_i), one weight per preference pair.

TRL version: 1.16.0. TRL methods overridden here: `DPOTrainer.__init__`, `DPOTrainer.compute_loss`,
`DPOTrainer._compute_loss` (TRL's own body with one line replaced, built by `patch_trl_method`),
and via WeightedTrainerMixin `DPOTrainer.compute_ref_log_probs`, `DPOTrainer._set_signature_columns_if_needed`
and `DPOTrainer.log`.

The one replaced line is TRL's reduction `per_sequence_loss.mean() * loss_weight`, which becomes
`self._east_weighted_mean(per_sequence_loss) * loss_weight`: everything before it (policy and reference
forwards, f-divergences, every pairwise loss type) is TRL's code unchanged. With all weights 1 it is TRL's loss.
Under gradient accumulation TRL divides each micro-batch mean by the number of micro-batches, so equal-sized
micro-batches give mean_i(w_i * loss_i) over the whole batch, as without accumulation.

Refused: loss types that mix rows across the batch (`aot`, `aot_unpaired` sort the batch) and `sft` (a token mean
over the whole batch, so it has no per-pair loss to weigh). TRL's `use_weighting` (WPO) is a different thing and
still multiplies if set; for the LW(W) baseline use `local_weighting="lw_w"`.

Usage: `WeightedDPOTrainer(model, args=DPOConfig(...), train_dataset=ds, processing_class=tok,
local_weighting=None | "lw_p" | "lw_w")` with rows {question_id, prompt, chosen, rejected, weight}.
"""

from __future__ import annotations

from trl import DPOTrainer

from east.training.mixin import WeightedTrainerMixin, patch_trl_method

UNWEIGHABLE_LOSS_TYPES = {"aot", "aot_unpaired", "sft"}


def check_dpo_args(args) -> None:
    loss_types = getattr(args, "loss_type", None) or ["sigmoid"]
    loss_types = [loss_types] if isinstance(loss_types, str) else loss_types
    refused = sorted(set(loss_types) & UNWEIGHABLE_LOSS_TYPES)
    if refused:
        raise ValueError(
            f"weighted DPO cannot use loss_type {refused}: aot/aot_unpaired mix rows across the batch and sft has no "
            "per-pair loss, so a per-pair weight is undefined"
        )


class WeightedDPOTrainer(WeightedTrainerMixin, DPOTrainer):
    """`trl.DPOTrainer` whose loss weighs each pair by its `weight` column (times an optional local weight)."""

    pairs = True

    def __init__(self, model, args=None, *, train_dataset=None, local_weighting=None, **kwargs):
        check_dpo_args(args)
        self._east_before_init(train_dataset, local_weighting)
        super().__init__(model, args=args, train_dataset=train_dataset, **kwargs)
        self._east_after_init()

    _compute_loss = patch_trl_method(
        DPOTrainer._compute_loss,
        "per_sequence_loss.mean() * loss_weight",
        "self._east_weighted_mean(per_sequence_loss) * loss_weight",
    )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pair_weights = self._east_pop_weight(inputs, inputs["input_ids"].size(0) // 2)
        return self._east_preference_loss(model, inputs, pair_weights, return_outputs, num_items_in_batch)

    _apply_weights = WeightedTrainerMixin._east_hold  # one weight per pair, read by the patched reduction
