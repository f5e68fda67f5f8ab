"""Prompts are tokenised exactly alike for sampling, evaluation and training (chat-template special tokens).

The rendered prompt string carries its own special tokens; the samplers tokenise it without adding any
(`prompt_ids`). TRL's SFTTrainer tokenises string prompts WITH the tokenizer's special tokens, so the
prompt part of every prepared training row must still equal `prompt_ids` -- for the built-in tokenizer
(which adds nothing), for a tokenizer without a chat template (plain-text fallback), and for a
Llama-3-style tokenizer whose chat template writes a BOS that the tokenizer would also add by itself.
"""

from __future__ import annotations

import copy
import os

import pytest
import transformers
from datasets import Dataset
from tokenizers import processors
from trl import SFTConfig

from east.backbone import builtin_checkpoint
from east.models import load_model_and_tokenizer
from east.records import Question
from east.tasks.prompts import PLAIN_TEMPLATE, auto_prefix, prompt_ids, render_prompt, training_prompt
from east.training.sft import WeightedSFTTrainer

transformers.utils.logging.set_verbosity_error()
os.environ.setdefault("TQDM_DISABLE", "1")

BOS = "<|begin_of_text|>"
QUESTION = Question("q1", "Mia has 3 figs and buys 2. How many now?", "5", None, {})
SHOTS = [Question("w1", "Bo has 4 pens and loses 1. How many now?", "3", "4-1=3\n\\boxed{3}", {}),
         Question("w2", "Ana has 5 cups and doubles them. How many now?", "10", "5*2=10\n\\boxed{10}", {})]
SYSTEM = "Please reason step by step."
COMPLETION = "3+2=5\n\\boxed{5}"


@pytest.fixture(scope="module")
def builtin():
    model, tokenizer = load_model_and_tokenizer(str(builtin_checkpoint()))
    return model, tokenizer


@pytest.fixture(scope="module")
def llama3_style(builtin):
    """The built-in tokenizer made to behave like Llama 3's: a BOS special token that the tokenizer adds to
    every text by itself (post-processor), and a chat template that writes the same BOS first."""
    _, tokenizer = builtin
    model, _ = load_model_and_tokenizer(str(builtin_checkpoint()))  # fresh: trainers touch the shared one
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"bos_token": BOS})
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.bos_token_id)])
    tok.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    assert tok("a")["input_ids"][0] == tok.bos_token_id  # the tokenizer really adds a BOS of its own
    model.resize_token_embeddings(len(tok))
    return model, tok


@pytest.fixture(scope="module")
def plain(builtin):
    model, tokenizer = builtin
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    return model, tok


def trl_prompt_ids(model, tokenizer, prompt: str, tmp_path) -> list[int]:
    """The prompt part of the row east's SFT trainer (TRL's SFTTrainer underneath) prepares for {prompt, completion}."""
    rows = [{"question_id": "q1", "prompt": prompt, "completion": COMPLETION, "weight": 1.0}]
    config = SFTConfig(output_dir=str(tmp_path), report_to="none", max_length=1024, per_device_train_batch_size=1,
                       bf16=False, use_cpu=True, disable_tqdm=True)
    trainer = WeightedSFTTrainer(model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    row = trainer.train_dataset[0]
    start = next(i for i, label in enumerate(row["labels"]) if label != -100)  # the completion's first token
    completion_ids = tokenizer(COMPLETION, add_special_tokens=False)["input_ids"]
    assert row["input_ids"][start:start + len(completion_ids)] == completion_ids
    return row["input_ids"][:start]


class RecordingTokenizer:
    """Delegates to a tokenizer and records the ids of every call, to see what the sampler feeds the model."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.calls: list[tuple[list[str], dict, list[list[int]]]] = []

    def __call__(self, texts, **kwargs):
        out = self._tokenizer(texts, **kwargs)
        self.calls.append((list(texts), kwargs, [list(ids) for ids in out["input_ids"]]))
        return out

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __len__(self):
        return len(self._tokenizer)


def sampler_prompt_ids(model, tokenizer, prompt: str) -> list[int]:
    from east.sampling.hf import sample

    recorder = RecordingTokenizer(tokenizer)
    sample(model, recorder, [prompt], 1, temperature=0.0, max_new_tokens=1, seed=0)
    [(texts, kwargs, ids)] = [c for c in recorder.calls if c[0] == [prompt]]
    return ids[0]


# ----------------------------------------------------------------------------------------------------
# Rendering


def test_chat_template_renders_system_and_few_shot_turns(builtin):
    _, tok = builtin
    prompt = render_prompt(tok, QUESTION, SYSTEM, SHOTS)
    assert prompt == (
        f"<|system|>{SYSTEM}<|end|>"
        f"<|user|>{SHOTS[0].question}<|end|><|assistant|>{SHOTS[0].solution}<|end|>"
        f"<|user|>{SHOTS[1].question}<|end|><|assistant|>{SHOTS[1].solution}<|end|>"
        f"<|user|>{QUESTION.question}<|end|><|assistant|>"
    )
    assert render_prompt(tok, QUESTION) == f"<|user|>{QUESTION.question}<|end|><|assistant|>"


def test_chat_markers_are_single_special_tokens(builtin):
    _, tok = builtin
    ids = prompt_ids(tok, render_prompt(tok, QUESTION, SYSTEM))
    for marker in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"):
        assert tok.convert_tokens_to_ids(marker) in ids
    assert ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")  # generation prompt last, nothing after it
    assert tok.decode(ids, skip_special_tokens=False) == render_prompt(tok, QUESTION, SYSTEM)


def test_tokenizer_without_chat_template_falls_back_to_plain_text(plain):
    _, tok = plain
    assert render_prompt(tok, QUESTION) == PLAIN_TEMPLATE.format(system="", question=QUESTION.question)
    assert render_prompt(tok, QUESTION, SYSTEM, SHOTS) == (
        f"{SYSTEM}\n\n"
        f"Question: {SHOTS[0].question}\nAnswer: {SHOTS[0].solution}\n\n"
        f"Question: {SHOTS[1].question}\nAnswer: {SHOTS[1].solution}\n\n"
        f"Question: {QUESTION.question}\nAnswer:"
    )
    assert "<|user|>" not in render_prompt(tok, QUESTION, SYSTEM, SHOTS)


def test_few_shot_example_without_solution_is_refused(builtin):
    _, tok = builtin
    with pytest.raises(ValueError, match="no worked solution"):
        render_prompt(tok, QUESTION, None, [Question("w", "Q?", "1", None, {})])


# ----------------------------------------------------------------------------------------------------
# Training rows and sampler prompts tokenise alike


@pytest.mark.parametrize("system, shots", [(None, []), (SYSTEM, SHOTS)], ids=["bare", "system+few-shot"])
def test_builtin_training_row_prompt_equals_sampler_prompt(builtin, tmp_path, system, shots):
    model, tok = builtin
    prompt = render_prompt(tok, QUESTION, system, shots)
    expected = prompt_ids(tok, prompt)
    assert auto_prefix(tok) == "" and training_prompt(tok, prompt) == prompt  # nothing to undo here
    assert trl_prompt_ids(model, tok, training_prompt(tok, prompt), tmp_path) == expected
    assert sampler_prompt_ids(model, tok, prompt) == expected


def test_plain_template_training_row_prompt_equals_sampler_prompt(plain, tmp_path):
    model, tok = plain
    prompt = render_prompt(tok, QUESTION, SYSTEM, SHOTS)
    expected = prompt_ids(tok, prompt)
    assert trl_prompt_ids(model, tok, training_prompt(tok, prompt), tmp_path) == expected
    assert sampler_prompt_ids(model, tok, prompt) == expected


def test_llama3_style_template_gives_exactly_one_bos(llama3_style, tmp_path):
    model, tok = llama3_style
    bos = tok.bos_token_id
    prompt = render_prompt(tok, QUESTION, SYSTEM, SHOTS)
    assert prompt.startswith(BOS) and prompt.count(BOS) == 1
    ids = prompt_ids(tok, prompt)
    assert ids[0] == bos and ids.count(bos) == 1  # the template's BOS, once
    assert sampler_prompt_ids(model, tok, prompt) == ids
    # TRL adds the tokenizer's own BOS to a string prompt: handed the rendered prompt as is, the row would
    # start with two BOS. training_prompt leaves the BOS to the tokenizer, so the row sees exactly `ids`.
    assert trl_prompt_ids(model, tok, prompt, tmp_path / "raw")[:2] == [bos, bos]
    assert training_prompt(tok, prompt) == prompt[len(BOS):]
    assert trl_prompt_ids(model, tok, training_prompt(tok, prompt), tmp_path / "fixed") == ids


def test_bos_adding_tokenizer_without_template_gets_its_bos_once(llama3_style, tmp_path):
    model, tok = llama3_style
    tok = copy.deepcopy(tok)
    tok.chat_template = None
    prompt = render_prompt(tok, QUESTION)
    assert prompt == BOS + PLAIN_TEMPLATE.format(system="", question=QUESTION.question)
    ids = prompt_ids(tok, prompt)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids == tok(PLAIN_TEMPLATE.format(system="", question=QUESTION.question))["input_ids"]  # as a base model sees text
    assert sampler_prompt_ids(model, tok, prompt) == ids
    assert trl_prompt_ids(model, tok, training_prompt(tok, prompt), tmp_path) == ids


def test_east_train_hands_trl_prompts_with_one_bos(llama3_style, tmp_path, monkeypatch):
    """PENDING a patch to east/training/run.py (see the report): `train()` must pass each row's prompt through
    `training_prompt`, or every training row of a Llama-3 model starts with two BOS while sampling used one."""
    from east.training import run as training_run

    model, tok = llama3_style
    path = tmp_path / "llama3-style"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    prompt = render_prompt(tok, QUESTION, SYSTEM)
    seen = {}

    class Captured(Exception):
        pass

    class Capturing(WeightedSFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["row"] = self.train_dataset[0]
            raise Captured

    monkeypatch.setitem(training_run.TRAINERS, "sft", (Capturing, SFTConfig))
    rows = [{"question_id": "q1", "prompt": prompt, "completion": COMPLETION, "weight": 1.0}]
    with pytest.raises(Captured):
        training_run.train(rows, path, tmp_path / "out", loss="sft", learning_rate=1e-4, num_train_epochs=1,
                           per_device_train_batch_size=1)
    row = seen["row"]
    start = next(i for i, label in enumerate(row["labels"]) if label != -100)
    assert row["input_ids"][:start] == prompt_ids(tok, prompt)
