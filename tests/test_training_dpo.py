"""WeightedDPOTrainer against stock trl.DPOTrainer on a tiny random Llama (tests/training_helpers.py)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from east.training.dpo import WeightedDPOTrainer
from training_helpers import (
    assert_grads_close,
    clone,
    collate,
    common_args,
    dpo_rows,
    forbid_weight_in_forward,
    grads,
    tiny_model,
    tiny_tokenizer,
    train_and_load,
)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    # Perturb away from init so that policy != reference and the loss is not at its symmetric point
    m = tiny_model(tok, seed=1)
    ref = tiny_model(tok, seed=1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m, ref


def config(tmp_path, **overrides):
    return DPOConfig(**common_args(tmp_path, beta=0.5, **overrides))


def weighted(model, tok, tmp_path, weights, **overrides):
    policy, ref = model
    ds = Dataset.from_list(dpo_rows(weights))
    return WeightedDPOTrainer(
        clone(policy), ref_model=clone(ref), args=config(tmp_path / "w", **overrides), train_dataset=ds,
        processing_class=tok,
    )


def stock(model, tok, tmp_path, rows, **overrides):
    policy, ref = model
    ds = Dataset.from_list(rows).remove_columns("weight")
    return DPOTrainer(
        clone(policy), ref_model=clone(ref), args=config(tmp_path / "s", **overrides), train_dataset=ds,
        processing_class=tok,
    )


def loss_and_grads(trainer, rows):
    batch = collate(trainer, rows)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), grads(trainer.model)


@pytest.mark.parametrize("loss_type", [["sigmoid", "bco_pair"]])  # two loss types: the weights are read per type
def test_all_weights_one_is_stock_trl(model, tok, tmp_path, loss_type):
    w = weighted(model, tok, tmp_path, [1.0] * 4, loss_type=loss_type)
    s = stock(model, tok, tmp_path, dpo_rows([1.0] * 4), loss_type=loss_type)
    loss_w, grads_w = loss_and_grads(w, [w.train_dataset[i] for i in range(4)])
    loss_s, grads_s = loss_and_grads(s, [s.train_dataset[i] for i in range(4)])
    torch.testing.assert_close(loss_w, loss_s, rtol=1e-6, atol=0)
    assert_grads_close(grads_w, grads_s, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_weights_act_on_pairs(model, tok, tmp_path, loss_type):
    # Weights [3, 0] on two pairs: mean_i(w_i * loss_i) = 1.5 * loss_1, the first pair alone scaled by 3 / 2
    w = weighted(model, tok, tmp_path, [3.0, 0.0], loss_type=loss_type)
    s = stock(model, tok, tmp_path, dpo_rows([1.0]), loss_type=loss_type)
    loss_w, grads_w = loss_and_grads(w, [w.train_dataset[i] for i in range(2)])
    loss_s, grads_s = loss_and_grads(s, [s.train_dataset[0]])
    torch.testing.assert_close(loss_w, 1.5 * loss_s, rtol=1e-5, atol=0)
    assert_grads_close(grads_w, grads_s, scale=1.5, rtol=1e-4, atol=1e-6)  # padding: fp32 noise


def one_sgd_step(model, tok, tmp_path, weights, batch, accum):
    trainer = weighted(
        model, tok, tmp_path, weights, optim="sgd", learning_rate=1.0, lr_scheduler_type="constant",
        per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
    )
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_gradient_accumulation_invariance(model, tok, tmp_path):
    weights = [0.5, 2.0, 1.0, 0.0]
    full = one_sgd_step(model, tok, tmp_path / "a", weights, batch=4, accum=1)
    accumulated = one_sgd_step(model, tok, tmp_path / "b", weights, batch=2, accum=2)
    assert sum((full[n] - p).abs().sum() for n, p in model[0].named_parameters()) > 0
    assert_grads_close(full, accumulated, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precompute", [False, True])
def test_weight_never_reaches_policy_or_reference_forward(model, tok, tmp_path, precompute):
    policy, ref = clone(model[0]), clone(model[1])
    ref_calls = forbid_weight_in_forward(ref)  # before the trainer: precompute runs inside __init__
    trainer = WeightedDPOTrainer(
        policy, ref_model=ref, args=config(tmp_path, precompute_ref_log_probs=precompute, max_steps=2,
                                           per_device_train_batch_size=2),
        train_dataset=Dataset.from_list(dpo_rows([0.5, 2.0, 1.0, 0.0])), processing_class=tok,
    )
    policy_calls = forbid_weight_in_forward(trainer.model)
    trainer.train()
    assert policy_calls and ref_calls
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert sorted(x for e in logs for x in (e["weight/min"], e["weight/max"])) == [0.0, 0.5, 1.0, 2.0]


@pytest.mark.parametrize("loss_type", ["aot", "aot_unpaired", "sft", ["sigmoid", "aot"]])
def test_refuses_losses_that_mix_rows(model, tok, tmp_path, loss_type):
    with pytest.raises(ValueError, match="weighted DPO cannot use loss_type"):
        weighted(model, tok, tmp_path, [1.0] * 4, loss_type=loss_type)


def test_refuses_missing_weight_column(model, tok, tmp_path):
    ds = Dataset.from_list(dpo_rows([1.0])).remove_columns("weight")
    with pytest.raises(ValueError, match="no `weight` column"):
        WeightedDPOTrainer(clone(model[0]), ref_model=clone(model[1]), args=config(tmp_path), train_dataset=ds,
                           processing_class=tok)


def test_train_saves_a_loadable_model(tmp_path):
    path, trained = train_and_load(tmp_path, "dpo", dpo_rows([1.0, 2.0, 0.5, 1.0]), beta=0.1, local_weighting="lw_w")
    assert type(trained).__name__ == "LlamaForCausalLM"
    assert (path.parent / "train_metrics.json").is_file()
