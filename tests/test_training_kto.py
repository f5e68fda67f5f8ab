"""WeightedKTOTrainer against stock trl.KTOTrainer on a tiny random Llama (tests/training_helpers.py)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl import KTOConfig, KTOTrainer

from east.training.kto import WeightedKTOTrainer
from training_helpers import (
    assert_grads_close,
    clone,
    collate,
    common_args,
    forbid_weight_in_forward,
    grads,
    kto_rows,
    tiny_model,
    tiny_tokenizer,
    train_and_load,
)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    m, ref = tiny_model(tok, seed=2), tiny_model(tok, seed=2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m, ref


def config(tmp_path, **overrides):
    return KTOConfig(**common_args(tmp_path, beta=0.5, **overrides))


def build(cls, model, tok, tmp_path, rows, **overrides):
    policy, ref = model
    ds = Dataset.from_list(rows)
    if cls is KTOTrainer:
        ds = ds.remove_columns("weight")
    return cls(clone(policy), ref_model=clone(ref), args=config(tmp_path, **overrides), train_dataset=ds,
               processing_class=tok)


def loss_and_grads(trainer, n):
    batch = collate(trainer, [trainer.train_dataset[i] for i in range(n)])
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), grads(trainer.model)


def test_all_weights_one_is_stock_trl(model, tok, tmp_path):
    rows = kto_rows([1.0] * 4)
    loss_w, grads_w = loss_and_grads(build(WeightedKTOTrainer, model, tok, tmp_path / "w", rows), 4)
    loss_s, grads_s = loss_and_grads(build(KTOTrainer, model, tok, tmp_path / "s", rows), 4)
    torch.testing.assert_close(loss_w, loss_s, rtol=1e-6, atol=0)
    assert_grads_close(grads_w, grads_s, rtol=1e-6, atol=1e-8)


def test_integer_weights_act_as_repetition(model, tok, tmp_path):
    # apo_zero_unpaired has no KL term, so the batch [r0, r0, r2] is exactly rows (r0, r1, r2) weighted (2, 0, 1)
    rows = kto_rows([2.0, 0.0, 1.0], labels=[True, False, False])
    repeated = [rows[0], rows[0], rows[2]]
    kw = dict(loss_type="apo_zero_unpaired", per_device_train_batch_size=3)
    loss_w, grads_w = loss_and_grads(build(WeightedKTOTrainer, model, tok, tmp_path / "w", rows, **kw), 3)
    loss_s, grads_s = loss_and_grads(build(KTOTrainer, model, tok, tmp_path / "s", repeated, **kw), 3)
    torch.testing.assert_close(loss_w, loss_s, rtol=1e-5, atol=0)
    assert_grads_close(grads_w, grads_s, rtol=1e-4, atol=1e-6)


def test_kto_loss_is_linear_in_row_weights_with_an_unweighted_kl(model, tok, tmp_path):
    # With the KL term, loss(w) = sum_j w_j * loss(B e_j) / B: each row counts w_j times, the shared (detached) KL
    # baseline is the same whatever the weights.
    weights = [0.5, 2.0, 1.5, 0.0]
    trainer = build(WeightedKTOTrainer, model, tok, tmp_path, kto_rows(weights))
    batch_rows = [trainer.train_dataset[i] for i in range(4)]

    def run(w):
        rows = [{**row, "weight": x} for row, x in zip(batch_rows, w, strict=True)]
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, collate(trainer, rows))
        loss.backward()
        mode = "train" if trainer.model.training else "eval"
        return loss.detach(), grads(trainer.model), trainer._metrics[mode]["kl"][-1]

    loss, g, kl = run(weights)
    parts = [run([4.0 * (i == j) for i in range(4)]) for j in range(4)]
    torch.testing.assert_close(loss, sum(w * p[0] for w, p in zip(weights, parts, strict=True)) / 4, rtol=1e-5, atol=1e-7)
    combined = {n: sum(w * p[1][n] for w, p in zip(weights, parts, strict=True)) / 4 for n in g}
    assert_grads_close(g, combined, rtol=1e-4, atol=1e-6)
    assert all(p[2] == kl for p in parts)


def one_sgd_step(model, tok, tmp_path, weights, batch, accum):
    trainer = build(
        WeightedKTOTrainer, model, tok, tmp_path, kto_rows(weights), loss_type="apo_zero_unpaired", optim="sgd",
        learning_rate=1.0, lr_scheduler_type="constant", per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
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
    ref_calls = forbid_weight_in_forward(ref)
    policy_calls = forbid_weight_in_forward(policy)
    trainer = WeightedKTOTrainer(
        policy, ref_model=ref,
        args=config(tmp_path, precompute_ref_log_probs=precompute, max_steps=2, per_device_train_batch_size=2),
        train_dataset=Dataset.from_list(kto_rows([0.5, 2.0, 1.0, 0.0])), processing_class=tok,
    )
    trainer.train()
    assert policy_calls and ref_calls
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [(e["weight/min"], e["weight/max"]) for e in logs] == [(0.5, 2.0), (0.0, 1.0)]  # sequential sampler


def test_refuses_missing_weight_column(model, tok, tmp_path):
    with pytest.raises(ValueError, match="no `weight` column"):
        rows = [{k: v for k, v in row.items() if k != "weight"} for row in kto_rows([1.0, 1.0])]
        build(WeightedKTOTrainer, model, tok, tmp_path, rows)


def test_train_saves_a_loadable_model(tmp_path):
    path, trained = train_and_load(tmp_path, "kto", kto_rows([1.0, 2.0, 0.5, 1.0]), beta=0.1, local_weighting="lw_w")
    assert type(trained).__name__ == "LlamaForCausalLM"
    assert (path.parent / "train_metrics.json").is_file()
