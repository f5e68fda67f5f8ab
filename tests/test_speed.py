"""The speed settings of issue 15: `precision`, `sampling.gemm`, `train.group_by_length`, `threads`.

What is checked: the config refuses bad combinations in one line; `auto` picks what the (mocked) hardware
flags and timings say; fp32 reproduces the path that existed before the settings, sample for sample and
loss for loss; bf16 runs and mostly agrees with fp32; length grouping visits the same rows with less
padding. No timing is asserted here: benchmarks/sampling.py, training.py, pipeline.py and precision.py
measure the speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_helpers import dpo_rows, sft_rows, train_and_load

import east.precision as precision
import east.sampling.onednn as onednn
from east import pipeline
from east.config import RunConfig, load_config
from east.errors import UserError
from east.sampling import hf


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("override, key", [
    ("sampling.gemm=mkl", "sampling.gemm"),
    ("precision=fp16", "precision"),
    ("threads=0", "threads"),
])
def test_bad_values_name_their_key(override, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_group_by_length_is_refused_with_a_dpo_or_kto_arm():
    for loss in ("dpo", "kto"):
        with pytest.raises(UserError, match=rf"group_by_length is for SFT only, and arms use {loss}"):
            load_config(None, ["train.group_by_length=true", f"arms=[{{name: a, loss: {loss}}}]"])
    assert load_config(None, ["train.group_by_length=true"]).train.group_by_length


def test_precision_contradicting_model_dtype_is_refused():
    with pytest.raises(UserError, match="model.dtype bfloat16 and precision fp32 disagree"):
        load_config(None, ["model.dtype=bfloat16", "precision=fp32"])
    load_config(None, ["model.dtype=bfloat16", "precision=bf16"])
    load_config(None, ["model.dtype=float32", "precision=auto"])


def test_defaults_keep_the_stage_keys_of_runs_made_before(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: {"avx512_bf16"})  # auto would be bf16 here
    run = pipeline.Run(config=RunConfig(), root=tmp_path)
    assert RunConfig().sampling.gemm == "onednn" and RunConfig().precision == "default"
    assert "gemm" not in pipeline.sampling_key(run)
    assert pipeline.precision_key(run) == {} and pipeline.evaluation_sampling_key(run) == {} and pipeline.train_speed_args(run) == {}
    fast = pipeline.Run(config=load_config(None, ["sampling.gemm=auto", "precision=bf16", "train.group_by_length=true"]),
                        root=tmp_path)
    assert pipeline.sampling_key(fast)["gemm"] == "auto" and pipeline.evaluation_sampling_key(fast) == {"gemm": "auto"}
    assert pipeline.precision_key(fast) == {"precision": "bf16"}
    assert pipeline.train_speed_args(fast) == {"precision": "bf16", "group_by_length": True}


def test_evaluation_key_names_the_sampling_settings_it_depends_on(tmp_path):
    # Evaluation has no sampling section in its key; a changed stop string or backend must still redo it.
    changed = pipeline.Run(config=load_config(None, ["sampling.stop=['Q:']", "sampling.top_p=0.9", "sampling.n=4"]),
                           root=tmp_path)
    assert pipeline.evaluation_sampling_key(changed) == {"stop": ["Q:"], "top_p": 0.9}


# ----------------------------------------------------------------------------------------------------
# precision: auto


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\n")
    assert precision.cpu_flags(info) == {"fpu", "sse", "avx2", "avx512f"}
    assert precision.cpu_flags(tmp_path / "missing") == set()


def test_cpu_description_names_family_model_and_native_bf16(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\ncpu family\t: 6\nmodel\t\t: 167\n"
                    "flags\t\t: fpu avx512f amx_bf16 amx_tile\n\nprocessor\t: 1\nmodel\t\t: 999\n")
    assert precision.cpu_description(info) == "Intel(R) Xeon(R) Processor family 6 model 167, native bf16: yes"
    info.write_text("model name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\nflags\t\t: avx2\n")
    assert precision.cpu_description(info).endswith("family 25 model 1, native bf16: no")
    assert precision.cpu_description(tmp_path / "missing") == "processor unknown"


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "fma"}, "fp32"),  # Zen 3: bf16 is emulated, slow
    ({"avx512f", "avx512_bf16"}, "bf16"),  # Zen 4, Cooper Lake
    ({"avx512f", "amx_bf16", "amx_tile"}, "bf16"),  # Sapphire Rapids and later
    (set(), "fp32"),  # no /proc/cpuinfo
])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(flags, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: flags)
    assert precision.resolve_precision("auto") == expected
    assert precision.resolve_precision("fp32") == "fp32" and precision.resolve_precision("bf16") == "bf16"
    assert precision.resolve_precision("default") == "fp32"  # as before the setting, whatever the CPU


@pytest.mark.parametrize("bf16_supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_the_device(bf16_supported, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: {"amx_bf16"})  # the device decides, not the CPU
    assert precision.resolve_precision("auto") == expected
    assert precision.resolve_precision("default") == precision.previous_default() == expected


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("fp16")


# ----------------------------------------------------------------------------------------------------
# sampling.gemm: auto


def test_auto_gemm_leaves_onednn_only_for_a_clearly_faster_path():
    assert onednn.faster_gemm({"onednn": 1.0, "torch": 0.90}) == "torch"
    assert onednn.faster_gemm({"onednn": 1.0, "torch": 0.97}) == "onednn"  # within the margin: the default stays
    assert onednn.faster_gemm({"onednn": 0.5, "torch": 1.0}) == "onednn"


def test_auto_gemm_times_the_models_shapes_once_and_uses_the_choice(monkeypatch):
    from test_sampling import PROMPTS, char_tokenizer, tiny_llama

    tok = char_tokenizer()
    model = tiny_llama(len(tok))
    timed = []

    def fake_seconds(shapes):
        timed.append(shapes)
        return {"onednn": 2.0, "torch": 1.0}

    monkeypatch.setattr(onednn, "_CHOSEN", {})
    monkeypatch.setattr(onednn, "gemm_seconds", fake_seconds)
    switched = []
    original = hf.onednn_linears

    def spy(model, enabled=True):
        switched.append(enabled)
        return original(model, enabled)

    monkeypatch.setattr(hf, "onednn_linears", spy)
    auto = hf.sample(model, tok, PROMPTS, n=2, temperature=0, max_new_tokens=8, gemm="auto")
    hf.sample(model, tok, PROMPTS, n=2, temperature=0, max_new_tokens=8, gemm="auto")
    plain = hf.sample(model, tok, PROMPTS, n=2, temperature=0, max_new_tokens=8, gemm="torch")
    assert len(timed) == 1  # timed at first use only
    # Every Linear of the model, by (in, out, bias): q k v o gate up down per layer, plus lm_head.
    assert sum(timed[0].values()) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert switched == [False, False, False]  # torch was faster: nothing was switched to oneDNN
    assert [g.texts for g in auto] == [g.texts for g in plain]


def test_auto_gemm_has_nothing_to_time_for_a_bf16_model(monkeypatch):
    from test_sampling import tiny_llama

    monkeypatch.setattr(onednn, "gemm_seconds", lambda shapes: pytest.fail("timed a model with no fp32 layer"))
    assert onednn.resolve_gemm(tiny_llama(20).to(torch.bfloat16), "auto") == "onednn"
    with pytest.raises(ValueError, match="sampling.gemm must be one of"):
        onednn.resolve_gemm(tiny_llama(20), "mkl")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch is built without oneDNN")
def test_gemm_seconds_measures_both_paths(monkeypatch):
    monkeypatch.setattr(onednn, "AUTO_SECONDS", 0.001)
    state = torch.random.get_rng_state()
    seconds = onednn.gemm_seconds({(32, 48, False): 2, (48, 32, True): 1}, rows=8)
    assert set(seconds) == {"onednn", "torch"} and all(s > 0 for s in seconds.values())
    assert torch.equal(torch.random.get_rng_state(), state)  # timing draws nothing from the global RNG


# ----------------------------------------------------------------------------------------------------
# Sampling: fp32 is the path of before; bf16 mostly agrees


def builtin_prompts(count: int):
    from east.backbone import build_tokenizer
    from east.tasks.arith import make_questions
    from east.tasks.prompts import render_prompt

    tok = build_tokenizer()
    return [render_prompt(tok, q) for q in make_questions("train", count)]


def test_precision_fp32_samples_exactly_as_before(tmp_path):
    """The pipeline's model loading and sampler call with precision fp32 against the calls it made before the
    settings existed (model dtype auto = fp32 on CPU, the sampler's defaults)."""
    from east.backbone import builtin_checkpoint
    from east.models import load_model_and_tokenizer

    prompts = builtin_prompts(24)
    run = pipeline.Run(config=load_config(None, ["precision=fp32"]), root=tmp_path)
    model, tok = pipeline.load_model_and_tokenizer(run, builtin_checkpoint())
    assert model.dtype == torch.float32
    ours = pipeline.generate(run, model, tok, prompts, 4, seed=3)
    old_model, old_tok = load_model_and_tokenizer(builtin_checkpoint(), dtype="auto")
    before = hf.sample(old_model, old_tok, prompts, 4, temperature=1.0, max_new_tokens=64, seed=3, token_budget=65536)
    assert [g.texts for g in ours] == [g.texts for g in before]
    assert [g.num_tokens for g in ours] == [g.num_tokens for g in before]


def test_the_kv_cache_of_a_bf16_model_on_cpu_is_fp32_and_others_keep_their_dtype(monkeypatch):
    assert hf.cache_dtype(torch.zeros(1, dtype=torch.bfloat16)) == torch.float32
    for dtype in (torch.float32, torch.float16):
        assert hf.cache_dtype(torch.zeros(1, dtype=dtype)) == dtype

    from east.backbone import builtin_checkpoint
    from east.models import load_model_and_tokenizer

    allocated = []
    allocate = hf.SlotBatcher.allocate_cache

    def spy(self, kv_example):
        cache = allocate(self, kv_example)
        allocated.append((kv_example[0][0].dtype, {layer.keys.dtype for layer in cache.layers}))
        return cache

    monkeypatch.setattr(hf.SlotBatcher, "allocate_cache", spy)
    model, tok = load_model_and_tokenizer(builtin_checkpoint(), dtype="bfloat16")
    [generation] = hf.sample(model, tok, builtin_prompts(1), 2, temperature=1.0, max_new_tokens=8, seed=0)
    assert allocated == [(torch.bfloat16, {torch.float32})] and all(generation.texts)


def test_bf16_sampling_runs_in_bf16_and_mostly_agrees_with_fp32(tmp_path):
    from east.backbone import builtin_checkpoint

    prompts = builtin_prompts(16)
    texts = {}
    for name in ("fp32", "bf16"):
        run = pipeline.Run(config=load_config(None, [f"precision={name}"]), root=tmp_path)
        model, tok = pipeline.load_model_and_tokenizer(run, builtin_checkpoint())
        assert model.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        texts[name] = [g.texts[0] for g in pipeline.generate(run, model, tok, prompts, 1, seed=0, temperature=0.0,
                                                             max_new_tokens=48)]
    same = sum(a == b for a, b in zip(texts["fp32"], texts["bf16"]))
    # Greedy paths diverge where two tokens' logits are within bf16's rounding; most do not.
    # (benchmarks/precision.py measures the agreement on more questions.)
    assert same >= len(prompts) // 2, (same, texts)
    assert all(t for t in texts["bf16"])


# ----------------------------------------------------------------------------------------------------
# Training: fp32 is the loss curve of before; bf16 autocast; length grouping


def loss_curve(path: Path) -> list[float]:
    return [e["loss"] for e in json.loads((path.parent / "train_metrics.json").read_text())["loss_curve"]]


def test_fp32_training_is_the_loss_curve_of_before(tmp_path):
    rows = sft_rows([1.0, 2.0, 0.5, 1.0, 1.5, 1.0])
    before, _ = train_and_load(tmp_path / "before", "sft", rows)
    fp32, model = train_and_load(tmp_path / "fp32", "sft", rows, precision="fp32", group_by_length=False)
    assert loss_curve(fp32) == loss_curve(before)  # bit for bit: the same path
    assert next(model.parameters()).dtype == torch.float32


def test_bf16_training_autocasts_over_fp32_weights(tmp_path):
    rows = sft_rows([1.0, 2.0, 0.5, 1.0, 1.5, 1.0])
    fp32, _ = train_and_load(tmp_path / "fp32", "sft", rows, precision="fp32")
    bf16, model = train_and_load(tmp_path / "bf16", "sft", rows, precision="bf16")
    assert next(model.parameters()).dtype == torch.float32  # master weights, saved in fp32
    settings = json.loads((bf16.parent / "train_metrics.json").read_text())["settings"]
    assert settings["bf16_autocast"] is True and settings["dtype"] == "torch.float32"
    a, b = loss_curve(fp32), loss_curve(bf16)
    assert a != b  # autocast is on: bf16 products round differently
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=2e-2, atol=0)


def test_bf16_training_on_cpu_attends_in_fp32_and_saves_the_models_own_attention(tmp_path, monkeypatch):
    import east.training.run as run

    seen = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        out, weights = run_fp32_sdpa(module, query, key, value, attention_mask, **kwargs)
        seen.append((query.dtype, out.dtype, torch.is_autocast_enabled("cpu")))
        return out, weights

    run_fp32_sdpa = run.fp32_sdpa
    monkeypatch.setattr(run, "fp32_sdpa", spy)
    rows = sft_rows([1.0, 2.0, 0.5, 1.0])
    path, model = train_and_load(tmp_path / "bf16", "sft", rows, precision="bf16")
    # Under autocast (without this function, sdpa would run in bf16); the output keeps the query's dtype.
    assert seen and all(autocast and q == out for q, out, autocast in seen)
    assert run.FP32_ATTENTION not in (path / "config.json").read_text()
    assert model.config._attn_implementation == "sdpa"
    seen.clear()
    train_and_load(tmp_path / "fp32", "sft", rows, precision="fp32")
    assert not seen  # fp32 training keeps sdpa: the loss curve of before


def test_fp32_sdpa_is_sdpa_computed_in_fp32():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from east.training.run import fp32_sdpa

    module = torch.nn.Module()
    module.is_causal, module.training = True, False
    q, k, v = (torch.randn(2, 4, 7, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    expected, _ = sdpa_attention_forward(module, q, k, v, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = fp32_sdpa(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), None)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=3e-2)  # only the inputs' bf16 rounding differs
    exact, _ = fp32_sdpa(module, q, k, v, None)
    assert torch.equal(exact, expected)


def test_group_by_length_is_refused_for_dpo(tmp_path):
    with pytest.raises(ValueError, match="group_by_length is for SFT only"):
        train_and_load(tmp_path, "dpo", dpo_rows([1.0, 1.0]), group_by_length=True, beta=0.1)


def grouped_trainer(tmp_path, rows, group: bool):
    """A weighted SFT trainer as east.training.train builds it, with or without length grouping."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from east.training.sft import WeightedSFTTrainer
    from training_helpers import save_tiny
    from datasets import Dataset

    base = save_tiny(tmp_path / "base")
    args = SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, bf16=False, report_to="none",
                     seed=0, max_length=64, train_sampling_strategy="group_by_length" if group else "random")
    return WeightedSFTTrainer(AutoModelForCausalLM.from_pretrained(base), args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=AutoTokenizer.from_pretrained(base))


def test_group_by_length_pads_less_and_keeps_every_row_with_its_weight(tmp_path):
    # Rows of very different lengths, interleaved, with weights that identify them.
    rows = [{**r, "completion": r["completion"] * (1 + 6 * (i % 2)), "weight": float(i + 1)}
            for i, r in enumerate(sft_rows([1.0] * 32))]
    padding, seen = {}, {}
    for group in (False, True):
        trainer = grouped_trainer(tmp_path / str(group), rows, group)
        batches = list(trainer.get_train_dataloader())
        padding[group] = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
        seen[group] = sorted(float(w) for b in batches for w in b["weight"])
    assert seen[True] == seen[False] == [float(i + 1) for i in range(32)]  # each row once, weight attached
    assert padding[True] < 0.6 * padding[False]  # 288 against 576 padding tokens here


def test_group_by_length_trains_on_the_same_rows(tmp_path):
    """With learning rate 0 and one row per batch, an epoch's losses are per-row losses: grouping reorders them."""
    rows = sft_rows([1.0, 2.0, 0.5, 1.0, 1.5, 3.0])
    plain, _ = train_and_load(tmp_path / "plain", "sft", rows, learning_rate=1e-30, per_device_train_batch_size=1)
    grouped, _ = train_and_load(tmp_path / "grouped", "sft", rows, learning_rate=1e-30, per_device_train_batch_size=1,
                                group_by_length=True)
    a, b = loss_curve(plain), loss_curve(grouped)
    assert len(a) == len(b) == len(rows)
    torch.testing.assert_close(sorted(b), sorted(a), rtol=1e-6, atol=0)


def test_the_sample_manifest_records_what_auto_chose(tmp_path, monkeypatch):
    from test_sampling import tiny_llama

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(onednn, "_CHOSEN", {})
    monkeypatch.setattr(onednn, "gemm_seconds", lambda shapes: {"onednn": 1.0, "torch": 0.5})
    auto = pipeline.Run(config=load_config(None, ["precision=auto", "sampling.gemm=auto"]), root=tmp_path)
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: {"avx512_bf16"})
    # bf16 weights: one matmul path, nothing to choose
    assert pipeline.sampler_choices(auto, tiny_llama(20).to(torch.bfloat16)) == {"precision": "bf16"}
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: {"avx2"})
    assert pipeline.sampler_choices(auto, tiny_llama(20)) == {"precision": "fp32", "gemm": "torch"}
    plain = pipeline.Run(config=RunConfig(), root=tmp_path)
    assert pipeline.sampler_choices(plain, tiny_llama(20)) == {}
