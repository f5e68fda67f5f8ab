"""Weighted SFT on TRL 1.16.0: each example's token losses scaled by its row weight.

TRL version: 1.16.0. TRL methods overridden here: `SFTTrainer.__init__`, `SFTTrainer.compute_loss`,
`SFTTrainer._set_signature_columns_if_needed`, `SFTTrainer.log` and `Trainer._get_train_sampler` (the last three via
WeightedTrainerMixin).

Loss: sum_i w_i * (sum of token losses of example i) / (number of target tokens), with TRL's own normaliser
(`num_items_in_batch` under gradient accumulation, else the batch's target tokens). With all weights 1 it is
TRL's loss exactly. It is implemented by scaling row i of the fused LM head's per-token log-probs by w_i before
TRL's `compute_loss` sums them; the loss is linear in them, so value and gradient are exact.

Usage: `WeightedSFTTrainer(model, args=SFTConfig(...), train_dataset=ds, processing_class=tok,
local_weighting=None | "lw_p" | "lw_w", peft_config=...)` with `ds` rows {question_id, prompt, completion, weight};
normally built by `east.training.run.train`.
"""

from __future__ import annotations

from trl import SFTTrainer

from east.training.mixin import WeightedTrainerMixin


def check_sft_args(args, compute_loss_func) -> None:
    """Refuse settings where rows lose their identity or the loss bypasses the per-token log-probs."""
    if args is None:
        return
    if getattr(args, "packing", False) or getattr(args, "padding_free", False):
        raise ValueError("weighted SFT needs one example per row: packing and padding_free are not supported")
    if getattr(args, "loss_type", "nll") != "nll":
        raise ValueError(f"weighted SFT supports loss_type='nll' only, got {args.loss_type!r}")
    if getattr(args, "label_smoothing_factor", 0.0) > 0:
        raise ValueError("weighted SFT does not support label_smoothing_factor > 0 (its loss bypasses the weights)")
    if compute_loss_func is not None:
        raise ValueError("weighted SFT does not take a compute_loss_func (it would bypass the weights)")


class WeightedSFTTrainer(WeightedTrainerMixin, SFTTrainer):
    """`trl.SFTTrainer` whose loss weighs each example by its `weight` column (times an optional local weight)."""

    def __init__(self, model, args=None, *, train_dataset=None, local_weighting=None, **kwargs):
        check_sft_args(args, kwargs.get("compute_loss_func"))
        self._east_before_init(train_dataset, local_weighting)
        super().__init__(model, args=args, train_dataset=train_dataset, **kwargs)
        self._east_after_init()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        row_weights = self._east_pop_weight(inputs, inputs["input_ids"].size(0))
        tap = self._east_tap(model, inputs, row_weights)
        result = super().compute_loss(tap, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        tap.check()
        return result

    def _apply_weights(self, outputs, weights):
        # TRL's loss is -sum(log_probs) / normaliser, so scaling row i by w_i weighs example i's token losses.
        outputs.log_probs = outputs.log_probs * weights.to(outputs.log_probs.dtype).unsqueeze(-1)
        return outputs
