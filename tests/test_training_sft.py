"""WeightedSFTTrainer against stock trl.SFTTrainer on a tiny random Llama (tests/training_helpers.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from east.training.sft import WeightedSFTTrainer
from training_helpers import (
    assert_grads_close,
    clone,
    collate,
    common_args,
    forbid_weight_in_forward,
    grads,
    sft_rows,
    state,
    tiny_model,
    tiny_tokenizer,
    train_and_load,
)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok)


def weighted(model, tok, tmp_path, weights, **overrides):
    args = SFTConfig(**common_args(tmp_path / "w", **overrides))
    return WeightedSFTTrainer(clone(model), args=args, train_dataset=Dataset.from_list(sft_rows(weights)), processing_class=tok)


def stock(model, tok, tmp_path, rows, **overrides):
    args = SFTConfig(**common_args(tmp_path / "s", **overrides))
    ds = Dataset.from_list(rows).remove_columns("weight")
    return SFTTrainer(clone(model), args=args, train_dataset=ds, processing_class=tok)


def loss_and_grads(trainer, rows, scale_by_tokens=False):
    batch = collate(trainer, rows)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    # The normaliser TRL divides by when num_items_in_batch is None: the batch's target tokens
    normaliser = (batch["labels"][:, 1:] != -100).sum() if scale_by_tokens else 1
    (loss * normaliser).backward()
    return (loss * normaliser).detach(), grads(trainer.model)


def test_all_weights_one_is_stock_trl(model, tok, tmp_path):
    w = weighted(model, tok, tmp_path, [1.0] * 4)
    s = stock(model, tok, tmp_path, sft_rows([1.0] * 4))
    rows = [w.train_dataset[i] for i in range(4)]
    loss_w, grads_w = loss_and_grads(w, rows)
    loss_s, grads_s = loss_and_grads(s, [s.train_dataset[i] for i in range(4)])
    torch.testing.assert_close(loss_w, loss_s, rtol=1e-6, atol=0)
    assert_grads_close(grads_w, grads_s, rtol=1e-6, atol=1e-8)


def test_integer_weights_act_as_repetition(model, tok, tmp_path):
    weights = [2.0, 0.0, 1.0, 3.0]
    w = weighted(model, tok, tmp_path, weights)
    repeated = [row for row, k in zip(sft_rows([1.0] * 4), weights, strict=True) for _ in range(int(k))]
    s = stock(model, tok, tmp_path, repeated, per_device_train_batch_size=len(repeated))
    loss_w, grads_w = loss_and_grads(w, [w.train_dataset[i] for i in range(4)], scale_by_tokens=True)
    loss_s, grads_s = loss_and_grads(s, [s.train_dataset[i] for i in range(len(repeated))], scale_by_tokens=True)
    torch.testing.assert_close(loss_w, loss_s, rtol=1e-5, atol=0)
    assert_grads_close(grads_w, grads_s, rtol=1e-4, atol=1e-6)


def one_sgd_step(model, tok, tmp_path, weights, batch, accum):
    trainer = weighted(
        model, tok, tmp_path, weights, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant",
        per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
    )
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_gradient_accumulation_invariance(model, tok, tmp_path):
    weights = [0.5, 2.0, 1.0, 0.0]
    full = one_sgd_step(model, tok, tmp_path / "a", weights, batch=4, accum=1)
    accumulated = one_sgd_step(model, tok, tmp_path / "b", weights, batch=2, accum=2)
    moved = sum((full[n] - p).abs().sum() for n, p in model.named_parameters())
    assert moved > 0
    assert_grads_close(full, accumulated, rtol=1e-5, atol=1e-6)


def test_weight_never_reaches_forward_and_is_logged(model, tok, tmp_path):
    trainer = weighted(model, tok, tmp_path, [0.5, 2.0, 1.0, 0.0], max_steps=2, per_device_train_batch_size=2)
    calls = forbid_weight_in_forward(trainer.model)
    trainer.train()
    assert calls
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2  # two steps of two rows: each log's min and max are its two rows' weights
    assert sorted(x for e in logs for x in (e["weight/min"], e["weight/max"])) == [0.0, 0.5, 1.0, 2.0]
    assert sum(e["weight/mean"] for e in logs) / 2 == pytest.approx(0.875)


def test_refuses_missing_weight_column(model, tok, tmp_path):
    rows = Dataset.from_list(sft_rows([1.0])).remove_columns("weight")
    with pytest.raises(ValueError, match="no `weight` column"):
        WeightedSFTTrainer(clone(model), args=SFTConfig(**common_args(tmp_path)), train_dataset=rows, processing_class=tok)


@pytest.mark.parametrize("setting", [{"packing": True, "max_length": 64}, {"padding_free": True, "max_length": None}])
def test_refuses_packing_and_padding_free(model, tok, tmp_path, setting):
    with pytest.raises(ValueError, match="packing and padding_free"):
        weighted(model, tok, tmp_path, [1.0] * 4, **setting)


def test_refuses_negative_weight(model, tok, tmp_path):
    with pytest.raises(ValueError, match="finite and >= 0"):
        weighted(model, tok, tmp_path, [1.0, -1.0])


def test_train_saves_a_loadable_model_with_metrics(tmp_path):
    path, trained = train_and_load(tmp_path, "sft", sft_rows([1.0, 2.0, 0.5, 1.0]), local_weighting="lw_p")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    assert any(not torch.equal(a, b) for a, b in zip(state(trained).values(), state(base).values(), strict=True))
    metrics = json.loads((path.parent / "train_metrics.json").read_text())
    assert [e["step"] for e in metrics["loss_curve"]] == [1, 2]
    assert {"weight/mean", "weight/min", "weight/max", "local_weight/mean"} <= metrics["weight_stats"][0].keys()
    assert metrics["train_runtime"] > 0 and not list(tmp_path.joinpath("out").glob(".model*"))


def test_train_with_lora_saves_a_merged_model(tmp_path):
    _, trained = train_and_load(tmp_path, "sft", sft_rows([1.0, 2.0]), lora={"r": 4, "lora_alpha": 8})
    assert not any("lora" in name for name in trained.state_dict())


def test_resume_reaches_the_same_final_weights(tmp_path):
    rows = sft_rows([1.0, 2.0, 0.5, 1.0])
    path, uninterrupted = train_and_load(tmp_path, "sft", rows, num_train_epochs=2, save_steps=1)
    expected = state(uninterrupted)
    out = path.parent
    # Simulate a run killed after step 2 of 4: later checkpoints and the final model never got written
    for name in ("checkpoint-3", "checkpoint-4"):
        shutil.rmtree(out / "checkpoints" / name)
    shutil.rmtree(path)
    _, resumed = train_and_load(tmp_path, "sft", rows, num_train_epochs=2, save_steps=1, resume=True)
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoint-2")
    for name, tensor in state(resumed).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7)


def test_resume_ignores_checkpoints_of_another_training(tmp_path):
    # A stage rerun after its config changed (here the learning rate, then the rows) trains from the start, not from
    # the checkpoints the earlier settings left; the same settings still resume.
    rows = sft_rows([1.0, 2.0, 0.5, 1.0])
    path, _ = train_and_load(tmp_path, "sft", rows, num_train_epochs=2, save_steps=1)
    checkpoints = path.parent / "checkpoints"
    metrics = path.parent / "train_metrics.json"
    shutil.rmtree(checkpoints / "checkpoint-4")
    train_and_load(tmp_path, "sft", rows, num_train_epochs=2, save_steps=1, resume=True)
    assert json.loads(metrics.read_text())["resumed_from"].endswith("checkpoint-3")
    shutil.rmtree(checkpoints / "checkpoint-4")
    _, fresh = train_and_load(tmp_path, "sft", rows, num_train_epochs=2, save_steps=1, resume=True, learning_rate=3e-3)
    assert json.loads(metrics.read_text())["resumed_from"] is None
    _, expected = train_and_load(tmp_path / "other", "sft", rows, num_train_epochs=2, learning_rate=3e-3)
    for name, tensor in state(fresh).items():
        torch.testing.assert_close(tensor, state(expected)[name], rtol=1e-6, atol=1e-7)
    shutil.rmtree(checkpoints / "checkpoint-4")
    train_and_load(tmp_path, "sft", sft_rows([1.0, 2.0, 0.5, 0.25]), num_train_epochs=2, save_steps=1, resume=True,
                   learning_rate=3e-3)
    assert json.loads(metrics.read_text())["resumed_from"] is None
