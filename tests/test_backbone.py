"""Tests of the built-in backbone: character tokenizer and chat template, TRL-consistent tokenisation,
a short bootstrap that saves a loadable model, and the shipped checkpoint.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_backbone.py -q
"""

from __future__ import annotations

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from east.backbone import DEFAULTS, build_model, build_tokenizer, builtin_checkpoint, bootstrap
from east.backbone.tokenizer import CHARACTERS, CHAT_TEMPLATE, ROLE_TOKENS
from east.records import Question
from east.tasks.arith import ARITH_DEFAULT, ARITH_HARD, make_questions
from east.tasks.prompts import PAPER_SYSTEM_PROMPT, render_prompt


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_every_character_round_trips(tokenizer):
    ids = tokenizer(CHARACTERS)["input_ids"]
    assert len(ids) == len(CHARACTERS)
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == CHARACTERS


def test_task_and_system_prompt_characters_are_covered(tokenizer):
    texts = [PAPER_SYSTEM_PROMPT]
    for spec in (ARITH_DEFAULT, ARITH_HARD):
        texts += [q.question + q.solution for q in make_questions("test", 200, spec, seed=0)]
    assert set("".join(texts)) <= set(CHARACTERS)


def test_chat_template_renders_all_roles(tokenizer):
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "V"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|system|>S<|end|><|user|>U<|end|><|assistant|>A<|end|><|user|>V<|end|><|assistant|>"
    closed = tokenizer.apply_chat_template(messages[:3], tokenize=False)
    assert closed.endswith("<|assistant|>A<|end|>")


def test_rendered_prompt_round_trips_with_single_special_ids(tokenizer):
    question = make_questions("test", 1, ARITH_DEFAULT, seed=0)[0]
    prompt = render_prompt(tokenizer, question, system_prompt=PAPER_SYSTEM_PROMPT)
    ids = tokenizer(prompt)["input_ids"]
    assert tokenizer.decode(ids) == prompt
    special = {tokenizer.convert_tokens_to_ids(t) for t in ROLE_TOKENS.values()} | {tokenizer.eos_token_id}
    assert sum(i in special for i in ids) == prompt.count("<|")  # each marker is one id
    assert len(ids) == len(re.sub(r"<\|[a-z]+\|>", "#", prompt))
    assert tokenizer.decode(ids, skip_special_tokens=True) == PAPER_SYSTEM_PROMPT + question.question


def test_trl_tokenises_prompt_completion_as_prompt_then_completion_then_eos(tokenizer, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    questions = make_questions("warmup", 4, ARITH_DEFAULT, seed=0)
    rows = [{"prompt": render_prompt(tokenizer, q), "completion": q.solution} for q in questions]
    model = build_model(16, 1, 2, tokenizer=tokenizer)
    args = SFTConfig(
        output_dir=str(tmp_path), bf16=False, report_to="none", save_strategy="no", activation_checkpointing=False
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    for row, processed in zip(rows, trainer.train_dataset):
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        completion_ids = tokenizer(row["completion"])["input_ids"]
        assert processed["input_ids"] == prompt_ids + completion_ids + [tokenizer.eos_token_id]
        # TRL folds its completion mask into the labels: the loss sees the completion and the EOS only.
        assert processed["labels"] == [-100] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]
    # The same conversation closed by the chat template gives the same ids as the TRL row.
    for q, processed in zip(questions, trainer.train_dataset):
        messages = [{"role": "user", "content": q.question}, {"role": "assistant", "content": q.solution}]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        assert tokenizer(full)["input_ids"] == processed["input_ids"]


def test_build_model_is_a_small_llama(tokenizer):
    model = build_model(32, 2, 4, tokenizer=tokenizer, seed=1)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    again = build_model(32, 2, 4, tokenizer=tokenizer, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_short_bootstrap_saves_a_loadable_model(tmp_path):
    out = bootstrap(tmp_path / "tiny", n_rows=48, epochs=1, hidden=32, layers=1, heads=2, batch_size=16, lr=1e-3)
    assert out == (tmp_path / "tiny").resolve()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp dirs left behind"
    record = json.loads((out / "bootstrap.json").read_text())
    assert record["settings"]["n_rows"] == 48 and record["steps"] == 3
    assert record["train_seconds"] > 0
    assert " family " in record["machine"]["processor"] or record["machine"]["processor"] == "processor unknown"
    assert not (out / "training_args.bin").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHAT_TEMPLATE
    prompt = render_prompt(tok, Question("q", "Mia has 3 figs and buys 2. How many now?", "5"))
    inputs = tok(prompt, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] <= inputs["input_ids"].shape[1] + 5


def test_bootstrap_is_repeatable_bit_for_bit_on_one_machine(tmp_path):
    # What lets `east bootstrap` rebuild the shipped checkpoint exactly (on the processor family that made it) and
    # a `model.path: bootstrap` run directory be resumed: the same settings write the same bytes.
    settings = dict(n_rows=48, epochs=1, hidden=32, layers=1, heads=2, batch_size=16, lr=1e-3, few_shot_share=0.5)
    a, b = bootstrap(tmp_path / "a", **settings), bootstrap(tmp_path / "b", **settings)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    c = bootstrap(tmp_path / "c", **{**settings, "seed": 1})
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_shipped_checkpoint_loads_and_matches_the_defaults():
    path = builtin_checkpoint()
    assert not [p for p in path.iterdir() if p.is_dir()], "package data is flat"
    record = json.loads((path / "bootstrap.json").read_text())
    assert record["settings"] == DEFAULTS.record()
    assert not record["stopped_by_time_limit"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert tok.get_vocab() == build_tokenizer().get_vocab()
    assert model.config.hidden_size == DEFAULTS.hidden and model.config.num_hidden_layers == DEFAULTS.layers

    # Calibrated to about half right greedily; a handful right out of 20 shows the weights are trained.
    questions = make_questions("test", 20, ARITH_DEFAULT, seed=0)
    inputs = tok([render_prompt(tok, q) for q in questions], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    texts = tok.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    right = sum(t.strip().endswith(f"\\boxed{{{q.gold}}}") for t, q in zip(texts, questions))
    assert right >= 4, texts


def test_warmup_rows_without_few_shot_are_the_shipped_single_turn_rows():
    from east.backbone.bootstrap import warmup_rows
    from east.tasks.arith import make_questions

    tok = build_tokenizer()
    rows = warmup_rows(tok, DEFAULTS.spec, 40, 0)
    expected = [render_prompt(tok, q, system_prompt=None) for q in make_questions("warmup", 40, DEFAULTS.spec, 0)]
    assert [r["prompt"] for r in rows] == expected


def test_few_shot_warmup_rows_carry_earlier_worked_turns_like_dast_l_prompts():
    from east.backbone.bootstrap import warmup_rows

    tok = build_tokenizer()
    plain = warmup_rows(tok, DEFAULTS.spec, 200, 0)
    mixed = warmup_rows(tok, DEFAULTS.spec, 200, 0, few_shot_share=0.5, few_shot_max=2)
    turns = [r["prompt"].count("<|user|>") for r in mixed]
    assert set(turns) == {1, 2, 3}  # 0, 1 or 2 worked examples before the question
    assert 70 <= sum(t > 1 for t in turns) <= 130  # about half the rows
    assert [r["completion"] for r in mixed] == [r["completion"] for r in plain]  # same questions, same order
    for row, base in zip(mixed, plain):
        assert row["prompt"].endswith(base["prompt"].removeprefix(tok.bos_token or ""))  # the question comes last
