"""Local weighting baselines LW(P) and LW(W) (SPEC section 2, "Baselines"; paper appendix B.1).

Both weights are computed per response from the *current* policy, under `torch.no_grad`, from per-token
quantities on the response positions:

- LW(P): perplexity of the response, PPL = exp(-mean_t log pi(y_t | x, y_<t)), divided by its mean over the
  responses of the batch (so the batch mean is 1).
- LW(W), after WPO: w = exp(mean_t log(pi(y_t | ...) / sum_v pi(v | ...)^2)).

The trainers (east.training.mixin) feed these functions the per-token outputs of TRL's fused LM head
(`log_probs`, `log_sum_sq_probs`, `label_mask`), so no extra forward pass is needed. `token_stats_from_logits`
computes the same inputs from full logits, for hand checks and for models without the fused head.

Layouts: SFT and KTO weight each row (`row_local_weights`). DPO rows come as [chosen..., rejected...] and each
pair gets the product of its chosen and rejected weights (`pair_local_weights`); for LW(P) each half is
normalised by its own batch mean before the product (our choice: the paper only specifies the product for LW(W)).

The trainers multiply the row weight by the local weight (`local_weighting=` of every trainer and of `train`).
In the baseline arms the row weights are all 1, so the local weight is the weight; the product also keeps a
combination (EAST x LW) well defined. LW(P) is normalised per micro-batch (per_device_train_batch_size rows of one
process), so unlike the row weights it depends on per_device_train_batch_size; with that fixed it does not depend
on how micro-batches are spread over processes and accumulation steps (N processes = N times the accumulation).
Pooling the normaliser over processes would make it depend on the process count instead, so it is kept local.

Usage: `row_local_weights("lw_p", token_logps, mask)`; nothing here is invoked on its own.
"""

from __future__ import annotations

from typing import Literal

import torch

LocalWeighting = Literal["lw_p", "lw_w"]
KINDS = ("lw_p", "lw_w")


def check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"local_weighting must be None, 'lw_p' or 'lw_w', got {kind!r}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked positions of each row; 0 for a row without any (it then weighs exp(0) = 1)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


@torch.no_grad()
def perplexity(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PPL = exp(-(1/|y|) sum_t log pi(y_t)), one per row. Computed in float64: exp of a mean can overflow fp32."""
    return torch.exp(-masked_mean(token_logps.double(), mask))


@torch.no_grad()
def lw_p(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LW(P): per-row perplexity divided by its mean over the rows given."""
    ppl = perplexity(token_logps, mask)
    return (ppl / ppl.mean()).to(token_logps.dtype)


@torch.no_grad()
def lw_w(token_logps: torch.Tensor, log_sum_sq_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LW(W) (WPO): exp(mean_t [log pi(y_t) - log sum_v pi(v)^2]), one per row."""
    return torch.exp(masked_mean(token_logps.double() - log_sum_sq_probs.double(), mask)).to(token_logps.dtype)


@torch.no_grad()
def token_stats_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(token_logps, log_sum_sq_probs, mask) for next-token prediction from full logits.

    labels are input ids with -100 on positions that are not scored (prompt, padding); position t of the outputs
    scores labels[t + 1] from logits[t], the same alignment as TRL's fused LM head.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    log_probs = torch.log_softmax(logits, dim=-1)
    token_logps = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    log_sum_sq = torch.logsumexp(2 * log_probs, dim=-1) * mask
    return token_logps, log_sum_sq, mask


def _weights(kind: LocalWeighting, token_logps, mask, log_sum_sq_probs) -> torch.Tensor:
    if kind == "lw_p":
        return lw_p(token_logps, mask)
    if log_sum_sq_probs is None:
        raise ValueError("lw_w needs log_sum_sq_probs (sum_v pi(v)^2 per position)")
    return lw_w(token_logps, log_sum_sq_probs, mask)


@torch.no_grad()
def row_local_weights(
    kind: LocalWeighting,
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    log_sum_sq_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """One local weight per row (SFT: the positive response; KTO: each response)."""
    check_kind(kind)
    return _weights(kind, token_logps, mask, log_sum_sq_probs)


@torch.no_grad()
def pair_local_weights(
    kind: LocalWeighting,
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    log_sum_sq_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """One local weight per pair from 2B rows laid out [chosen_1..B, rejected_1..B]: w_chosen * w_rejected."""
    check_kind(kind)
    halves = [t.chunk(2, dim=0) if t is not None else (None, None) for t in (token_logps, mask, log_sum_sq_probs)]
    chosen = _weights(kind, halves[0][0], halves[1][0], halves[2][0])
    rejected = _weights(kind, halves[0][1], halves[1][1], halves[2][1])
    return chosen * rejected
