"""Sampling with vLLM (GPU machines): the same `list[Generation]` as `east.sampling.hf.sample`.

    from east.sampling.vllm import load_llm, sample
    llm = load_llm("meta-llama/Llama-3.2-1B-Instruct", tensor_parallel_size=1, enable_lora=True)
    gens = sample(llm, prompts, n=128, temperature=1.0, max_new_tokens=1024, seed=0,
                  lora_path="runs/x/adapter")          # a PEFT adapter, served without merging

Parallelism: `tensor_parallel_size` (sampling.tensor_parallel_size) splits one engine over that many GPUs;
sampling.data_parallel_size is not an engine argument here but the number of engines, each a Ray actor drawing
whole shards (east.executor), since shards are the unit that is already reproducible and resumable.

vLLM is imported only inside the functions that need it, so this module imports (and its parsing is
tested) on machines without vLLM. `build_sampling_params` and `generations_from_outputs` are the pure
parts: arguments -> SamplingParams keyword arguments, and RequestOutputs -> Generations.

Conventions match the HF backend: texts exclude the stop string (vLLM's default,
include_stop_str_in_output=False) and special tokens; `num_tokens` is `len(token_ids)` of each
completion, which counts the EOS token; `finished` is False only for finish_reason "length".
"""

from __future__ import annotations

from typing import Any

from east.sampling import Generation

VLLM_MISSING = "vLLM is not installed: `pip install east-selftrain[vllm]` on a machine with a GPU"


def build_sampling_params(
    n: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 128,
    seed: int | None = 0,
    stop: list[str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams`, translated from our conventions.

    Our top_k = 0 means "off"; vLLM spells that -1 (recent versions also accept 0).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return {
        "n": n,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "top_k": int(top_k) if top_k > 0 else -1,
        "max_tokens": int(max_new_tokens),
        "seed": seed,
        "stop": list(stop) if stop else None,
        "skip_special_tokens": True,
    }


def generations_from_outputs(outputs) -> list[Generation]:
    """One Generation per RequestOutput, keeping vLLM's order (that of the prompts).

    Reads only `.outputs[i].text`, `.token_ids`, `.finish_reason` (and `.index` for the sample order),
    so any object with those attributes parses.
    """
    generations = []
    for request in outputs:
        completions = sorted(request.outputs, key=lambda c: getattr(c, "index", 0))
        generations.append(
            Generation(
                texts=[c.text for c in completions],
                num_tokens=[len(c.token_ids) for c in completions],
                finished=[finished(c.finish_reason) for c in completions],
            )
        )
    return generations


def finished(finish_reason: str | None) -> bool:
    """vLLM's "stop" (EOS, stop string, stop token) ends a sample; "length" (max_tokens) cuts it; None = unfinished."""
    return finish_reason == "stop"


def load_llm(
    model: str,
    *,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    enable_lora: bool = False,
    max_lora_rank: int = 16,
    seed: int = 0,
    **kwargs,
):
    """A `vllm.LLM`. With enable_lora, adapters are applied per request (see `sample(lora_path=...)`)."""
    vllm = import_vllm()
    lora = {"enable_lora": True, "max_lora_rank": max_lora_rank} if enable_lora else {}
    return vllm.LLM(model=model, tensor_parallel_size=tensor_parallel_size,
                    gpu_memory_utilization=gpu_memory_utilization, seed=seed, **lora, **kwargs)


def lora_request(lora_path: str, name: str = "east-adapter", lora_id: int = 1):
    """A `vllm.lora.request.LoRARequest` for a PEFT adapter directory (served unmerged)."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, lora_id, lora_path)


def sample(
    llm,
    prompts: list[str],
    n: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 128,
    seed: int = 0,
    stop: list[str] | None = None,
    lora_path: str | None = None,
    progress: bool = False,
    first_index: int = 0,
) -> list[Generation]:
    """n samples per prompt with a loaded `vllm.LLM`; prompts are already-templated strings. `first_index` is
    the index of prompts[0] in the per-prompt seeds, so a slice drawn alone gets the seeds it has in the whole."""
    vllm = import_vllm()
    # One seed per prompt: with a single seed every request would replay the same random stream.
    params = [
        vllm.SamplingParams(**build_sampling_params(n, temperature=temperature, top_p=top_p, top_k=top_k,
                                                    max_new_tokens=max_new_tokens, seed=prompt_seed(seed, first_index + i),
                                                    stop=stop))
        for i in range(len(prompts))
    ]
    # Prompts carry their special tokens as text already: tokenizing must not add a BOS again.
    requests = [{"prompt_token_ids": ids} for ids in prompt_token_ids(llm, prompts)]
    outputs = llm.generate(requests, params, use_tqdm=progress,
                           lora_request=lora_request(lora_path) if lora_path else None)
    return generations_from_outputs(outputs)


def prompt_seed(seed: int, prompt_index: int) -> int:
    """A distinct, reproducible 31-bit seed per (seed, prompt)."""
    return (seed * 1_000_003 + prompt_index * 7_919 + 1) % (2**31 - 1)


def prompt_token_ids(llm, prompts: list[str]) -> list[list[int]]:
    tokenizer = llm.get_tokenizer()
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise ImportError(VLLM_MISSING) from error
    return vllm
