"""Training under data parallel on CPU (gloo, 2 processes, OMP_NUM_THREADS=1): 1 process and 2 processes with the
same global batch give the same parameters for weighted SFT (with gradient accumulation), DPO and KTO (with a
reference model that differs from the policy), each beside a negative control that differs; DeepSpeed ZeRO-3 on CPU
saves full weights equal to 1 process's; LoRA under DDP writes merged full weights from rank 0 alone, equal to 1
process's; an FSDP config on CPU stops with a one-line error; `east train` with
`train.launcher` runs the stage as a worker subprocess and resumes from its Trainer checkpoints.

    pytest -m slow tests/test_distributed.py       (the launcher error paths at the end are not slow)

Parameters are compared by ||theta_1 - theta_2|| / ||theta_1 - theta_0||: the difference between the runs relative
to how far training moved the model (Adam's first steps amplify float noise in parameters whose gradient is ~eps,
so an elementwise tolerance would test Adam, not the weighting).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from east import io
from east.errors import UserError

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "tests" / "distributed_job.py"
SAME = 1e-4  # relative difference allowed between equivalent runs (measured: 0 to 9e-6)
DIFFERENT = 1e-3  # a negative control must differ by more (measured: 2.5e-3 to 4e-2)
CASES = ["sft", "sft-control", "sft-lwp", "dpo", "dpo-control", "kto", "kto-control"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", **extra}


def launch(*args: str) -> list[str]:
    """accelerate launch from this interpreter (the venv's `accelerate` may not be on PATH)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()), *args]


TWO_CPU_PROCESSES = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                     "--dynamo_backend", "no"]


def run(command: list[str], log: Path, **extra: str) -> None:
    with open(log, "w") as handle:
        code = subprocess.run(command, cwd=REPO, env=env(**extra), stdout=handle, stderr=subprocess.STDOUT).returncode
    assert code == 0, log.read_text()[-4000:]


def relative_difference(a: dict, b: dict, start: dict) -> float:
    names = sorted(start)  # the saved (untied) tensors
    diff = torch.cat([(a[n] - b[n]).flatten() for n in names]).norm()
    moved = torch.cat([(a[n] - start[n]).flatten() for n in names]).norm()
    assert moved > 0, "training did not move the model"
    return (diff / moved).item()


def backbone_state() -> dict:
    from safetensors.torch import load_file

    from east.backbone import builtin_checkpoint

    return load_file(builtin_checkpoint() / "model.safetensors")


# ----------------------------------------------------------------------------------------------------
# Weighted SFT / DPO / KTO: 1 process vs 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    run([sys.executable, str(JOB), str(out), *CASES], out / "one.log")
    run(launch(*TWO_CPU_PROCESSES, str(JOB), str(out), *CASES), out / "two.log", ACCELERATE_USE_CPU="true")
    return {case: [torch.load(out / f"{case}-{n}.pt") for n in (1, 2)] for case in CASES}


def difference(runs, case: str) -> float:
    one, two = runs[case]
    assert one["steps"] == two["steps"] == 2
    return relative_difference(one["state"], two["state"], backbone_state())


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["sft", "sft-lwp", "dpo", "kto"])
def test_two_processes_train_the_same_parameters_as_one(runs, loss):
    assert difference(runs, loss) < SAME


@pytest.mark.slow
@pytest.mark.parametrize("control", ["sft-control", "dpo-control", "kto-control"])
def test_negative_control_differs(runs, control):
    """sft: average_tokens_across_devices=False (each rank's own token count); dpo: 7 pairs, so accelerate pads the
    last batch with an earlier row; kto: TRL's KL estimate gathered over the processes (east's is per micro-batch)."""
    assert difference(runs, control) > DIFFERENT


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["sft", "sft-lwp", "dpo", "kto"])
def test_logged_weight_statistics_cover_every_process(runs, loss):
    one, two = runs[loss]
    assert len(one["logged"]) == len(two["logged"]) == 2
    for a, b in zip(one["logged"], two["logged"]):
        assert a.keys() == b.keys() >= {"weight/mean", "weight/min", "weight/max"}
        assert ("local_weight/mean" in a) == (loss == "sft-lwp")
        for stat in a:
            assert b[stat] == pytest.approx(a[stat], rel=1e-5), stat  # rank 0 alone holds half the rows


# ----------------------------------------------------------------------------------------------------
# DeepSpeed ZeRO-3 on CPU


def zero3_cpu_config(tmp_path: Path) -> Path:
    """configs/accelerate/zero3.yaml for 2 CPU processes: no bf16, and a DeepSpeed JSON with
    stage3_param_persistence_threshold 0 so the tiny model's parameters are really sharded."""
    ds = tmp_path / "ds.json"
    io.write_json(ds, {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                                             "stage3_gather_16bit_weights_on_model_save": True},
                       "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                       "train_batch_size": "auto", "gradient_clipping": "auto",
                       "bf16": {"enabled": False}, "fp16": {"enabled": False}})
    config = yaml.safe_load((REPO / "configs" / "accelerate" / "zero3.yaml").read_text())
    config["deepspeed_config"] = {"deepspeed_config_file": str(ds), "zero3_init_flag": True}
    del config["mixed_precision"]  # with a DeepSpeed JSON, precision is its bf16/fp16 sections (accelerate refuses both)
    config["num_processes"] = 2
    path = tmp_path / "zero3-cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def worker_arm(root: Path, name: str, accumulation: int, **extra) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from distributed_job import sft_rows

    from east.backbone import builtin_checkpoint

    arm = root / name
    io.write_parquet(arm / "rows.parquet", [{**row, "question_id": f"q{i}"} for i, row in enumerate(sft_rows(8))])
    args = {"loss": "sft", "learning_rate": 5e-3, "num_train_epochs": 1, "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": accumulation, "max_length": 64, "seed": 0, "logging_steps": 1,
            "warmup_ratio": 0.0, "lr_scheduler_type": "constant", **extra}
    io.write_json(arm / "worker.json", {"start": str(builtin_checkpoint()), "args": args, "tracking": {}})
    return arm


@pytest.mark.slow
def test_zero3_on_cpu_saves_full_weights_equal_to_one_process(tmp_path):
    pytest.importorskip("deepspeed", reason="pip install 'east-selftrain[distributed]' (make test installs it)")
    from safetensors.torch import load_file

    from east.training import worker

    root = tmp_path / "run"
    sharded, single = worker_arm(root, "zero3", accumulation=2), worker_arm(root, "one", accumulation=4)
    run(launch("--config_file", str(zero3_cpu_config(tmp_path)), "-m", "east.training.worker", str(root), "zero3"),
        tmp_path / "zero3.log", DS_ACCELERATOR="cpu")
    assert worker.main([str(root), "one"]) == 0
    settings = io.read_json(sharded / "train_metrics.json")["settings"]
    assert (settings["processes"], settings["distributed_type"]) == (2, "DEEPSPEED")
    ours, theirs = (load_file(arm / "model" / "model.safetensors") for arm in (sharded, single))
    assert ours.keys() == theirs.keys()
    assert all(tensor.numel() == theirs[name].numel() > 0 for name, tensor in ours.items())  # not ZeRO-3's shards
    assert relative_difference(ours, theirs, backbone_state()) < SAME


# LoRA under DDP: the main process merges and writes; the test counts the writers by wrapping write_model.
RECORDING_WORKER = """
import os, sys
from east.training import run, worker
write_model = run.write_model
def recorded(*args, **kwargs):
    with open(sys.argv[3], "a") as log:
        log.write(os.environ.get("RANK", "0") + "\\n")
    return write_model(*args, **kwargs)
run.write_model = recorded
sys.exit(worker.main(sys.argv[1:3]))
"""


@pytest.mark.slow
def test_lora_under_two_processes_writes_merged_weights_once_equal_to_one_process(tmp_path):
    from safetensors.torch import load_file

    lora = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}
    root = tmp_path / "run"
    ddp, single = worker_arm(root, "ddp", 2, lora=lora), worker_arm(root, "one", 4, lora=lora)
    script, writers = tmp_path / "recording_worker.py", tmp_path / "writers.txt"
    script.write_text(RECORDING_WORKER)
    run(launch(*TWO_CPU_PROCESSES, str(script), str(root), "ddp", str(writers)), tmp_path / "ddp.log",
        ACCELERATE_USE_CPU="true")
    assert writers.read_text().split() == ["0"]  # rank 1 gathered nothing and wrote nothing
    writers.unlink()
    run([sys.executable, str(script), str(root), "one", str(writers)], tmp_path / "one.log")
    assert io.read_json(ddp / "train_metrics.json")["settings"]["processes"] == 2
    ours, theirs, start = (load_file(path) for path in (ddp / "model" / "model.safetensors",
                                                          single / "model" / "model.safetensors",
                                                          builtin_checkpoint_file()))
    assert ours.keys() == theirs.keys() == start.keys()  # merged: the backbone's names, no lora_A/lora_B
    assert sorted(p.name for p in ddp.iterdir() if p.name.startswith(".model")) == []  # no temp dir left
    assert relative_difference(ours, theirs, start) < SAME  # (it also asserts that LoRA moved the merged weights)


def builtin_checkpoint_file() -> Path:
    from east.backbone import builtin_checkpoint

    return builtin_checkpoint() / "model.safetensors"


@pytest.mark.slow
def test_fsdp_config_on_cpu_fails_loudly_instead_of_training_ddp(tmp_path):
    """accelerate drops FSDP on CPU and would train plain DDP; the worker stops with east's one-line error."""
    root = tmp_path / "run"
    arm = worker_arm(root, "fsdp", accumulation=2)
    log = tmp_path / "fsdp.log"
    command = launch("--config_file", str(REPO / "configs" / "accelerate" / "fsdp2.yaml"), "--num_processes", "2",
                     "--mixed_precision", "no", "-m", "east.training.worker", str(root), "fsdp")
    with open(log, "w") as handle:
        code = subprocess.run(command, cwd=REPO, env=env(ACCELERATE_USE_CPU="true"), stdout=handle,
                              stderr=subprocess.STDOUT).returncode
    assert code != 0
    assert "error: the accelerate config asks for FSDP but accelerate runs MULTI_CPU" in log.read_text()
    assert not (arm / "model").exists()


# ----------------------------------------------------------------------------------------------------
# The train stage through train.launcher


TINY = ["name=launcher", "task.train_size=24", "task.test_size=4", "sampling.n=4", "sampling.max_new_tokens=40",
        "sampling.shard_size=12", "train.epochs=1", "train.batch_size=2", "train.save_steps=1",
        "train.sft.learning_rate=1e-3", "arms=[{name: east, weighting: entropy}]"]


def east_train(out: Path, launcher: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "east.cli", "train", "configs/demo.yaml", "--out", str(out), *TINY,
                           f"train.launcher={launcher}"], cwd=REPO, env=env(ACCELERATE_USE_CPU="true"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_train_stage_through_a_launcher_resumes_from_its_checkpoints(tmp_path):
    import shutil

    from safetensors.torch import load_file

    launcher = " ".join(launch("--config_file", str(REPO / "configs" / "accelerate" / "ddp.yaml"),
                               "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no"))
    out = tmp_path / "run"
    east_train(out, launcher)
    arm = out / "seed-0" / "east"
    manifest = io.read_json(out / "manifests" / "seed-0__east__train.json")
    assert manifest["counts"]["processes"] == 2 and manifest["config"]["launcher"] == launcher
    first = load_file(arm / "model" / "model.safetensors")
    checkpoints = sorted(arm.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) >= 2, "needs a checkpoint before the last step"

    # As if killed after the second-to-last checkpoint: the last checkpoint and the model are gone.
    shutil.rmtree(checkpoints[-1])
    shutil.rmtree(arm / "model")
    log = east_train(out, launcher)
    assert "redo seed-0/east/train: output missing" in log.replace("\n", " ")
    metrics = io.read_json(arm / "train_metrics.json")
    assert Path(metrics["resumed_from"]).name == checkpoints[-2].name
    resumed = load_file(arm / "model" / "model.safetensors")
    assert relative_difference(resumed, first, backbone_state()) < SAME


# ----------------------------------------------------------------------------------------------------
# Launcher failures (not slow: no training runs)


def launcher_run(tmp_path: Path, launcher: str):
    from east.bookkeeping import Run
    from east.config import ArmConfig, RunConfig
    from east.pipeline import Cell

    config = RunConfig.model_validate({"train": {"launcher": launcher}})
    cell = Cell(0, ArmConfig(name="east", weighting="entropy"))
    return Run(config=config, root=tmp_path), cell


def test_failed_worker_is_one_line_naming_the_arm_and_its_log(tmp_path):
    from east.pipeline import train_through_launcher

    # The launcher runs `-c CODE -m east.training.worker ...`: python executes CODE, the rest is its argv.
    code = "import sys; print('error: rows.parquet: damaged'); sys.exit(3)"
    run_, cell = launcher_run(tmp_path, f"{sys.executable} -c \"{code}\"")
    with pytest.raises(UserError) as raised:
        train_through_launcher(run_, cell, "builtin", {}, {})
    message = str(raised.value)
    log = tmp_path / "seed-0" / "east" / "train-worker.log"
    assert "\n" not in message and "arm east" in message and "exit 3" in message and str(log) in message
    assert "rows.parquet: damaged" in message and log.is_file()
    assert io.read_json(tmp_path / "seed-0" / "east" / "worker.json")["start"] == "builtin"


def test_worker_that_wrote_no_model_is_an_error(tmp_path):
    from east.pipeline import train_through_launcher

    run_, cell = launcher_run(tmp_path, f"{sys.executable} -c pass")
    with pytest.raises(UserError, match="exited 0 but wrote no model weights"):
        train_through_launcher(run_, cell, "builtin", {}, {})


def test_an_earlier_runs_outputs_do_not_pass_for_a_worker_that_wrote_nothing(tmp_path):
    from east.pipeline import train_through_launcher

    run_, cell = launcher_run(tmp_path, f"{sys.executable} -c pass")
    arm = tmp_path / "seed-0" / "east"
    io.write_json(arm / "train_metrics.json", {"settings": {"processes": 2}})
    (arm / "model").mkdir()
    (arm / "model" / "model.safetensors").write_bytes(b"weights of an earlier run")
    with pytest.raises(UserError, match="exited 0 but wrote no train_metrics.json"):
        train_through_launcher(run_, cell, "builtin", {}, {})


def test_missing_launcher_program_is_one_line(tmp_path):
    from east.pipeline import train_through_launcher

    run_, cell = launcher_run(tmp_path, "no-such-launcher-east launch")
    with pytest.raises(UserError, match="train.launcher: 'no-such-launcher-east' not found"):
        train_through_launcher(run_, cell, "builtin", {}, {})


@pytest.mark.parametrize("env_name, wanted", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")])
def test_fsdp_or_deepspeed_silently_dropped_by_accelerate_is_refused(monkeypatch, env_name, wanted):
    """On CPU accelerate turns an FSDP config into plain DDP (MULTI_CPU) without a word; train() refuses it."""
    from accelerate.utils import DistributedType

    from east.training.run import check_distributed

    trainer = SimpleNamespace(accelerator=SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    check_distributed(trainer)  # plain DDP asked for and got
    monkeypatch.setenv(env_name, "true")
    with pytest.raises(UserError, match=f"asks for {wanted} but accelerate runs MULTI_CPU"):
        check_distributed(trainer)


def test_processes_that_each_train_alone_are_refused(monkeypatch):
    from accelerate.utils import DistributedType

    from east.training.run import check_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    trainer = SimpleNamespace(accelerator=SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=1))
    with pytest.raises(UserError, match="started 2 processes but each trains alone"):
        check_distributed(trainer)
