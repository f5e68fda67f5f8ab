"""`east.sampling.onednn`: which layers run through oneDNN, that their results match, and that they are restored.

No timing here: the speed is measured by benchmarks/sampling.py.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from test_sampling import PROMPTS, char_tokenizer, hf_greedy, hf_text, tiny_llama

import east.sampling.hf as hf
import east.sampling.onednn as onednn
from east.sampling.onednn import onednn_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch is built without oneDNN")


def test_onednn_linear_is_usable_where_torch_has_onednn():
    assert onednn.available()


def linears(model) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def switched(model) -> list[bool]:
    return ["forward" in m.__dict__ for m in linears(model)]


def counting_onednn_calls(monkeypatch) -> list[int]:
    calls = [0]
    op = torch.ops.mkldnn._linear_pointwise

    def counted(*args):
        calls[0] += 1
        return op(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counted)
    return calls


@pytest.mark.parametrize("pack_limit", [onednn.PACK_LIMIT_BYTES, 0], ids=["packed", "plain"])
def test_every_linear_switches_gives_the_same_logits_and_is_restored(pack_limit, monkeypatch):
    monkeypatch.setattr(onednn, "PACK_LIMIT_BYTES", pack_limit)
    model = tiny_llama(50)
    calls = counting_onednn_calls(monkeypatch)
    ids = torch.randint(0, 50, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model(ids).logits
        with onednn_linears(model) as count:
            assert count == len(linears(model)) == 2 * 7 + 1  # q k v o gate up down per layer, lm_head
            assert all(switched(model))
            logits = model(ids).logits
    assert not any(switched(model))
    assert calls == [len(linears(model))]  # one forward: each layer once, through oneDNN
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        model(ids)
    assert calls == [len(linears(model))]


def test_packed_and_plain_weights_give_bit_identical_rows_with_the_bias():
    layer = torch.nn.Linear(40, 24)
    x = torch.randn(2, 3, 40)  # (batch, positions, features), as in a prefill
    with torch.inference_mode():
        packed = onednn.onednn_forward(layer, pack=True)(x)
        plain = onednn.onednn_forward(layer, pack=False)(x)
        reference = layer(x)
    assert torch.equal(packed, plain)
    torch.testing.assert_close(packed, reference, rtol=1e-5, atol=1e-5)


def test_layers_are_restored_when_the_block_raises():
    model = tiny_llama(50)
    with pytest.raises(KeyError), onednn_linears(model):
        raise KeyError("boom")
    assert not any(switched(model))


def test_other_dtypes_hooked_layers_disabled_or_missing_onednn_are_left_alone(monkeypatch):
    model = tiny_llama(50)
    model.lm_head.to(torch.bfloat16)
    own = model.model.layers[0].mlp.down_proj
    own.forward = lambda x: torch.nn.functional.linear(x, own.weight)  # like accelerate's hooks
    with onednn_linears(model) as count:
        assert count == len(linears(model)) - 2
        assert model.model.layers[0].mlp.down_proj.forward is own.forward
    assert "forward" in own.__dict__  # the module's own forward survives the block
    with onednn_linears(model, enabled=False) as count:
        assert count == 0
    monkeypatch.setattr(onednn, "available", lambda: False)
    with onednn_linears(model) as count:
        assert count == 0 and sum(switched(model)) == 1  # only the layer with its own forward


def test_training_calls_inside_the_block_take_the_stock_path(monkeypatch):
    calls = counting_onednn_calls(monkeypatch)
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    with onednn_linears(layer) as count:
        assert count == 1
        layer(x).sum().backward()  # oneDNN's op has no backward: the grad path must not reach it
    assert x.grad is not None and layer.weight.grad is not None and calls == [0]


@pytest.mark.parametrize("gemm", ["onednn", "torch"])
def test_sampler_switches_the_layers_and_matches_greedy_generate(gemm, monkeypatch):
    tok = char_tokenizer()
    model = tiny_llama(len(tok))
    counts = []
    original = hf.onednn_linears

    def spy(model, enabled=True):
        with original(model, enabled) as count:
            counts.append(count)
            yield count

    monkeypatch.setattr(hf, "onednn_linears", contextmanager(spy))
    gens = hf.sample(model, tok, PROMPTS, n=2, temperature=0, max_new_tokens=30, gemm=gemm)
    assert counts == [len(linears(model)) if gemm == "onednn" else 0]
    for prompt, gen in zip(PROMPTS, gens):
        text, num, _ = hf_text(tok, hf_greedy(model, tok, prompt, 30))
        assert gen.texts == [text, text] and gen.num_tokens == [num, num]


def test_padded_rows_are_few_sizes_at_most_an_eighth_more():
    sizes = [onednn.padded_rows(m) for m in range(1, 8193)]
    assert sizes[:15] == list(range(1, 16))
    assert all(m <= p <= m * 1.125 for m, p in zip(range(1, 8193), sizes))
    assert len(set(sizes[:256])) <= 48 and len(set(sizes)) <= 88


def test_padding_rows_changes_no_row():
    layer = torch.nn.Linear(64, 40)
    x = torch.randn(18, 64)
    forward = onednn.onednn_forward(layer, pack=True)
    with torch.inference_mode():
        seventeen = forward(x[:17])  # padded to 18 rows inside
        eighteen = forward(x)
    assert seventeen.shape == (17, 40)
    assert torch.equal(seventeen, eighteen[:17])
    torch.testing.assert_close(eighteen, layer(x), rtol=1e-5, atol=1e-5)
