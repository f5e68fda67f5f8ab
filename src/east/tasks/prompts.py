"""Prompt strings: a question (plus optional system prompt and few-shot examples) rendered with the
model's own chat template, or a plain-text template for models without one.

The rendered string is what sampling feeds the model, what is saved with the samples, and what the
training rows carry as `prompt`, so generation and training see exactly the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from east.records import Question

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
    return system + shots + PLAIN_TEMPLATE.format(system="", question=question.question)
