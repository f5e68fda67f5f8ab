"""LW(P) and LW(W) against hand computation on a tiny model, and as used by the trainers."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer, SFTConfig
from trl.trainer.utils import add_fused_lm_head

from east.training.dpo import WeightedDPOTrainer
from east.training.local_weights import pair_local_weights, row_local_weights, token_stats_from_logits
from east.training.mixin import ALL_FUSED_OUTPUTS
from east.training.sft import WeightedSFTTrainer
from training_helpers import clone, collate, common_args, dpo_rows, sft_rows, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok, seed=3).eval()


@pytest.fixture(scope="module")
def batch(tok):
    """Three prompt+response rows, right-padded, labels -100 on prompt and padding."""
    pairs = [("<|user|>1+1?<|assistant|>", "2"), ("<|user|>2+5?<|assistant|>", "7, I think"), ("<|user|>9?<|assistant|>", "nine.")]
    ids, labels = [], []
    for prompt, response in pairs:
        p, r = tok(prompt)["input_ids"], tok(response)["input_ids"]
        ids.append(p + r)
        labels.append([-100] * len(p) + r)
    width = max(map(len, ids))
    input_ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
    labels = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
    return input_ids, labels, (labels != -100).long() | (input_ids != tok.pad_token_id).long()


def by_hand(model, input_ids, labels):
    """Per row: (PPL, WPO weight) with explicit loops over the response tokens."""
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.double()
    ppl, wpo = [], []
    for row in range(input_ids.size(0)):
        logps, ratios = [], []
        for t in range(1, input_ids.size(1)):
            if labels[row, t] == -100:
                continue
            probs = torch.softmax(logits[row, t - 1], dim=-1)
            p_y = probs[labels[row, t]].item()
            logps.append(math.log(p_y))
            ratios.append(math.log(p_y / (probs**2).sum().item()))
        ppl.append(math.exp(-sum(logps) / len(logps)))
        wpo.append(math.exp(sum(ratios) / len(ratios)))
    ppl = torch.tensor(ppl, dtype=torch.float64)
    return ppl / ppl.mean(), torch.tensor(wpo, dtype=torch.float64)


def test_row_weights_from_logits_match_hand(model, batch):
    input_ids, labels, _ = batch
    hand_p, hand_w = by_hand(model, input_ids, labels)
    with torch.no_grad():
        logps, lss, mask = token_stats_from_logits(model(input_ids=input_ids).logits, labels)
    torch.testing.assert_close(row_local_weights("lw_p", logps, mask).double(), hand_p, rtol=1e-5, atol=0)
    torch.testing.assert_close(row_local_weights("lw_w", logps, mask, lss).double(), hand_w, rtol=1e-5, atol=0)
    assert row_local_weights("lw_p", logps, mask).mean().item() == pytest.approx(1.0)


def test_row_weights_from_trl_fused_head_match_hand(model, batch):
    input_ids, labels, attention_mask = batch
    fused = clone(model)
    add_fused_lm_head(fused, outputs=ALL_FUSED_OUTPUTS)
    with torch.no_grad():
        out = fused(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    hand_p, hand_w = by_hand(model, input_ids, labels)
    torch.testing.assert_close(row_local_weights("lw_p", out.log_probs, out.label_mask).double(), hand_p, rtol=1e-5, atol=0)
    got_w = row_local_weights("lw_w", out.log_probs, out.label_mask, out.log_sum_sq_probs).double()
    torch.testing.assert_close(got_w, hand_w, rtol=1e-5, atol=0)


def test_pair_weights_are_products_of_halves(model, batch):
    input_ids, labels, _ = batch
    with torch.no_grad():
        logps, lss, mask = token_stats_from_logits(model(input_ids=input_ids).logits, labels)
    # rows [a, b, a, c] as pairs (a, a) and (b, c)
    idx = torch.tensor([0, 1, 0, 2])
    logps, lss, mask = logps[idx], lss[idx], mask[idx]
    wpo = row_local_weights("lw_w", logps, mask, lss)
    torch.testing.assert_close(pair_local_weights("lw_w", logps, mask, lss), wpo[:2] * wpo[2:])
    chosen, rejected = row_local_weights("lw_p", logps[:2], mask[:2]), row_local_weights("lw_p", logps[2:], mask[2:])
    torch.testing.assert_close(pair_local_weights("lw_p", logps, mask), chosen * rejected)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="local_weighting"):
        row_local_weights("lw_x", torch.zeros(1, 1), torch.ones(1, 1))


@pytest.mark.parametrize("kind", ["lw_p", "lw_w"])
def test_sft_trainer_multiplies_row_weight_by_local_weight(model, tok, tmp_path, kind):
    weights = [1.0, 2.0, 0.5, 1.0]
    trainer = WeightedSFTTrainer(
        clone(model).train(), args=SFTConfig(**common_args(tmp_path)), train_dataset=Dataset.from_list(sft_rows(weights)),
        processing_class=tok, local_weighting=kind,
    )
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = collate(trainer, rows)
    labels = batch["labels"]
    hand_p, hand_w = by_hand(model, batch["input_ids"], labels)
    local = hand_p if kind == "lw_p" else hand_w
    with torch.no_grad():
        logps, _, mask = token_stats_from_logits(model(input_ids=batch["input_ids"]).logits, labels)
    row_w = torch.tensor([r["weight"] for r in rows], dtype=torch.float64)
    expected = -(row_w * local * logps.double().sum(-1)).sum() / mask.sum()
    loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)


def test_dpo_lw_w_equals_trl_wpo(model, tok, tmp_path):
    # Our LW(W) for DPO (product of chosen and rejected WPO weights) is what TRL's use_weighting computes.
    policy = clone(model).train()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = dpo_rows([1.0] * 4)
    ours = WeightedDPOTrainer(
        clone(policy), ref_model=clone(model), args=DPOConfig(**common_args(tmp_path / "a")),
        train_dataset=Dataset.from_list(rows), processing_class=tok, local_weighting="lw_w",
    )
    wpo = DPOTrainer(
        clone(policy), ref_model=clone(model), args=DPOConfig(**common_args(tmp_path / "b", use_weighting=True)),
        train_dataset=Dataset.from_list(rows).remove_columns("weight"), processing_class=tok,
    )
    loss_ours = ours.compute_loss(ours.model, collate(ours, [ours.train_dataset[i] for i in range(4)]))
    loss_wpo = wpo.compute_loss(wpo.model, collate(wpo, [wpo.train_dataset[i] for i in range(4)]))
    torch.testing.assert_close(loss_ours, loss_wpo, rtol=1e-5, atol=0)
