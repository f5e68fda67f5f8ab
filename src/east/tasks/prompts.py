"""Prompt strings: a question (plus optional system prompt and few-shot examples) rendered with the
model's own chat template, or a plain-text template for models without one.

The rendered string is what sampling feeds the model, what is saved with the samples, and what the
training rows carry as `prompt`, so generation and training see exactly the same tokens.

Special tokens: the rendered string carries every special token the model should see (a chat template
writes its own BOS, e.g. Llama 3's `<|begin_of_text|>`; the plain template gets the tokenizer's BOS
prepended), so it is tokenised WITHOUT adding special tokens (`prompt_ids`), as the samplers do. TRL's
trainers tokenise string prompts WITH the tokenizer's special tokens, which would put a second BOS in
front of every training row; `training_prompt` gives the string to hand them instead (the prompt minus
the BOS the tokenizer adds by itself), so the trainer's prompt ids equal `prompt_ids` exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from east.records import Question

log = logging.getLogger(__name__)

# SPEC section 2: the paper's system message for GSM8K / MATH.
PAPER_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

PLAIN_TEMPLATE = "{system}Question: {question}\nAnswer:"


def build_messages(
    question: Question, system_prompt: str | None = None, few_shot: Sequence[Question] = ()
) -> list[dict[str, str]]:
    """Chat messages for one question: system, then few-shot user/assistant turns, then the question."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for example in few_shot:
        if example.solution is None:
            raise ValueError(f"few-shot example {example.question_id} has no worked solution")
        messages.append({"role": "user", "content": example.question})
        messages.append({"role": "assistant", "content": example.solution})
    messages.append({"role": "user", "content": question.question})
    return messages


def render_prompt(tokenizer, question: Question, system_prompt: str | None = None, few_shot: Sequence[Question] = ()) -> str:
    """The exact prompt string given to the model, generation prompt included."""
    if getattr(tokenizer, "chat_template", None):
        messages = build_messages(question, system_prompt, few_shot)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    shots = "".join(f"Question: {q.question}\nAnswer: {q.solution}\n\n" for q in few_shot)
    system = f"{system_prompt}\n\n" if system_prompt else ""
    return auto_prefix(tokenizer) + system + shots + PLAIN_TEMPLATE.format(system="", question=question.question)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The token ids of a rendered prompt as sampling and evaluation feed them: no special tokens added,
    since the prompt string already carries its own."""
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def auto_prefix(tokenizer) -> str:
    """The text of the special tokens the tokenizer puts before any text by itself (Llama's BOS), or ''."""
    probe = "a"
    with_special = list(tokenizer(probe)["input_ids"])
    without = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    extra = len(with_special) - len(without)
    if extra <= 0 or with_special[extra:] != without:
        return ""
    return tokenizer.decode(with_special[:extra], skip_special_tokens=False)


def training_prompt(tokenizer, prompt: str) -> str:
    """The prompt string to give a trainer that tokenises with the tokenizer's own special tokens (TRL's
    SFT / DPO / KTO do), so that it gets exactly `prompt_ids(tokenizer, prompt)`: a rendered prompt that
    starts with the BOS the tokenizer adds anyway loses that BOS text; any other prompt is returned as is."""
    prefix = auto_prefix(tokenizer)
    if not prefix:
        return prompt
    if prompt.startswith(prefix):
        stripped = prompt[len(prefix):]
        if list(tokenizer(stripped)["input_ids"]) == prompt_ids(tokenizer, prompt):
            return stripped
    if prefix not in _WARNED:
        _WARNED.add(prefix)
        log.warning("the tokenizer adds %r to every text and the rendered prompt cannot be given without it; training "
                    "rows will see it once more than the sampler did", prefix)
    return prompt


_WARNED: set[str] = set()
