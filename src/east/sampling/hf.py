"""Sampling with a Hugging Face causal LM: n completions per prompt, continuously batched.

    from east.sampling.hf import sample
    gens = sample(model, tokenizer, prompts, n=16, temperature=1.0, max_new_tokens=128, seed=0,
                  stop=["\\n\\nQuestion:"], progress=True, on_done=lambda i, g: write_shard(i, g))

How it spends the machine (sampling dominates the cost of a self-training iteration; on CPU, decoding
is bounded by the matmuls of the weights and by reading the KV cache):

- every prompt is prefilled once; its KV is stored once and shared by its n samples, whose attention
  over the prompt is one matrix product per prompt (keys read once, not n times);
- the KV cache is preallocated per layer and fed to the model through the `transformers` Cache API
  (a custom attention function reads it), so decoding writes one column per step instead of
  re-concatenating the cache;
- samples of one prompt that have drawn the same tokens so far share one row of the forward (a
  branch), since their next-token logits are the same; a branch splits when its samples draw different
  tokens. Each sample still draws from its own random stream, so this changes the cost, not the output;
- a row whose sample ends (EOS, stop string, `max_new_tokens`) is refilled from the queue of prompts
  (continuous batching), so a long tail does not keep a mostly finished batch busy; the forward runs
  over the live branches only;
- prompts are scheduled longest first, so prefill batches have similar lengths and long prompts do not
  end up alone in the tail;
- fp32 linear layers run through oneDNN (`east.sampling.onednn`), at 2.3x the FLOP/s of torch's default
  matmul (MKL) on this project's first AMD machine; `gemm="auto"` times both on the model's shapes and
  takes the faster (on an Intel Xeon with AMX torch's own matmul was);
- a bf16 model (east.precision) decodes in bf16: its matmuls run in bf16, logits are sampled in fp32;
- the number of rows comes from `token_budget` (rows x (longest prompt + max_new_tokens) tokens);
- the random draw of a sample at step t is a hash of (seed, prompt index, sample index, t), so the output
  depends on the seed but not on which other samples happened to share the batch.

Thread count is the caller's: on a shared machine, torch threads competing with other processes for
the same cores can make every step many times slower (set torch.set_num_threads accordingly).

Models whose attention is not plain full attention through `sdpa`/`eager` (sliding windows, flex attention,
recurrent layers) fall back to a simpler loop over padded batches with the model's own DynamicCache.
Both paths share the token picking, stop handling and decoding, and honour the same arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from east.sampling import Generation, cut_at_stop
from east.sampling.onednn import onednn_linears, resolve_gemm

# Cached tokens (slots x row length) of the decode batch. 64k tokens is ~256 MB of fp32 KV for a
# 1M-parameter backbone and ~2 GB for a 30M model; on CPU throughput is flat well below that.
DEFAULT_TOKEN_BUDGET = 65536
# Tokens per prefill forward: enough rows to keep the matmuls efficient, few enough to bound the
# (rows x heads x width x width) attention scores.
PREFILL_TOKENS = 8192
# Refill the batch once this share of slots is free (or the queue fits): each admission is one
# extra forward call, so refilling every single freed slot would cost more than idle slots do.
REFILL_SHARE = 1 / 16
# Prompt slots per batch-full of prompts (slots / n): a prompt keeps its slot until its last sample
# ends, and the longest of n samples runs several times the mean length, so several generations of
# prompts overlap; each occupied slot costs a (n x prompt) block of attention every step.
PROMPT_SLOT_FACTOR = 4
# First width (columns) of the generated part of the KV cache; it doubles as samples grow.
INITIAL_OWN_COLUMNS = 16
# A decode step reads the generated part up to the longest live branch, rounded up to this many columns.
COLUMN_BLOCK = 16

OnDone = Callable[[int, Generation], None]


@dataclass(frozen=True)
class Settings:
    n: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    seed: int
    stop: tuple[str, ...]
    first_index: int = 0  # the prompt index (in the random draws) of prompts[0]


def sample(
    model,
    tokenizer,
    prompts: list[str],
    n: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 128,
    seed: int = 0,
    stop: list[str] | None = None,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: bool = False,
    on_done: OnDone | None = None,
    gemm: str = "onednn",
    first_index: int = 0,
) -> list[Generation]:
    """n samples for each prompt, in prompt order. `on_done(i, generation)` fires as prompt i completes.

    temperature 0 is greedy decoding; top_k 0 and top_p 1 are off. Prompts are token strings already
    (chat template applied), so they are tokenized without adding special tokens. `token_budget` caps
    rows x (longest prompt + max_new_tokens), which sets how many samples decode at once; the KV cache
    takes at most about token_budget x layers x 2 x kv_dim x 4 bytes (fp32). The same seed gives the
    same samples whatever the budget. `gemm` "onednn" runs the model's fp32 linear layers through oneDNN
    (`east.sampling.onednn`), "torch" through torch's default matmul (equal up to rounding), "auto" through
    whichever `east.sampling.onednn.resolve_gemm` measures faster for this model here. `first_index` numbers the
    prompts from there in the random draws, so a slice `prompts[a:b]` sampled with first_index=a draws what the
    whole list would for those prompts (east.executor splits evaluation that way).
    """
    settings = checked_settings(n, temperature, top_p, top_k, max_new_tokens, seed, stop, token_budget, first_index)
    if model.device.type != "cpu":
        # This sampler's cache management is tuned for CPU; on accelerators, generate() (or vLLM).
        from east.sampling import generate

        return generate.sample(model, tokenizer, prompts, n, temperature=temperature, top_p=top_p, top_k=top_k,
                               max_new_tokens=max_new_tokens, seed=seed, stop=stop, token_budget=token_budget,
                               progress=progress, on_done=on_done)
    if not prompts:
        return []
    if settings.temperature == 0 and n > 1:
        # Greedy samples are all the same: decode one per prompt and copy it.
        copies = lambda g: Generation(g.texts * n, g.num_tokens * n, g.finished * n)  # noqa: E731
        one = sample(model, tokenizer, prompts, 1, temperature=0, max_new_tokens=max_new_tokens, stop=stop,
                     token_budget=token_budget, progress=progress,
                     on_done=(lambda i, g: on_done(i, copies(g))) if on_done else None, gemm=gemm)
        return [copies(g) for g in one]
    onednn = resolve_gemm(model, gemm) == "onednn"
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    if any(len(ids) == 0 for ids in prompt_ids):
        raise ValueError("empty prompt: the model needs at least one token to condition on")
    results = Results(len(prompt_ids), settings, tokenizer, eos_token_ids(model), progress, on_done)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), onednn_linears(model, onednn):
            if uses_slot_cache(model):
                SlotBatcher(model, prompt_ids, settings, results, token_budget).run()
            else:
                run_padded_batches(model, prompt_ids, settings, results, token_budget, pad_token_id(tokenizer, results))
    finally:
        results.close()
        model.train(was_training)
    return results.generations()


def checked_settings(n, temperature, top_p, top_k, max_new_tokens, seed, stop, token_budget, first_index=0) -> Settings:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    return Settings(n, float(temperature), float(top_p), int(top_k), int(max_new_tokens), int(seed),
                    tuple(s for s in (stop or ()) if s), int(first_index))


def eos_token_ids(model) -> list[int]:
    """The model's EOS ids, as `generate` finds them: generation_config (chat models list several there), then config.

    The tokenizer's EOS is deliberately not consulted: a model whose configs name no EOS runs every sample
    to `max_new_tokens`, as `generate` does.
    """
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        ids = getattr(source, "eos_token_id", None)
        if ids is not None:
            return [ids] if isinstance(ids, int) else [int(i) for i in ids]
    return []


def pad_token_id(tokenizer, results: Results) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return results.eos_ids[0] if results.eos_ids else 0


def uses_slot_cache(model) -> bool:
    """Whether the model is plain full attention that takes a 4D mask and a custom Cache (Llama, Qwen2, Mistral, ...)."""
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(t == "full_attention" for t in layer_types)
    # Older configs mark sliding windows with `sliding_window` (+ `use_sliding_window` for Qwen2).
    return getattr(config, "sliding_window", None) is None or getattr(config, "use_sliding_window", True) is False


# ----------------------------------------------------------------------------------------------------
# Token picking: temperature, top-k, top-p (HF's order), and a counter-based random draw per row.

_MASK32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32 family) on int64 tensors holding values < 2**32.

    The multipliers are below 2**31 so every product stays below 2**63: no signed overflow.
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def row_keys(seed: int, prompt_index: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """One random stream key per (seed, prompt, sample)."""
    seed_key = mix32(torch.tensor(seed & _MASK32, dtype=torch.int64) ^ mix32(torch.tensor(seed >> 32, dtype=torch.int64) & _MASK32))
    return mix32(mix32(seed_key ^ (prompt_index & _MASK32)) ^ (sample_index & _MASK32))


def uniforms(keys: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """A float64 in (0, 1) per row for draw number `step` of the row's stream."""
    h = mix32(mix32(keys ^ (step & _MASK32)) ^ 0x5BD1E995)
    return (h.to(torch.float64) + 0.5) / 2.0**32


def pick_tokens(logits: torch.Tensor, u: torch.Tensor, settings: Settings) -> torch.Tensor:
    """Next token per row from (rows, vocab) logits: greedy at temperature 0, else inverse-CDF sampling with `u`."""
    logits = logits.float()
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / settings.temperature
    vocab = logits.shape[-1]
    if 0 < settings.top_k < vocab:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p < 1:
        # Sorted descending, a token stays while the mass strictly above it is below top_p
        # (HF's TopPLogitsWarper written from the other end), so the top token always stays.
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        above = torch.cumsum(probs, dim=-1) - probs
        probs = probs.masked_fill(above >= settings.top_p, 0.0)
        return order.gather(1, inverse_cdf(probs, u)[:, None]).squeeze(1)
    probs = torch.softmax(logits, dim=-1)
    return inverse_cdf(probs, u)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index i with cdf[i-1] < u * total <= cdf[i]; zero-probability tokens are never chosen since u > 0."""
    cdf = torch.cumsum(probs.to(torch.float64), dim=-1)
    target = (u * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target).squeeze(1).clamp_(max=probs.shape[-1] - 1)


# ----------------------------------------------------------------------------------------------------
# Ends of samples and the results.


class Results:
    """Collects finished samples, decodes them, and reports each prompt when its n samples are in."""

    def __init__(self, num_prompts, settings: Settings, tokenizer, eos_ids, progress: bool, on_done):
        self.settings, self.tokenizer, self.on_done = settings, tokenizer, on_done
        self.eos_ids = eos_ids
        self.eos_tensor = torch.tensor(eos_ids or [-1], dtype=torch.int64)
        n = settings.n
        self.texts = [[""] * n for _ in range(num_prompts)]
        self.num_tokens = [[0] * n for _ in range(num_prompts)]
        self.finished = [[False] * n for _ in range(num_prompts)]
        self.missing = [n] * num_prompts
        self.stop_tokens = stop_candidate_table(tokenizer, settings.stop) if settings.stop else None
        self.bar = progress_bar(num_prompts * n) if progress else None

    def ends(self, tokens: torch.Tensor, new: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(done, finished) for rows whose latest token is `new`; `tokens[:, :length]` are their tokens so far."""
        finished = torch.isin(new, self.eos_tensor)
        if self.stop_tokens is not None:
            if int(new.max()) >= len(self.stop_tokens):  # model vocab padded beyond the tokenizer: those ids decode to ""
                grow = int(new.max()) + 1 - len(self.stop_tokens)
                self.stop_tokens = torch.cat([self.stop_tokens, torch.zeros(grow, dtype=torch.bool)])
            # Decoding is per-row Python work, so only rows whose new token could complete a stop string pay it.
            candidates = (self.stop_tokens[new] & ~finished).nonzero().flatten().tolist()
            if candidates:
                texts = self.tokenizer.batch_decode(
                    [tokens[r, : int(length[r])].tolist() for r in candidates], skip_special_tokens=True
                )
                hits = [r for r, text in zip(candidates, texts) if cut_at_stop(text, list(self.settings.stop))[1]]
                if hits:
                    finished[torch.tensor(hits)] = True
        done = finished | (length >= self.settings.max_new_tokens)
        return done, finished

    def add(self, prompt_index: list[int], sample_index: list[int], token_lists: list[list[int]], finished: list[bool]) -> None:
        """Record finished samples (token lists include the EOS / stop-completing token)."""
        eos = set(self.eos_ids)
        bodies = [ids[:-1] if ids and ids[-1] in eos else ids for ids in token_lists]
        texts = self.tokenizer.batch_decode(bodies, skip_special_tokens=True)
        for i, j, ids, text, fin in zip(prompt_index, sample_index, token_lists, texts, finished):
            self.texts[i][j] = cut_at_stop(text, list(self.settings.stop))[0]
            self.num_tokens[i][j] = len(ids)
            self.finished[i][j] = fin
            self.missing[i] -= 1
            if self.missing[i] == 0 and self.on_done is not None:
                self.on_done(i, self.generation(i))
        if self.bar is not None:
            self.bar.update(len(token_lists))

    def generation(self, i: int) -> Generation:
        return Generation(list(self.texts[i]), list(self.num_tokens[i]), list(self.finished[i]))

    def generations(self) -> list[Generation]:
        incomplete = [i for i, m in enumerate(self.missing) if m]
        if incomplete:
            raise RuntimeError(f"sampling ended with prompts {incomplete[:5]} incomplete")
        return [self.generation(i) for i in range(len(self.missing))]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def stop_candidate_table(tokenizer, stop: Sequence[str]) -> torch.Tensor:
    """Per vocabulary id: could this token complete a stop string?

    True when its text contains the last character of a stop string, or when it does not decode on its
    own (byte pieces of a multi-byte character), so that the cheap check never misses a stop.
    """
    vocab = len(tokenizer)
    pieces = tokenizer.batch_decode([[i] for i in range(vocab)], skip_special_tokens=False)
    last_chars = {s[-1] for s in stop}
    flags = [("\ufffd" in p) or any(c in p for c in last_chars) for p in pieces]
    return torch.tensor(flags, dtype=torch.bool)


def progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="sample", desc="sampling", dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------------
# The fast path: branches over a preallocated KV cache.


class SlotLayer(DynamicLayer):
    """One layer's KV in two preallocated parts.

    - prompt part, (prompt slots, kv_heads, prompt_cols, head_dim): each prompt's KV once, right-aligned,
      shared by its n samples; occupied slots are kept at the front so a step reads only those;
    - generated part, (branches, kv_heads, columns, head_dim): one row per branch (a generated prefix
      shared by one or more samples, see `SlotBatcher`), column g holding generated token g; live
      branches are kept at the front, and the part starts narrow and doubles when the longest live
      branch needs it (up to max_new_tokens); a step reads only the columns up to the longest live
      branch.

    `update` writes one generated column per live branch and returns the live rows of the generated
    part (a view); `slot_attention` reads the prompt part through `ACTIVE_BATCH`. Reading each prompt's
    keys once per step for all its branches (one matrix product per prompt instead of one
    matrix-vector product per sample) cuts the memory traffic that bounds decoding on CPU. (A slice of the
    first columns reads within about 15% of a contiguous buffer of its width, so the part is not
    re-packed as branches grow.)
    """

    def __init__(self, prompt_keys, prompt_values, keys, values, plan: DecodePlan):
        super().__init__()
        self.prompt_keys, self.prompt_values = prompt_keys, prompt_values
        self.keys, self.values, self.plan = keys, values, plan
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        plan = self.plan
        live = len(plan.write_col)
        self.keys[plan.rows, :, plan.write_col] = key_states[:, :, 0].to(self.dtype)  # see cache_dtype
        self.values[plan.rows, :, plan.write_col] = value_states[:, :, 0].to(self.dtype)
        return self.keys[:live, :, : plan.columns], self.values[:live, :, : plan.columns]

    def get_seq_length(self) -> int:
        return self.prompt_keys.shape[2] + self.keys.shape[2]

    def widen(self, columns: int) -> None:
        """Grow the generated part to `columns` columns, keeping its contents."""
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[0], old.shape[1], columns, old.shape[3])
            new[:, :, : old.shape[2]] = old
            setattr(self, name, new)

    def copy_rows(self, source: torch.Tensor, target: torch.Tensor, columns: int) -> None:
        """Generated KV of branches `source` (their first `columns` columns) into rows `target`."""
        for part in (self.keys, self.values):
            part[target, :, :columns] = part[source, :, :columns]


def cache_dtype(example: torch.Tensor) -> torch.dtype:
    """The KV cache's dtype for keys like `example`: fp32 for a bf16 model on CPU, else the keys' own.

    Why: torch's CPU `bmm` in bf16 copies its operands (the attention over the cache is a batch of products
    with a transposed operand), so a bf16 cache made sampling slower than fp32: 7.4 against 6.0 CPU seconds
    for 300 questions x 16 on the built-in backbone, 1.1 s of it in copies (Intel Xeon with AMX, 2026-12-02).
    The weight matmuls, where bf16 pays, stay in bf16; each new key and value is converted once when stored.
    """
    if example.dtype == torch.bfloat16 and example.device.type == "cpu":
        return torch.float32
    return example.dtype


@dataclass
class DecodePlan:
    """Per decode step, for the live branches (rows 0..len-1): where each writes, its prompt slot and its
    rank among the branches of that prompt; the additive masks of the occupied prompt slots."""

    rows: torch.Tensor
    write_col: torch.Tensor
    prompt_slot: torch.Tensor | None = None
    rank: torch.Tensor | None = None
    width: int = 1  # most branches of one prompt
    columns: int = 1  # generated columns any live branch reads: the others are not read at all
    occupied: int = 0  # prompt slots in use: [0, occupied)
    prompt_mask: torch.Tensor | None = None  # (occupied, 1, 1, prompt_cols), additive


class SlotCache(Cache):
    def __init__(self, layers: list[SlotLayer]):
        super().__init__(layers=layers)


SLOT_ATTENTION = "east_slot_attention"
ACTIVE_BATCH: ContextVar[SlotCache | None] = ContextVar("east_active_slot_cache", default=None)


def slot_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention of one new token per branch over its prompt (shared per prompt) and its generated tokens.

    The prompt part runs with queries grouped by (prompt slot, rank of the branch in it): one matrix
    product per prompt and kv head, whose keys are read once for all its branches. The two parts are
    merged through their log-sum-exp (as in flash-decoding), so per-row probabilities are never
    scattered. Key/value heads serve their query-head groups by reshaping the queries (GQA), not by
    repeating keys. Prefill (boolean mask) goes to transformers' sdpa.
    """
    cache = ACTIVE_BATCH.get()
    if cache is None or attention_mask.dtype == torch.bool:  # prefill
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    layer = cache.layers[module.layer_idx]
    plan = layer.plan
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    q = query.reshape(rows, kv_heads, group, dim).to(key.dtype) * (dim**-0.5 if scaling is None else scaling)

    # Own (generated) tokens, per branch.
    own_out, own_lse = attend(torch.matmul(q, key.transpose(2, 3)) + attention_mask, value)

    # Prompt tokens, per occupied prompt slot.
    occupied, width = plan.occupied, plan.width
    grouped = q.new_zeros(occupied, width, kv_heads, group, dim)
    grouped[plan.prompt_slot, plan.rank] = q
    grouped = grouped.transpose(1, 2).reshape(occupied, kv_heads, width * group, dim)
    scores = torch.matmul(grouped, layer.prompt_keys[:occupied].transpose(2, 3)) + plan.prompt_mask
    per_prompt = torch.cat(attend(scores, layer.prompt_values[:occupied]), dim=-1)
    prompt = per_prompt.view(occupied, kv_heads, width, group, dim + 1)[plan.prompt_slot, :, plan.rank]

    # Softmax over both parts = each part's softmax, weighted by its share of the total exp-mass.
    prompt_share = torch.sigmoid(prompt[..., dim:] - own_lse)
    out = own_out + prompt_share * (prompt[..., :dim] - own_out)
    return out.to(query.dtype).reshape(rows, 1, heads, dim), None


def attend(scores: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax(scores) @ values, log-sum-exp of scores) over the last axis.

    The log-sum-exp is read off the softmax (lse = max - log max(p)) because torch's exp is an order of
    magnitude slower on the huge negative numbers of masked scores than its fused softmax is.
    """
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    lse = scores.amax(dim=-1, keepdim=True) - torch.log(probs.amax(dim=-1, keepdim=True))
    return torch.matmul(probs.to(values.dtype), values), lse


AttentionInterface.register(SLOT_ATTENTION, slot_attention)


@contextmanager
def slot_attention_for(model, cache: SlotCache | None) -> Iterator[None]:
    """Run the model with `slot_attention` (over `cache` when decoding; as sdpa with a boolean mask when
    prefilling), restoring its attention implementation after."""
    config = model.config
    original = config._attn_implementation
    config._attn_implementation = SLOT_ATTENTION
    token = ACTIVE_BATCH.set(cache)
    try:
        yield
    finally:
        ACTIVE_BATCH.reset(token)
        config._attn_implementation = original


def cache_argument(model) -> str:
    """The name of the model's KV-cache argument: `cache` in transformers versions that renamed it (5.24 warns
    that `past_key_values` goes in 5.40), `past_key_values` in those before; read from the model's own forward,
    as a remote-code model may take either."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def distinct_pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b) of each distinct pair of non-negative integers, sorted by a then b, and each element's pair."""
    base = int(b.max()) + 1 if len(b) else 1
    pairs, inverse = torch.unique(a * base + b, return_inverse=True)
    return pairs // base, pairs % base, inverse


def ranks_within(groups: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
    """(rank of each element among the elements of its group, largest group size); groups in [0, count)."""
    order = torch.argsort(groups, stable=True)
    sizes = torch.bincount(groups, minlength=count)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty_like(groups)
    rank[order] = torch.arange(len(groups)) - starts[groups[order]]
    return rank, int(sizes.max()) if len(groups) else 1


class SlotBatcher:
    """Continuous batching over the prompt queue, with samples that share a prefix computed once.

    Three kinds of places, each with its own capacity:
    - sample rows (`slots`): the samples in flight, each with its own random stream and tokens;
    - branches (at most one per sample row): the distinct (prompt, generated prefix) of the samples in
      flight. Samples of one prompt that have drawn the same tokens so far have the same next-token
      logits, so the model runs once per branch, not once per sample; after each draw a branch splits
      into one branch per distinct token (a split copies the branch's generated KV). A trained model
      is confident on most tokens (the trained backbone at n=16: 2.9 samples per branch on average;
      at n=64: 4.9), a random one splits at once. Every sample still draws its own token from its
      own stream, so the output is exactly that of one row per sample;
    - prompt slots: a prompt holds its slot (its prompt KV) until all its n samples have ended.
    A free sample row takes the next sample of the queue at the next refill.
    """

    def __init__(self, model, prompt_ids: list[list[int]], settings: Settings, results: Results, token_budget: int):
        self.model, self.prompt_ids, self.settings, self.results = model, prompt_ids, settings, results
        n = settings.n
        self.prompt_cols = max(len(ids) for ids in prompt_ids)
        self.slots = max(1, min(token_budget // (self.prompt_cols + settings.max_new_tokens), len(prompt_ids) * n))
        self.prompt_slots = min(len(prompt_ids), self.slots, PROMPT_SLOT_FACTOR * -(-self.slots // n))
        self.takes_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.cache_arg = cache_argument(model)
        # Longest prompts first (ties in prompt order): similar lengths share a prefill, long ones start early.
        self.queue = sorted(range(len(prompt_ids)), key=lambda i: (-len(prompt_ids[i]), i))
        self.next_prompt = 0  # position in self.queue
        self.next_sample = 0  # samples of queue[next_prompt] already admitted
        self.slot_of_prompt: dict[int, int] = {}
        self.pending_logits: dict[int, torch.Tensor] = {}  # first-token logits of a partly admitted prompt
        self.prompt_in_slot: list[int] = []  # occupied prompt slots, in slot order
        self.samples_left: list[int] = []  # per occupied prompt slot: samples not yet ended
        self.slot_prompt_len = torch.ones(self.prompt_slots, dtype=torch.int64)
        self.cache: SlotCache | None = None
        self.own_cols = min(INITIAL_OWN_COLUMNS, settings.max_new_tokens)  # current width of the generated part
        self.plan = DecodePlan(rows=torch.arange(0), write_col=torch.zeros(0, dtype=torch.int64))
        s = self.slots
        # Sample rows.
        self.active = torch.zeros(s, dtype=torch.bool)
        self.prompt_of = torch.zeros(s, dtype=torch.int64)
        self.sample_of = torch.zeros(s, dtype=torch.int64)
        self.generated = torch.zeros(s, dtype=torch.int64)
        self.keys = torch.zeros(s, dtype=torch.int64)
        self.tokens = torch.zeros(s, settings.max_new_tokens, dtype=torch.int64)
        self.branch_of = torch.zeros(s, dtype=torch.int64)
        # Branches: the live ones are rows [0, self.branches).
        self.branches = 0
        self.branch_slot = torch.zeros(s, dtype=torch.int64)  # prompt slot
        self.branch_len = torch.zeros(s, dtype=torch.int64)  # tokens generated, the last one not yet fed
        self.branch_token = torch.zeros(s, dtype=torch.int64)  # that last token

    # -- main loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            free = int((~self.active).sum())
            waiting = self.rows_waiting()
            refill = min(waiting, max(1, int(self.slots * REFILL_SHARE)))
            if waiting and (free >= refill or not self.active.any()) and self.admit(free):
                continue  # admitted rows may have ended on their first token
            if not self.active.any():
                return
            self.decode_step()

    def rows_waiting(self) -> int:
        remaining_prompts = len(self.queue) - self.next_prompt
        return remaining_prompts * self.settings.n - self.next_sample

    # -- admission ---------------------------------------------------------------------------------

    def admit(self, free: int) -> bool:
        """Fill up to `free` free rows with the next samples of the queue; False if no prompt slot was free."""
        rows, new_prompts = self.take_from_queue(free)
        if not rows:
            return False
        for p, kv, _ in (prefilled := self.prefill(new_prompts)):
            if self.cache is None:
                self.cache = self.allocate_cache(kv)
            slot = self.slot_of_prompt[p]
            for layer, (k, v) in zip(self.cache.layers, kv):
                layer.prompt_keys[slot, :, self.prompt_cols - k.shape[2] :] = k[0]
                layer.prompt_values[slot, :, self.prompt_cols - v.shape[2] :] = v[0]
        first_logits = {p: logits for p, _, logits in prefilled} | self.pending_logits
        slots = (~self.active).nonzero().flatten()[: len(rows)]
        prompt_index = torch.tensor([p for p, _ in rows])
        sample_index = torch.tensor([j for _, j in rows])
        self.active[slots] = True
        self.prompt_of[slots] = prompt_index
        self.sample_of[slots] = sample_index
        self.keys[slots] = row_keys(self.settings.seed, prompt_index + self.settings.first_index, sample_index)
        self.generated[slots] = 0
        # The first token of every sample comes from its prompt's prefill logits; a partly admitted
        # prompt keeps its logits until its last sample is admitted.
        self.pending_logits = {p: lg for p, lg in first_logits.items() if self.next_sample and p == self.queue[self.next_prompt]}
        survivors, new = self.draw(slots, torch.cat([first_logits[p] for p, _ in rows]))
        # Read after the draw: a prompt whose samples all ended at once gave up its slot to another.
        prompt_slot = torch.tensor([self.slot_of_prompt[p] for p in self.prompt_of[survivors].tolist()], dtype=torch.int64)
        self.start_branches(survivors, prompt_slot, new)
        return True

    def take_from_queue(self, count: int) -> tuple[list[tuple[int, int]], list[int]]:
        """(rows as (prompt, sample) pairs, prompts that need a prefill), taking prompt slots for new prompts."""
        rows, new_prompts = [], []
        while len(rows) < count and self.next_prompt < len(self.queue):
            p = self.queue[self.next_prompt]
            if p not in self.slot_of_prompt:
                if len(self.prompt_in_slot) == self.prompt_slots:
                    break
                slot = len(self.prompt_in_slot)
                self.slot_of_prompt[p] = slot
                self.prompt_in_slot.append(p)
                self.samples_left.append(self.settings.n)
                self.slot_prompt_len[slot] = len(self.prompt_ids[p])
                new_prompts.append(p)
            take = min(self.settings.n - self.next_sample, count - len(rows))
            rows.extend((p, j) for j in range(self.next_sample, self.next_sample + take))
            self.next_sample += take
            if self.next_sample == self.settings.n:
                self.next_prompt, self.next_sample = self.next_prompt + 1, 0
        return rows, new_prompts

    def prefill(self, prompts: list[int]) -> list[tuple[int, list, torch.Tensor]]:
        """(prompt, per-layer (k, v) of shape (1, kv_heads, len, dim), last-position logits) per prompt."""
        out = []
        for chunk in chunks_by_tokens(prompts, [len(self.prompt_ids[p]) for p in prompts], PREFILL_TOKENS):
            out.extend(self.prefill_chunk(chunk))
        return out

    def prefill_chunk(self, prompts: list[int]):
        lengths = torch.tensor([len(self.prompt_ids[p]) for p in prompts])
        width = int(lengths.max())
        pad = width - lengths
        ids = torch.zeros(len(prompts), width, dtype=torch.int64)
        for r, p in enumerate(prompts):
            ids[r, int(pad[r]) :] = torch.tensor(self.prompt_ids[p])
        cols = torch.arange(width)
        position_ids = (cols[None, :] - pad[:, None]).clamp(min=0)
        # Left-padded; each padding query sees only itself, which keeps everything finite.
        real = cols[None, None, :] >= pad[:, None, None]
        causal = cols[None, :, None] >= cols[None, None, :]
        mask = (causal & real) | torch.eye(width, dtype=torch.bool)[None]
        cache = DynamicCache()
        kwargs = {"logits_to_keep": 1} if self.takes_logits_to_keep else {}
        with slot_attention_for(self.model, None):
            out = self.model(input_ids=ids, attention_mask=mask[:, None], position_ids=position_ids,
                             use_cache=True, **{self.cache_arg: cache}, **kwargs)
        logits = out.logits[:, -1].float()
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return [(p, [(k[r : r + 1, :, int(pad[r]) :], v[r : r + 1, :, int(pad[r]) :]) for k, v in kv], logits[r : r + 1])
                for r, p in enumerate(prompts)]

    def allocate_cache(self, kv_example) -> SlotCache:
        layers = []
        for k, v in kv_example:
            heads, dtype = k.shape[1], cache_dtype(k)
            layers.append(SlotLayer(
                torch.zeros(self.prompt_slots, heads, self.prompt_cols, k.shape[3], dtype=dtype),
                torch.zeros(self.prompt_slots, heads, self.prompt_cols, v.shape[3], dtype=dtype),
                torch.zeros(self.slots, heads, self.own_cols, k.shape[3], dtype=dtype),
                torch.zeros(self.slots, heads, self.own_cols, v.shape[3], dtype=dtype),
                self.plan,
            ))
        return SlotCache(layers)

    # -- decoding ----------------------------------------------------------------------------------

    def decode_step(self) -> None:
        """One forward over the live branches, then one token for every sample in flight."""
        b = self.branches
        g = self.branch_len[:b]
        needed = int(g.max())
        if needed > self.own_cols:
            self.own_cols = min(self.settings.max_new_tokens, max(needed, 2 * self.own_cols))
            for layer in self.cache.layers:
                layer.widen(self.own_cols)
        plan, dtype = self.plan, self.cache.layers[0].keys.dtype
        plan.rows = torch.arange(b)
        plan.write_col = g - 1
        plan.prompt_slot = self.branch_slot[:b]
        plan.occupied = len(self.prompt_in_slot)
        plan.rank, plan.width = ranks_within(plan.prompt_slot, plan.occupied)
        low = torch.finfo(dtype).min
        lengths = self.slot_prompt_len[: plan.occupied]
        prompt_allowed = torch.arange(self.prompt_cols)[None, :] >= (self.prompt_cols - lengths)[:, None]
        plan.prompt_mask = torch.zeros(prompt_allowed.shape, dtype=dtype).masked_fill_(~prompt_allowed, low)[:, None, None]
        # Whole blocks of columns: matmuls over odd widths run slower than over a few masked columns more.
        plan.columns = min(self.own_cols, -(-needed // COLUMN_BLOCK) * COLUMN_BLOCK)
        own_allowed = torch.arange(plan.columns)[None, :] <= (g - 1)[:, None]
        own_mask = torch.zeros(own_allowed.shape, dtype=dtype).masked_fill_(~own_allowed, low)[:, None, None]
        positions = self.slot_prompt_len[plan.prompt_slot] + g - 1
        with slot_attention_for(self.model, self.cache):
            out = self.model(input_ids=self.branch_token[:b, None], attention_mask=own_mask,
                             position_ids=positions[:, None], use_cache=True, **{self.cache_arg: self.cache})
        live = self.active.nonzero().flatten()
        parent = self.branch_of[live]
        survivors, new = self.draw(live, out.logits[parent, -1])
        self.split_branches(survivors, self.branch_of[survivors], new)

    def draw(self, rows: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick and store the next token of each sample row from its logits; retire the rows that ended.

        Returns the rows that go on and their new tokens.
        """
        g = self.generated[rows]
        new = pick_tokens(logits, uniforms(self.keys[rows], g), self.settings)
        self.tokens[rows, g] = new
        g = g + 1
        self.generated[rows] = g
        done, finished = self.results.ends(self.tokens[rows], new, g)
        if done.any():
            ended = rows[done]
            lengths = g[done].tolist()
            token_rows = self.tokens[ended].tolist()
            self.results.add(self.prompt_of[ended].tolist(), self.sample_of[ended].tolist(),
                             [t[:m] for t, m in zip(token_rows, lengths)], finished[done].tolist())
            self.release(ended)
        going_on = ~done
        return rows[going_on], new[going_on]

    def start_branches(self, rows: torch.Tensor, prompt_slot: torch.Tensor, new: torch.Tensor) -> None:
        """After admission: one new branch per (prompt slot, first token), after the live ones, with no
        generated KV yet (the first token's is written by the next step)."""
        slot, token, group_of = distinct_pairs(prompt_slot, new)
        group_row = torch.arange(self.branches, self.branches + len(slot))
        self.set_branches(group_row, slot, torch.ones_like(slot), token)
        self.branch_of[rows] = group_row[group_of]
        self.branches += len(slot)

    def split_branches(self, rows: torch.Tensor, parent: torch.Tensor, new: torch.Tensor) -> None:
        """After a decode step: one branch per (parent branch, new token) of the samples that go on.

        The first group of each parent keeps the parent's row; the others take free rows with a copy of
        the parent's generated KV; parents left with no sample free their rows. Live branches end up in
        rows [0, count) with as few KV copies as can be: kept rows past the end move into holes.
        """
        origin, token, group_of = distinct_pairs(parent, new)
        first = torch.ones(len(origin), dtype=torch.bool)
        first[1:] = origin[1:] != origin[:-1]  # origins come sorted
        kept = origin[first]
        total = len(origin)
        taken = torch.zeros(max(total, self.branches), dtype=torch.bool)
        taken[kept] = True
        holes = (~taken[:total]).nonzero().flatten()
        moving = kept >= total
        kept_row = kept.clone()
        kept_row[moving] = holes[: int(moving.sum())]
        fork_row = holes[int(moving.sum()) :]
        if len(holes):
            source = torch.cat([kept[moving], origin[~first]])
            columns = int(self.branch_len[source].max())
            for layer in self.cache.layers:
                layer.copy_rows(source, holes, columns)
        group_row = torch.empty_like(origin)
        group_row[first], group_row[~first] = kept_row, fork_row
        self.set_branches(group_row, self.branch_slot[origin], self.branch_len[origin] + 1, token)
        self.branch_of[rows] = group_row[group_of]
        self.branches = total

    def set_branches(self, row: torch.Tensor, prompt_slot: torch.Tensor, length: torch.Tensor, token: torch.Tensor) -> None:
        self.branch_slot[row] = prompt_slot
        self.branch_len[row] = length
        self.branch_token[row] = token

    def release(self, ended: torch.Tensor) -> None:
        """Free the rows of ended samples, and the prompt slots whose samples have all ended."""
        self.active[ended] = False
        for p in self.prompt_of[ended].tolist():
            slot = self.slot_of_prompt[p]
            self.samples_left[slot] -= 1
            if self.samples_left[slot] == 0:
                self.free_prompt_slot(slot)

    def free_prompt_slot(self, slot: int) -> None:
        """Release a prompt slot, moving the last occupied prompt into it so occupied slots stay in front."""
        del self.slot_of_prompt[self.prompt_in_slot[slot]]
        last = len(self.prompt_in_slot) - 1
        if slot != last:
            moved = self.prompt_in_slot[last]
            for layer in self.cache.layers:
                layer.prompt_keys[slot] = layer.prompt_keys[last]
                layer.prompt_values[slot] = layer.prompt_values[last]
            branch_slot = self.branch_slot[: self.branches]
            branch_slot[branch_slot == last] = slot
            self.prompt_in_slot[slot], self.samples_left[slot] = moved, self.samples_left[last]
            self.slot_prompt_len[slot] = self.slot_prompt_len[last]
            self.slot_of_prompt[moved] = slot
        self.prompt_in_slot.pop()
        self.samples_left.pop()


def chunks_by_tokens(items: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive chunks whose padded size (rows x longest) stays within `budget` (at least one item each)."""
    chunks, current, longest = [], [], 0
    for item, length in zip(items, lengths):
        if current and (len(current) + 1) * max(longest, length) > budget:
            chunks.append(current)
            current, longest = [], 0
        current.append(item)
        longest = max(longest, length)
    if current:
        chunks.append(current)
    return chunks


# ----------------------------------------------------------------------------------------------------
# The fallback: padded batches with the model's own cache (any model `generate` can drive).


def run_padded_batches(model, prompt_ids, settings: Settings, results: Results, token_budget: int, pad_id: int) -> None:
    """Prompts in length order, in batches of whole prompts; each prompt prefilled once, then expanded to n rows."""
    order = sorted(range(len(prompt_ids)), key=lambda i: (-len(prompt_ids[i]), i))
    row_len = max(len(ids) for ids in prompt_ids) + settings.max_new_tokens
    prompts_per_batch = max(1, token_budget // (row_len * settings.n))
    for start in range(0, len(order), prompts_per_batch):
        run_padded_batch(model, prompt_ids, order[start : start + prompts_per_batch], settings, results, pad_id)


def run_padded_batch(model, prompt_ids, batch: list[int], settings: Settings, results: Results, pad_id: int) -> None:
    n = settings.n
    lengths = [len(prompt_ids[p]) for p in batch]
    width = max(lengths)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.int64)
    mask = torch.zeros(len(batch), width, dtype=torch.int64)
    for r, p in enumerate(batch):
        ids[r, width - lengths[r] :] = torch.tensor(prompt_ids[p])
        mask[r, width - lengths[r] :] = 1
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    cache, cache_arg = DynamicCache(config=model.config), cache_argument(model)
    # The cache object is filled in place; the output's field for it was renamed with the argument.
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, **{cache_arg: cache})
    cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)
    mask = mask.repeat_interleave(n, dim=0)
    position = position_ids[:, -1].repeat_interleave(n) + 1
    prompt_index = torch.tensor(batch).repeat_interleave(n)
    sample_index = torch.arange(n).repeat(len(batch))
    keys = row_keys(settings.seed, prompt_index + settings.first_index, sample_index)
    tokens = torch.zeros(len(keys), settings.max_new_tokens, dtype=torch.int64)
    live = torch.arange(len(keys))  # batch row -> original row
    for g in range(settings.max_new_tokens):
        new = pick_tokens(logits, uniforms(keys[live], torch.full_like(live, g)), settings)
        tokens[live, g] = new
        done, finished = results.ends(tokens[live], new, torch.full_like(live, g + 1))
        if done.any():
            ended = live[done]
            results.add(prompt_index[ended].tolist(), sample_index[ended].tolist(),
                        [t[: g + 1] for t in tokens[ended].tolist()], finished[done].tolist())
            keep = (~done).nonzero().flatten()
            if len(keep) == 0:
                return
            cache.batch_select_indices(keep)
            live, new, mask, position = live[keep], new[keep], mask[keep], position[keep]
        mask = torch.cat([mask, torch.ones(len(live), 1, dtype=mask.dtype)], dim=1)
        out = model(input_ids=new[:, None], attention_mask=mask, position_ids=position[:, None],
                    use_cache=True, **{cache_arg: cache})
        logits = out.logits[:, -1].float()
        position = position + 1
