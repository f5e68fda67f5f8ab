"""Sampling stage: n completions per prompt, returned as one `Generation` per prompt.

Two backends produce the same `list[Generation]`:

    from east.sampling.hf import sample          # any HF causal LM on CPU (continuous batching)
    from east.sampling.vllm import sample        # vLLM, GPUs (LoRA adapters served unmerged)

    generations = sample(model, tokenizer, prompts, n=16, temperature=1.0, max_new_tokens=256, seed=0)
    rows = [g.to_sample_set(q.question_id, p) for q, p, g in zip(questions, prompts, generations)]

This module stays free of torch and vLLM imports so that the record type can be used anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from east.records import SampleSet


@dataclass
class Generation:
    """The n samples of one prompt, in sample order.

    `num_tokens` counts every token the model generated for the sample, including the EOS token or the
    token that completed a stop string (as vLLM's `len(CompletionOutput.token_ids)` does); `texts` are cut
    before the EOS / stop string. `finished` is False only where the sample hit `max_new_tokens`.
    """

    texts: list[str] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)

    def to_sample_set(self, question_id: str, prompt: str) -> SampleSet:
        return SampleSet(
            question_id=question_id,
            prompt=prompt,
            responses=list(self.texts),
            num_tokens=list(self.num_tokens),
            finished=list(self.finished),
        )


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """`text` cut before the earliest stop string, and whether one was found."""
    if not stop:
        return text, False
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


__all__ = ["Generation", "cut_at_stop"]
