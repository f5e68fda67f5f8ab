"""train.report_to: TensorBoard events and offline W&B runs of a tiny `east run`, read back; scopes; the extra check.

No network: W&B runs with WANDB_MODE=offline (it writes runs/<name>/wandb/offline-run-*/ and never logs in).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from east import tracking
from east.cli import app
from east.config import load_config
from east.errors import UserError
from training_helpers import dpo_rows, kto_rows, sft_rows, train_and_load

runner = CliRunner()

TINY = [
    "name=tracked", "task.train_size=16", "task.test_size=8", "sampling.n=4", "sampling.max_new_tokens=40",
    "evaluation.max_new_tokens=40", "train.epochs=1", "train.batch_size=4", "train.logging_steps=1",
    "train.sft.learning_rate=1e-4",
]


def events(directory: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalar(accumulator, tag: str) -> list[float]:
    return [event.value for event in accumulator.Scalars(tag)]


def wandb_runs(root: Path) -> dict[str, set[str]]:
    """{run name: every key it logged} from the offline W&B run files under root/wandb (a run met twice is merged)."""
    runs: dict[str, set[str]] = {}
    for path in root.glob("wandb/offline-run-*/run-*.wandb"):
        name, keys = None, set()
        for record in wandb_records(path):
            if record.HasField("run"):
                name = record.run.display_name
            elif record.HasField("history"):
                keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        runs.setdefault(name, set()).update(keys)
    return runs


def wandb_records(path: Path):
    """The protobuf records of an offline .wandb file: a 7-byte header, then 32 KiB blocks of chunks, each with a
    7-byte header (crc32, length, type 1 full / 2 first / 3 middle / 4 last), as in LevelDB's log format."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path_factory.mktemp("run") / "tracked"
    result = runner.invoke(app, ["run", "configs/demo.yaml", "--out", str(out), *TINY,
                                 "train.report_to=[tensorboard, wandb]"])
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_trainer_logs_loss_and_weight_stats_to_tensorboard(tracked_run):
    cell = events(tracked_run / "tensorboard" / "seed-0" / "sft+east" / "iter-1")
    assert len(scalar(cell, "train/loss")) >= 2  # logging_steps=1: one point per step
    weight_means = scalar(cell, "train/weight/mean")
    assert weight_means and all(w > 0 for w in weight_means)
    assert {"train/weight/min", "train/weight/max"} <= set(cell.Tags()["scalars"])
    vanilla = events(tracked_run / "tensorboard" / "seed-0" / "sft" / "iter-1")
    assert set(scalar(vanilla, "train/weight/mean")) == {1.0}  # the vanilla arm's weights, told apart from EAST's
    assert not list((tracked_run / "seed-0" / "sft" / "checkpoints").glob("runs"))  # not in the checkpoints


@pytest.mark.slow
def test_stage_metrics_reach_tensorboard_once_per_stage(tracked_run):
    from east import io

    cell = events(tracked_run / "tensorboard" / "seed-0" / "sft+east" / "iter-1")
    entropy = cell.Histograms("weight/entropy")
    stats = io.read_parquet(tracked_run / "seed-0" / "sft+east" / "stats.parquet")
    kept = [r for r in stats if r["kept"]]
    assert len(entropy) == 1 and entropy[0].histogram_value.num == len(kept)
    assert entropy[0].histogram_value.sum == pytest.approx(sum(r["entropy"] for r in kept))
    assert cell.Histograms("weight/weight")[0].histogram_value.sum == pytest.approx(len(kept))  # mean 1
    assert scalar(cell, "weight/kept") == [len(kept)]
    dropped = sum(r["drop_reason"] == "all_wrong" for r in stats)
    assert scalar(cell, "weight/dropped/all_wrong") == [dropped]
    accuracy = json.loads((tracked_run / "seed-0" / "sft+east" / "eval-test.json").read_text())["accuracy"]
    assert scalar(cell, "evaluate/test/accuracy") == [pytest.approx(accuracy)]
    shared = events(tracked_run / "tensorboard" / "seed-0")
    manifest = json.loads((tracked_run / "manifests" / "seed-0__sample.json").read_text())
    tokens_per_second = manifest["counts"]["tokens"] / manifest["seconds"]
    assert scalar(shared, "sample/tokens_per_second") == [pytest.approx(tokens_per_second)]
    assert scalar(shared, "sample/samples_per_second") == [pytest.approx(64 / manifest["seconds"])]  # 16 x 4
    base = events(tracked_run / "tensorboard" / "default")
    assert scalar(base, "evaluate/test/accuracy")


@pytest.mark.slow
def test_results_table_reaches_tensorboard(tracked_run):
    results = json.loads((tracked_run / "results.json").read_text())
    summary = events(tracked_run / "tensorboard" / "run")
    east = next(e for e in results["arms"] if e["arm"] == "sft+east")
    assert scalar(summary, "results/sft+east/test") == [pytest.approx(east["splits"]["test"]["mean"])]
    text = summary.Tensors("results/table/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "SFT + EAST" in text and "default" in text


@pytest.mark.slow
def test_wandb_offline_runs_are_named_by_cell_and_hold_the_metrics(tracked_run):
    runs = wandb_runs(tracked_run)
    assert set(runs) == {"tracked", "tracked/default", "tracked/seed-0", "tracked/seed-0/sft/iter-1",
                         "tracked/seed-0/sft+east/iter-1"}
    cell = runs["tracked/seed-0/sft+east/iter-1"]
    assert {"train/loss", "train/weight/mean", "weight/kept", "weight/dropped/all_wrong", "weight/entropy/_type",
            "evaluate/test/accuracy"} <= cell
    assert {"sample/tokens_per_second", "sample/samples_per_second"} <= runs["tracked/seed-0"]
    assert {"results/table/_type", "results/sft+east/test", "questions/train"} <= runs["tracked"]


@pytest.mark.slow
def test_tracking_changes_no_stage_key(tracked_run):
    result = runner.invoke(app, ["run", "configs/demo.yaml", "--out", str(tracked_run), *TINY])
    assert result.exit_code == 0, result.output
    assert "0 stage(s) run" in result.output


def test_standalone_training_writes_tensorboard_and_finishes_its_wandb_run(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train_and_load(tmp_path, "sft", sft_rows([0.5, 1.5, 1.0, 1.0]), report_to=["tensorboard", "wandb"],
                   run_name="alone")
    assert scalar(events(tmp_path / "out" / "tensorboard"), "train/weight/max") == [1.5, 1.0]
    assert wandb.run is None  # finished: the next trainer of the process gets a run of its own
    assert "train/loss" in wandb_runs(tmp_path / "out")["alone"]


@pytest.mark.parametrize(("loss", "rows", "local_weighting"), [
    ("dpo", dpo_rows([0.5, 1.5, 1.0, 1.0]), "lw_p"), ("kto", kto_rows([0.5, 1.5, 1.0, 1.0]), "lw_w"),
])
def test_preference_trainers_log_row_and_local_weights_to_tensorboard(tmp_path, loss, rows, local_weighting):
    train_and_load(tmp_path, loss, rows, local_weighting=local_weighting, report_to=["tensorboard"])
    logged = events(tmp_path / "out" / "tensorboard")
    assert sorted(scalar(logged, "train/weight/max")) == [1.0, 1.5]
    assert all(w > 0 for w in scalar(logged, "train/local_weight/mean"))


def test_bootstrap_reports_to_tensorboard_beside_the_backbone(tmp_path):
    out = tmp_path / "backbone"
    result = runner.invoke(app, ["bootstrap", "--out", str(out), "bootstrap.n_rows=32", "bootstrap.epochs=0.25",
                                 "bootstrap.hidden=32", "bootstrap.layers=1", "bootstrap.heads=2",
                                 "train.report_to=tensorboard"])
    assert result.exit_code == 0, result.output
    assert scalar(events(tmp_path / "tensorboard" / "backbone"), "train/train_loss")
    assert not (out / "tensorboard").exists()


@pytest.mark.parametrize(("stage", "scope"), [
    ("questions", "run"), ("bootstrap", "run"), ("default/evaluate-test", "default"), ("seed-0/sample", "seed-0"),
    ("seed-0/dast_p", "seed-0"), ("seed-0/sft+east/weight", "seed-0/sft+east/iter-1"),
    ("seed-1/east@0.5/iter-3/train", "seed-1/east@0.5/iter-3"), ("seed-2/sft/iter-2/evaluate-ood", "seed-2/sft/iter-2"),
])
def test_scope_of_a_stage(stage, scope):
    assert tracking.scope_of(stage) == scope


def test_a_stage_opens_its_scope_run_before_it_runs(tmp_path, monkeypatch):
    """A resumed run may train a cell whose earlier stages were skipped: the trainer must still log into its cell."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    with tracking.Tracker(tmp_path, "demo", ("wandb",)) as tracker:
        tracker.begin("seed-0/sft/train")
        assert wandb.run is not None and wandb.run.name == "demo/seed-0/sft/iter-1"
        tracker.begin("seed-0/sft/evaluate-test")
        assert wandb.run.name == "demo/seed-0/sft/iter-1"
    assert wandb.run is None


def test_trainer_args_name_the_cell(tmp_path):
    tracker = tracking.Tracker(tmp_path, "demo", ("wandb",))
    args = tracker.trainer_args("seed-0/sft+east/train")
    assert args == {"report_to": ["wandb"], "run_name": "demo/seed-0/sft+east/iter-1",
                    "logging_dir": tmp_path / "tensorboard" / "seed-0" / "sft+east" / "iter-1"}
    assert tracking.Tracker().trainer_args("seed-0/sft/train")["report_to"] == ["none"]


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_a_tracker_not_installed_fails_at_config_time_naming_the_extra(monkeypatch, tracker):
    monkeypatch.setattr(tracking, "installed", lambda package: False)
    with pytest.raises(UserError, match=rf"train.report_to: {tracker} is not installed; .*east-selftrain\[tracking\]"):
        load_config(None, [f"train.report_to=[{tracker}]"])
    assert load_config(None).train.report_to == ["none"]  # the default needs nothing


def test_east_run_refuses_a_missing_tracker_in_one_line_before_any_stage(monkeypatch, tmp_path):
    monkeypatch.setattr(tracking, "installed", lambda package: package != "wandb")
    result = runner.invoke(app, ["run", "configs/demo.yaml", "--out", str(tmp_path / "x"),
                                 "train.report_to=[tensorboard, wandb]"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: train.report_to: wandb is not installed; pip install "
                                     "'east-selftrain[tracking]' (or set train.report_to=none)")
    assert not (tmp_path / "x").exists()


def test_report_to_takes_a_name_or_a_list_and_none_alone():
    assert load_config(None, ["train.report_to=tensorboard"]).train.report_to == ["tensorboard"]
    with pytest.raises(UserError, match="train.report_to"):
        load_config(None, ["train.report_to=[none, wandb]"])
    with pytest.raises(UserError, match="train.report_to"):
        load_config(None, ["train.report_to=[mlflow]"])
