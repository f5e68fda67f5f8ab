"""The HF sampler (`east.sampling.hf.sample`) against `model.generate` and against the model's softmax.

Tiny random Llamas and a character tokenizer built here, so the tests own their fixtures; no timing.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import east.sampling.hf as hf
from east.sampling import Generation, cut_at_stop
from east.sampling.hf import pick_tokens, sample, uniforms

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 +-*=?.,:\n")
PROMPTS = ["abc", "hello world 12", "x", "what is 2+2? answer:", "qq", "the cat sat on 7 mats.\n"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({c: i + 3 for i, c in enumerate(CHARS)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_llama(vocab: int, *, seed: int = 0, eos: int = 2, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=eos, pad_token_id=0, bos_token_id=1, attn_implementation=attn)
    model = LlamaForCausalLM(config).eval()
    # Sharper logits than the default init, so samples have structure and EOS comes up sometimes.
    with torch.no_grad():
        model.lm_head.weight.mul_(8)
    return model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and competing for shared cores can slow them tenfold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(len(tok))


@pytest.fixture(params=["slots", "padded"])
def path(request, monkeypatch):
    """Run a test on the continuous-batching path and on the padded-batch fallback."""
    if request.param == "padded":
        monkeypatch.setattr(hf, "uses_slot_cache", lambda model: False)
    return request.param


def hf_greedy(model, tok, prompt: str, max_new_tokens: int, **kwargs) -> list[int]:
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=0, **kwargs)
    return out[0, ids.shape[1] :].tolist()


def hf_text(tok, ids: list[int], eos: int = 2) -> tuple[str, int, bool]:
    """(text, num_tokens, finished) of an HF greedy continuation, read the way the sampler reports it."""
    if eos in ids:
        cut = ids.index(eos) + 1
        return tok.decode(ids[: cut - 1], skip_special_tokens=True), cut, True
    return tok.decode(ids, skip_special_tokens=True), len(ids), False


# -- greedy equals model.generate --------------------------------------------------------------------


@pytest.mark.parametrize("token_budget", [3 * 60, 10_000])  # 3 slots: rows end and refill mid-run; or all at once
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_greedy_matches_generate(tok, path, token_budget, attn):
    model = tiny_llama(len(tok), attn=attn)
    max_new = 30
    gens = sample(model, tok, PROMPTS, n=2, temperature=0, max_new_tokens=max_new, token_budget=token_budget)
    for prompt, gen in zip(PROMPTS, gens):
        text, num, fin = hf_text(tok, hf_greedy(model, tok, prompt, max_new))
        assert gen.texts == [text, text]
        assert gen.num_tokens == [num, num]
        assert gen.finished == [fin, fin]


def test_refills_slot_moves_and_branch_moves_keep_greedy_exact(tok, monkeypatch):
    """Many prompts through 5 rows: prompt slots are freed out of order (and moved), branch rows move into holes."""
    model = tiny_llama(len(tok))
    prompts = PROMPTS + [p[::-1] for p in PROMPTS] + [p.upper().lower() + "7" for p in PROMPTS]
    events = Counter()
    free_prompt_slot, copy_rows = hf.SlotBatcher.free_prompt_slot, hf.SlotLayer.copy_rows

    def counting_free(self, slot):
        events["moved" if slot != len(self.prompt_in_slot) - 1 else "last"] += 1
        free_prompt_slot(self, slot)

    def counting_copy(self, source, target, columns):
        events["branch rows copied"] += len(source)
        copy_rows(self, source, target, columns)

    monkeypatch.setattr(hf.SlotBatcher, "free_prompt_slot", counting_free)
    monkeypatch.setattr(hf.SlotLayer, "copy_rows", counting_copy)
    longest = max(len(p) for p in prompts)
    gens = sample(model, tok, prompts, n=2, temperature=0, max_new_tokens=30, token_budget=5 * (longest + 30))
    for prompt, gen in zip(prompts, gens):
        text, num, fin = hf_text(tok, hf_greedy(model, tok, prompt, 30))
        assert (gen.texts, gen.num_tokens, gen.finished) == ([text] * 2, [num] * 2, [fin] * 2)
    assert events["moved"] > 0 and events["branch rows copied"] > 0, events


def test_shared_prefixes_split_into_branches_and_change_nothing(tok, monkeypatch):
    """A confident model: samples of a prompt share branches, which split as they draw different tokens.

    The output equals that of the padded path, which runs one row per sample.
    """
    model = tiny_llama(len(tok), seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(16)  # sharper still: many draws agree, some do not
    seen = Counter()
    decode_step, copy_rows = hf.SlotBatcher.decode_step, hf.SlotLayer.copy_rows

    def counting_step(self):
        seen["samples"] += int(self.active.sum())
        seen["branches"] += self.branches
        decode_step(self)

    def counting_copy(self, source, target, columns):
        seen["copied"] += len(source)
        copy_rows(self, source, target, columns)

    monkeypatch.setattr(hf.SlotBatcher, "decode_step", counting_step)
    monkeypatch.setattr(hf.SlotLayer, "copy_rows", counting_copy)
    kwargs = dict(n=12, temperature=1.0, max_new_tokens=30, seed=4)
    shared = sample(model, tok, PROMPTS, token_budget=40 * 54, **kwargs)
    assert seen["branches"] < 0.8 * seen["samples"], seen
    assert seen["copied"] > 0, seen
    assert any(len(set(g.texts)) > 1 for g in shared)
    monkeypatch.setattr(hf, "uses_slot_cache", lambda model: False)
    assert sample(model, tok, PROMPTS, **kwargs) == shared


def test_greedy_covers_eos_and_max_tokens(tok, model):
    gens = sample(model, tok, PROMPTS, n=1, temperature=0, max_new_tokens=30)
    finished = {g.finished[0] for g in gens}
    assert finished == {True, False}, "fixture should have prompts ending by EOS and by max_new_tokens"
    for g in gens:
        if not g.finished[0]:
            assert g.num_tokens[0] == 30


def test_eos_from_generation_config_ends_samples(tok, path):
    """A model whose EOS is an ordinary character stops right there, as generate does."""
    model = tiny_llama(len(tok))
    first = hf_greedy(model, tok, PROMPTS[1], 12)
    model.generation_config.eos_token_id = [first[4], 2]  # the 5th greedy token becomes an EOS
    gen = sample(model, tok, [PROMPTS[1]], n=1, temperature=0, max_new_tokens=12)[0]
    ids = hf_greedy(model, tok, PROMPTS[1], 12)
    cut = min(i for i, t in enumerate(ids) if t in (first[4], 2)) + 1
    assert gen.num_tokens == [cut]
    assert gen.texts == [tok.decode(ids[: cut - 1])]
    assert gen.finished == [True]


def test_stop_strings_end_where_generate_stops(tok, model, path):
    max_new, checked = 40, 0
    for prompt in PROMPTS:
        plain = tok.decode(hf_greedy(model, tok, prompt, max_new), skip_special_tokens=True)
        stop = plain[5:7]
        # generate also matches a stop string spanning prompt and completion; we only look at the completion.
        if len(plain) < 9 or (prompt + plain).find(stop) < len(prompt):
            continue
        checked += 1
        ids = hf_greedy(model, tok, prompt, max_new, stop_strings=[stop], tokenizer=tok)
        hf_full = tok.decode(ids, skip_special_tokens=True)
        assert hf_full.endswith(stop)
        gen = sample(model, tok, [prompt], n=1, temperature=0, max_new_tokens=max_new, stop=[stop])[0]
        assert gen.texts == [hf_full[: -len(stop)]]
        assert gen.num_tokens == [len(ids)]
        assert gen.finished == [True]
    assert checked >= 3


# -- the sampled distribution ------------------------------------------------------------------------


def chi_square(counts: Counter, probs: torch.Tensor, total: int) -> tuple[float, int]:
    """Pearson statistic and degrees of freedom, pooling cells with expected count < 5 into one."""
    stat, pooled_obs, pooled_exp, cells = 0.0, 0, 0.0, 0
    for token, p in enumerate(probs.tolist()):
        expected, observed = p * total, counts.get(token, 0)
        if expected < 5:
            pooled_obs, pooled_exp = pooled_obs + observed, pooled_exp + expected
            continue
        stat += (observed - expected) ** 2 / expected
        cells += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    return stat, cells - 1


def chi_square_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df); z = 3.09 is the 0.999 quantile of the normal."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def next_token_probs(model, tok, text: str, temperature: float = 1.0) -> torch.Tensor:
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    return torch.softmax(logits / temperature, dim=-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_first_tokens_follow_the_softmax(tok, model, temperature):
    prompt, n = "hello world 12", 4000
    gen = sample(model, tok, [prompt], n=n, temperature=temperature, max_new_tokens=1, seed=3)[0]
    # A single character per sample; the special tokens (pad, bos, eos) all decode to "": one cell.
    counts = Counter(tok.convert_tokens_to_ids(t) if t else 0 for t in gen.texts)
    probs = next_token_probs(model, tok, prompt, temperature)
    probs[0] += probs[1] + probs[2]
    probs[1:3] = 0
    stat, df = chi_square(counts, probs, n)
    assert df >= 5
    assert stat < chi_square_critical(df), (stat, df)


def test_second_tokens_follow_the_softmax_through_the_cache(tok, model):
    """The token after the most common first token: checks the decode step on the slot cache, not just prefill."""
    prompt, n = "what is 2+2? answer:", 6000
    gen = sample(model, tok, [prompt], n=n, temperature=1.0, max_new_tokens=2, seed=5, token_budget=600 * 22)[0]
    pairs = [t for t, k in zip(gen.texts, gen.num_tokens) if k == 2 and len(t) == 2]
    head = Counter(t[0] for t in pairs).most_common(1)[0][0]
    seconds = Counter(tok.convert_tokens_to_ids(t[1]) for t in pairs if t[0] == head)
    total = sum(seconds.values())
    assert total > 500
    probs = next_token_probs(model, tok, prompt + head)
    probs[:3] = 0  # special second tokens were dropped above (they decode to "")
    stat, df = chi_square(seconds, probs / probs.sum(), total)
    assert stat < chi_square_critical(df), (stat, df)


def test_top_k_and_top_p_restrict_the_support(tok, model):
    prompt, n = "hello world 12", 600
    probs = next_token_probs(model, tok, prompt)
    order = torch.argsort(probs, descending=True).tolist()
    first = lambda gen: {tok.convert_tokens_to_ids(t) if t else 2 for t in gen.texts}  # noqa: E731
    top3 = first(sample(model, tok, [prompt], n=n, top_k=3, max_new_tokens=1)[0])
    assert top3 == set(order[:3])
    mass = torch.cumsum(probs[order], 0)
    nucleus = set(order[: int((mass < 0.6).sum()) + 1])  # smallest prefix with mass >= 0.6
    assert first(sample(model, tok, [prompt], n=n, top_p=0.6, max_new_tokens=1)[0]) == nucleus
    both = first(sample(model, tok, [prompt], n=n, top_k=1, top_p=0.9, max_new_tokens=1)[0])
    assert both == {order[0]}


def test_pick_tokens_matches_hf_top_p_warper():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(64, 50) * 3
    settings = hf.Settings(n=1, temperature=1.0, top_p=0.8, top_k=10, max_new_tokens=1, seed=0, stop=())
    warped = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(10)(None, logits.clone()))
    allowed = torch.isfinite(warped)
    for step in range(50):
        u = uniforms(torch.arange(64), torch.full((64,), step))
        picked = pick_tokens(logits, u, settings)
        assert allowed.gather(1, picked[:, None]).all()


def test_uniforms_are_uniform_and_in_range():
    u = uniforms(torch.arange(100_000), torch.zeros(100_000, dtype=torch.int64))
    assert 0 < float(u.min()) and float(u.max()) < 1
    counts = torch.histc(u.float(), bins=20, min=0, max=1)
    stat = float(((counts - 5000) ** 2 / 5000).sum())
    assert stat < chi_square_critical(19)


# -- seeds, batches, callbacks -----------------------------------------------------------------------


def test_same_seed_same_output_and_other_seed_differs(tok, model):
    kwargs = dict(n=4, temperature=1.0, max_new_tokens=25)
    a = sample(model, tok, PROMPTS, seed=11, **kwargs)
    assert a == sample(model, tok, PROMPTS, seed=11, **kwargs)
    assert a != sample(model, tok, PROMPTS, seed=12, **kwargs)


def test_the_cache_goes_by_the_name_the_model_takes(tok, model, path):
    # transformers 5.24 renamed forward's past_key_values to cache (the old name goes in 5.40); a model taking the
    # old name still gets it. No deprecation warning from either sampler path.
    import warnings

    from east.sampling.hf import cache_argument

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            pass

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, use_cache=None):
            pass

    assert cache_argument(Old()) == "past_key_values" and cache_argument(New()) == "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        sample(model, tok, PROMPTS, n=2, temperature=1.0, max_new_tokens=8, seed=3)


def test_output_does_not_depend_on_the_batch_plan(tok, model, monkeypatch):
    """Draws are keyed by (seed, prompt, sample, step): slot count and path change nothing."""
    kwargs = dict(n=5, temperature=1.0, top_p=0.95, max_new_tokens=25, seed=7)
    reference = sample(model, tok, PROMPTS, token_budget=100_000, **kwargs)
    assert sample(model, tok, PROMPTS, token_budget=4 * 49, **kwargs) == reference  # 4 slots, partial prompts
    monkeypatch.setattr(hf, "uses_slot_cache", lambda model: False)
    assert sample(model, tok, PROMPTS, token_budget=100, **kwargs) == reference


def test_samples_of_a_prompt_differ_at_temperature_one(tok, model, path):
    gens = sample(model, tok, PROMPTS, n=8, temperature=1.0, max_new_tokens=20)
    for gen in gens:
        assert len(gen.texts) == 8
        assert len(set(gen.texts)) > 1


def test_greedy_samples_are_identical(tok, model):
    for gen in sample(model, tok, PROMPTS, n=3, temperature=0, max_new_tokens=20):
        assert len(set(gen.texts)) == 1


def test_on_done_fires_once_per_prompt_with_its_generation(tok, model, path):
    seen: dict[int, Generation] = {}

    def on_done(i: int, gen: Generation) -> None:
        assert i not in seen
        seen[i] = gen

    gens = sample(model, tok, PROMPTS, n=3, max_new_tokens=15, token_budget=5 * 38, on_done=on_done, progress=True)
    assert seen == dict(enumerate(gens))


def test_n_larger_than_the_batch(tok, model):
    gens = sample(model, tok, PROMPTS[:2], n=9, max_new_tokens=10, token_budget=2 * 24)  # 2 slots
    assert [len(g.texts) for g in gens] == [9, 9]
    assert all(0 < k <= 10 for g in gens for k in g.num_tokens)


def test_bad_arguments_are_rejected(tok, model):
    for kwargs in (dict(n=0), dict(n=1, temperature=-1), dict(n=1, top_p=0), dict(n=1, top_k=-2),
                   dict(n=1, max_new_tokens=0)):
        with pytest.raises(ValueError):
            sample(model, tok, ["abc"], **kwargs)
    with pytest.raises(ValueError, match="empty prompt"):
        sample(model, tok, [""], n=1)
    assert sample(model, tok, [], n=3) == []


def test_cut_at_stop_and_sample_set():
    assert cut_at_stop("a+b\n\nQ: x", ["\n\n", "Q:"]) == ("a+b", True)
    assert cut_at_stop("abc", ["z"]) == ("abc", False)
    assert cut_at_stop("abc", None) == ("abc", False)
    row = Generation(["x", "y"], [2, 3], [True, False]).to_sample_set("q1", "P")
    assert (row.question_id, row.prompt, row.responses, row.num_tokens, row.finished) == (
        "q1", "P", ["x", "y"], [2, 3], [True, False])


def test_generate_path_for_accelerators_matches_the_fast_sampler_when_greedy():
    """The path used for models on a GPU (model.generate) gives the fast CPU sampler's greedy output."""
    from east.backbone import builtin_checkpoint
    from east.models import load_model_and_tokenizer
    from east.sampling import generate, hf

    model, tokenizer = load_model_and_tokenizer(str(builtin_checkpoint()))
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("Mia has 12 figs and buys 7. How many now?", "Bo has 3 pens, doubles them and sells 2. How many now?")]
    fast = hf.sample(model, tokenizer, prompts, 2, temperature=0, max_new_tokens=40)
    slow = generate.sample(model, tokenizer, prompts, 2, temperature=0, max_new_tokens=40, token_budget=100)
    assert [g.texts for g in slow] == [g.texts for g in fast]
    assert [g.finished for g in slow] == [g.finished for g in fast]
    sampled = generate.sample(model, tokenizer, prompts, 3, temperature=1.0, max_new_tokens=40, seed=1)
    assert all(len(g.texts) == 3 for g in sampled)
