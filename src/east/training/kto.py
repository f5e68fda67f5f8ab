"""Weighted KTO on TRL 1.16.0: gradient (and value) of mean_i(w_i * loss_i), one weight per row.

TRL version: 1.16.0. TRL methods overridden here: `KTOTrainer.__init__`, `KTOTrainer.compute_loss`,
`KTOTrainer._compute_loss` (TRL's own body with two lines replaced, built by `patch_trl_method`),
and via WeightedTrainerMixin `KTOTrainer.compute_ref_log_probs`, `KTOTrainer._set_signature_columns_if_needed`
and `KTOTrainer.log`.

TRL's reduction `losses.nanmean()` becomes `self._east_weighted_nanmean(losses, torch.cat((chosen_idx,
rejected_idx)))`: TRL concatenates the desirable rows' losses, then the undesirable rows', so the index order maps
each loss back to its batch row and weight. Exact choices:
- Desirable and undesirable rows are weighed alike: row i's loss, already multiplied by TRL's
  `desirable_weight` / `undesirable_weight`, is multiplied by w_i; the mean stays over the rows of the batch
  (TRL's nanmean), not over the sum of weights, so weights of mean 1 keep TRL's scale.
- The KL term z_0 is NOT weighted. TRL estimates it from the batch's mismatched (prompt, completion) pairs, detached,
  as the reference point every row's reward is compared with; a row weight says how much that row's loss counts,
  not how the shared baseline is estimated. So weights change how rows count, never the baseline they are scored
  against. (Consequence, as in stock TRL: with loss_type="kto" the batch composition, and so gradient
  accumulation, changes the KL estimate; "apo_zero_unpaired" has no KL term.)
- z_0 comes from the micro-batch's own rows on each process, as TRL does under gradient accumulation, NOT from
  the rows of all processes (TRL 1.16 gathers it with `gather_for_metrics`; that line is replaced too). So
  N processes with per_device_train_batch_size B give the same model as 1 process with the same B and N times
  the accumulation steps: the result does not depend on how micro-batches are spread over processes. (TRL builds
  the KL pairs within blocks of B rows, so B itself is part of the estimate either way.)
Every supported KTO loss type ("kto", "apo_zero_unpaired") is per row, so there is nothing to refuse.

Usage: `WeightedKTOTrainer(model, args=KTOConfig(...), train_dataset=ds, processing_class=tok,
local_weighting=None | "lw_p" | "lw_w")` with rows {question_id, prompt, completion, label, weight}. KTO samples
sequentially (the KL pairs are built within fixed batches), so shuffle rows before; `east.training.run.train` does.
"""

from __future__ import annotations

from trl import KTOTrainer

from east.training.mixin import WeightedTrainerMixin, patch_trl_method


class WeightedKTOTrainer(WeightedTrainerMixin, KTOTrainer):
    """`trl.KTOTrainer` whose loss weighs each row by its `weight` column (times an optional local weight)."""

    def __init__(self, model, args=None, *, train_dataset=None, local_weighting=None, **kwargs):
        self._east_before_init(train_dataset, local_weighting)
        super().__init__(model, args=args, train_dataset=train_dataset, **kwargs)
        self._east_after_init()

    _compute_loss = patch_trl_method(
        KTOTrainer._compute_loss,
        "loss = losses.nanmean()",
        "loss = self._east_weighted_nanmean(losses, torch.cat((chosen_idx, rejected_idx)))",
        also=(("kl = self.accelerator.gather_for_metrics(kl).mean().clamp(min=0)", "kl = kl.clamp(min=0)"),),
    )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        row_weights = self._east_pop_weight(inputs, inputs["input_ids"].size(0))
        return self._east_preference_loss(model, inputs, row_weights, return_outputs, num_items_in_batch)

    _apply_weights = WeightedTrainerMixin._east_hold  # one weight per row, read by the patched reduction
