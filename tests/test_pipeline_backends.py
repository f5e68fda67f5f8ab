"""The pipeline's other model sources, without a GPU or the network: the vLLM sampling backend (through a
stand-in `vllm` module) and task splits loaded from a `datasets` hub id (through a stand-in loader)."""

from types import SimpleNamespace

import datasets
from test_sampling_vllm import fake_vllm  # noqa: F401  (fixture)
from typer.testing import CliRunner

from east import io
from east.backbone import builtin_checkpoint
from east.cli import app
from east.models import load_tokenizer
from east.sampling import vllm as adapter

runner = CliRunner()
TINY = ["task.train_size=6", "task.test_size=4", "sampling.n=3", "sampling.max_new_tokens=16"]


class FakeLLM:
    """Answers every prompt with its index as a boxed number, through vLLM's request/response shapes."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.tokenizer = load_tokenizer(str(builtin_checkpoint()))

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, requests, params, use_tqdm=True, lora_request=None):
        return [SimpleNamespace(outputs=[SimpleNamespace(index=j, text=f"1+1=2\n\\boxed{{{j}}}", token_ids=[1] * 5,
                                                         finish_reason="stop") for j in range(p.n)])
                for p in params]


def test_vllm_backend_samples_and_grades_through_the_pipeline(fake_vllm, monkeypatch, tmp_path):  # noqa: F811
    made = []
    monkeypatch.setattr(adapter, "load_llm", lambda path, **kw: made.append((path, kw)) or FakeLLM(**kw))
    out = tmp_path / "run"
    result = runner.invoke(app, ["grade", "configs/demo.yaml", "--out", str(out), *TINY, "sampling.backend=vllm",
                                 "sampling.tensor_parallel_size=2", "sampling.gpu_memory_utilization=0.5"])
    assert result.exit_code == 0, result.output
    assert made[0][1]["tensor_parallel_size"] == 2 and made[0][1]["gpu_memory_utilization"] == 0.5
    assert made[0][1]["trust_remote_code"] is False
    graded = io.read_parquet(out / "seed-0" / "graded.parquet")
    assert len(graded) == 6 and all(g["answers"] == ["0", "1", "2"] for g in graded)
    assert graded[0]["prompt"].startswith("<|user|>")  # rendered with the model's own chat template


def test_gsm8k_splits_from_a_hub_id(monkeypatch, tmp_path):
    rows = {"train": [{"question": f"Ana has {i} pens and buys 1. How many now?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"}
                      for i in range(2, 8)],
            "test": [{"question": "Bo has 3 figs and buys 2. How many now?", "answer": "3+2=5\n#### 5"}] * 1}
    asked = []

    def load_dataset(name, config=None, split=None, **kwargs):
        asked.append((name, config, split))
        return datasets.Dataset.from_list(rows[split])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    out = tmp_path / "run"
    result = runner.invoke(app, ["sample", "configs/demo.yaml", "--out", str(out), *TINY, "task.name=gsm8k",
                                 "task.train_path=openai/gsm8k", "task.test_path=openai/gsm8k", "task.hub_config=main",
                                 "grading.verify_steps=false"])
    assert result.exit_code == 0, result.output
    assert ("openai/gsm8k", "main", "train") in asked and ("openai/gsm8k", "main", "test") in asked
    questions = io.read_jsonl(out / "data" / "train.jsonl")
    assert [q["gold"] for q in questions] == ["3", "4", "5", "6", "7", "8"]
