"""The vLLM adapter without vLLM: its pure parts on duck-typed stand-ins and a fake `vllm` module,
plus the same parsing on vLLM's own output classes where vLLM is installed."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from east.sampling import Generation
from east.sampling import vllm as adapter


def completion(index: int, text: str, token_ids: list[int], finish_reason: str | None):
    return SimpleNamespace(index=index, text=text, token_ids=token_ids, finish_reason=finish_reason)


def test_build_sampling_params_translates_our_conventions():
    params = adapter.build_sampling_params(8, temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=64, seed=3,
                                           stop=["\n\n"])
    assert params == {"n": 8, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "max_tokens": 64, "seed": 3,
                      "stop": ["\n\n"], "skip_special_tokens": True}
    assert adapter.build_sampling_params(1, top_k=5, stop=[])["top_k"] == 5
    assert adapter.build_sampling_params(1, stop=[])["stop"] is None
    with pytest.raises(ValueError):
        adapter.build_sampling_params(0)


def test_generations_from_duck_typed_outputs():
    outputs = [
        SimpleNamespace(outputs=[completion(1, "b", [5, 6], "length"), completion(0, "a", [4, 2], "stop")]),
        SimpleNamespace(outputs=[completion(0, "", [2], "stop"), completion(1, "zz", [7], None)]),
    ]
    assert adapter.generations_from_outputs(outputs) == [
        Generation(texts=["a", "b"], num_tokens=[2, 2], finished=[True, False]),
        Generation(texts=["", "zz"], num_tokens=[1, 1], finished=[True, False]),
    ]


def test_generations_without_index_keep_output_order():
    outputs = [SimpleNamespace(outputs=[SimpleNamespace(text=t, token_ids=[1], finish_reason="stop") for t in "xy"])]
    assert adapter.generations_from_outputs(outputs)[0].texts == ["x", "y"]


def test_prompt_seeds_differ_and_repeat():
    seeds = [adapter.prompt_seed(0, i) for i in range(100)]
    assert len(set(seeds)) == 100 and seeds == [adapter.prompt_seed(0, i) for i in range(100)]
    assert adapter.prompt_seed(1, 0) != adapter.prompt_seed(0, 0)
    assert all(0 <= s < 2**31 for s in seeds)


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in `vllm` package recording what the adapter hands it."""
    module = types.ModuleType("vllm")
    lora = types.ModuleType("vllm.lora")
    lora_request = types.ModuleType("vllm.lora.request")

    class SamplingParams(SimpleNamespace):
        pass

    class LoRARequest(SimpleNamespace):
        def __init__(self, name, lora_id, path):
            super().__init__(name=name, lora_id=lora_id, path=path)

    class LLM:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def get_tokenizer(self):
            return lambda text, add_special_tokens=True: {"input_ids": ([0] if add_special_tokens else []) + [ord(c) for c in text]}

        def generate(self, requests, params, use_tqdm=True, lora_request=None):
            self.calls = (requests, params, lora_request)
            return [SimpleNamespace(outputs=[completion(j, f"{i}:{j}", [1] * (j + 1), "stop") for j in range(p.n)])
                    for i, p in enumerate(params)]

    module.SamplingParams, module.LLM = SamplingParams, LLM
    lora_request.LoRARequest = LoRARequest
    for name, mod in (("vllm", module), ("vllm.lora", lora), ("vllm.lora.request", lora_request)):
        monkeypatch.setitem(sys.modules, name, mod)
    return module


def test_sample_wires_prompts_params_and_lora(fake_vllm):
    llm = adapter.load_llm("some/model", tensor_parallel_size=2, gpu_memory_utilization=0.5, enable_lora=True)
    assert llm.kwargs == {"model": "some/model", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.5,
                          "seed": 0, "enable_lora": True, "max_lora_rank": 16}
    gens = adapter.sample(llm, ["ab", "c"], n=3, temperature=0.5, max_new_tokens=7, seed=1, lora_path="/adapter")
    requests, params, lora = llm.calls
    assert requests == [{"prompt_token_ids": [97, 98]}, {"prompt_token_ids": [99]}]  # no BOS added
    assert [p.n for p in params] == [3, 3] and params[0].max_tokens == 7 and params[0].temperature == 0.5
    assert params[0].seed != params[1].seed
    assert (lora.name, lora.lora_id, lora.path) == ("east-adapter", 1, "/adapter")
    assert gens[1] == Generation(texts=["1:0", "1:1", "1:2"], num_tokens=[1, 2, 3], finished=[True] * 3)
    adapter.sample(llm, ["ab"], n=1)
    assert llm.calls[2] is None  # no adapter: base model


def test_missing_vllm_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match="vLLM is not installed"):
        adapter.load_llm("some/model")


def test_parsing_vllm_request_outputs():
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed (GPU machines only); parsing is covered above")
    from vllm.outputs import CompletionOutput, RequestOutput

    outputs = [
        RequestOutput(request_id="0", prompt="p", prompt_token_ids=[1, 2], prompt_logprobs=None, finished=True,
                      outputs=[CompletionOutput(index=0, text="4", token_ids=[9, 2], cumulative_logprob=None,
                                                logprobs=None, finish_reason="stop"),
                               CompletionOutput(index=1, text="12", token_ids=[3, 4, 5], cumulative_logprob=None,
                                                logprobs=None, finish_reason="length")]),
    ]
    assert adapter.generations_from_outputs(outputs) == [Generation(["4", "12"], [2, 3], [True, False])]
    params = vllm.SamplingParams(**adapter.build_sampling_params(4, top_k=0, stop=["x"], seed=0))
    assert params.n == 4 and params.stop == ["x"]


def test_first_index_gives_a_slice_the_seeds_it_has_in_the_whole(fake_vllm):
    llm = adapter.load_llm("some/model")
    adapter.sample(llm, ["a", "b", "c"], n=2, seed=4)
    whole = [p.seed for p in llm.calls[1]]
    adapter.sample(llm, ["b", "c"], n=2, seed=4, first_index=1)
    assert [p.seed for p in llm.calls[1]] == whole[1:]
    adapter.sample(llm, ["b", "c"], n=2, seed=4)
    assert [p.seed for p in llm.calls[1]] != whole[1:]  # the control: numbered from 0
