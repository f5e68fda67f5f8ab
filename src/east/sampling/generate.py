"""Sampling through `model.generate`: the HF backend's path for models on an accelerator.

    from east.sampling.generate import sample     # same arguments and output as east.sampling.hf.sample

The fast sampler in `east.sampling.hf` manages its own KV cache and is tuned for CPU; on a GPU,
`generate(num_return_sequences=n)` with its own cache is the reliable path (vLLM is the fast one). Prompts
are batched so that rows x (longest prompt + max_new_tokens) stays within `token_budget`. Random draws
come from torch's generator seeded once per call, so the output depends on the batch plan, unlike the
CPU sampler's per-sample hashes.
"""

from __future__ import annotations

import torch

from east.sampling import Generation, cut_at_stop


def batches(lengths: list[int], n: int, max_new_tokens: int, token_budget: int) -> list[list[int]]:
    """Prompt indices grouped longest first, each group within the token budget (at least one prompt)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups, current = [], []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * n * (width + max_new_tokens) > token_budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def sample(model, tokenizer, prompts: list[str], n: int, *, temperature: float = 1.0, top_p: float = 1.0,
           top_k: int = 0, max_new_tokens: int = 128, seed: int = 0, stop: list[str] | None = None,
           token_budget: int = 65536, progress: bool = False, on_done=None) -> list[Generation]:
    from east.sampling.hf import eos_token_ids

    eos = eos_token_ids(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    out: list[Generation | None] = [None] * len(prompts)
    torch.manual_seed(seed)
    greedy = temperature == 0
    for group in batches([len(x) for x in ids], 1 if greedy else n, max_new_tokens, token_budget):
        width = max(len(ids[i]) for i in group)
        input_ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, i in enumerate(group):
            input_ids[row, width - len(ids[i]):] = torch.tensor(ids[i])
            mask[row, width - len(ids[i]):] = 1
        with torch.inference_mode():
            generated = model.generate(
                input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                max_new_tokens=max_new_tokens, do_sample=not greedy, num_return_sequences=1 if greedy else n,
                temperature=temperature if not greedy else None, top_p=top_p if not greedy else None,
                top_k=top_k if not greedy else None, eos_token_id=eos or None, pad_token_id=pad,
                stop_strings=stop or None, tokenizer=tokenizer if stop else None,
            )[:, width:].cpu()
        per_prompt = 1 if greedy else n
        for row, i in enumerate(group):
            rows = generated[row * per_prompt:(row + 1) * per_prompt]
            generation = Generation()
            for tokens in rows.tolist():
                generation_add(generation, tokens, eos, pad, tokenizer, stop, max_new_tokens)
            if greedy and n > 1:
                generation = Generation(generation.texts * n, generation.num_tokens * n, generation.finished * n)
            out[i] = generation
            if on_done:
                on_done(i, generation)
    return out


def generation_add(generation: Generation, tokens: list[int], eos: list[int], pad: int, tokenizer, stop, max_new_tokens):
    """Append one generated row: cut at its first EOS, decode, cut at a stop string."""
    end = next((k for k, t in enumerate(tokens) if t in eos), None)
    kept = tokens[:end] if end is not None else [t for t in tokens if t != pad] if not eos else tokens
    text, stopped = cut_at_stop(tokenizer.decode(kept, skip_special_tokens=True), stop)
    generation.texts.append(text)
    generation.num_tokens.append(end + 1 if end is not None else len(kept))
    generation.finished.append(end is not None or stopped or len(tokens) < max_new_tokens)
