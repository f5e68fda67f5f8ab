"""Stage bookkeeping: manifests decide what is skipped and what is redone, and say why."""

import pytest

from east import io
from east.config import RunConfig
from east.errors import UserError
from east.bookkeeping import Run, RunLock


def make_run(tmp_path):
    messages = []
    return Run(config=RunConfig(), root=tmp_path, log=messages.append), messages


def test_stage_runs_once_then_skips(tmp_path):
    run, messages = make_run(tmp_path)
    calls = []

    def build():
        calls.append(1)
        io.write_json(tmp_path / "a.json", {"x": 1})
        return {"rows": 1}

    run.stage("a", {"k": 1}, [], [tmp_path / "a.json"], build)
    run.stage("a", {"k": 1}, [], [tmp_path / "a.json"], build)
    assert len(calls) == 1
    assert run.executed == ["a"] and run.skipped == ["a"]
    assert io.read_json(run.manifest_path("a"))["counts"] == {"rows": 1}


def test_config_change_redoes_and_says_which_key(tmp_path):
    run, messages = make_run(tmp_path)
    out = tmp_path / "a.json"
    run.stage("a", {"n": 1, "t": 1.0}, [], [out], lambda: io.write_json(out, {}) and None)
    run.stage("a", {"n": 2, "t": 1.0}, [], [out], lambda: io.write_json(out, {}) and None)
    assert any("config changed: n 1 -> 2" in m for m in messages)


def test_upstream_change_propagates(tmp_path):
    run, messages = make_run(tmp_path)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    run.stage("a", {"v": 1}, [], [a], lambda: io.write_json(a, {}) and None)
    run.stage("b", {}, ["a"], [b], lambda: io.write_json(b, {}) and None)
    run.stage("a", {"v": 2}, [], [a], lambda: io.write_json(a, {}) and None)
    run.stage("b", {}, ["a"], [b], lambda: io.write_json(b, {}) and None)
    assert run.executed == ["a", "b", "a", "b"]
    assert any("input changed: a" in m for m in messages)


def test_missing_output_redoes_the_stage(tmp_path):
    run, messages = make_run(tmp_path)
    out = tmp_path / "a.json"
    run.stage("a", {}, [], [out], lambda: io.write_json(out, {}) and None)
    out.unlink()
    run.stage("a", {}, [], [out], lambda: io.write_json(out, {}) and None)
    assert run.executed == ["a", "a"]


def test_a_crashed_stage_leaves_no_manifest(tmp_path):
    run, _ = make_run(tmp_path)

    def crash():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run.stage("a", {}, [], [tmp_path / "a.json"], crash)
    assert run.manifest("a") is None


def test_second_lock_on_a_run_directory_refuses(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(UserError, match="in use by another east process"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released
        pass


def test_official_filter_reaches_the_weight_stage_only_when_set():
    from east.config import SelectionConfig, load_config
    from east.pipeline import stats_args

    default = load_config(None, [])
    assert "official_filter" not in stats_args(default, default.arms[1])  # older runs keep their stage keys
    parity = load_config(None, ["selection.official_filter=true"])
    assert stats_args(parity, parity.arms[1])["official_filter"] is True
    assert "official" in SelectionConfig.model_fields["official_filter"].description
