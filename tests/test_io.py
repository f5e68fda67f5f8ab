"""Atomic writes: a failure mid-write leaves no file that looks complete."""

import pytest

from east import io
from east.errors import UserError


def test_parquet_and_jsonl_round_trip(tmp_path):
    rows = [{"question_id": "q1", "responses": ["a", "b"], "correct": [True, False]}]
    assert io.read_parquet(io.write_parquet(tmp_path / "x.parquet", rows)) == rows
    assert io.read_jsonl(io.write_jsonl(tmp_path / "x.jsonl", rows)) == rows


def test_parquet_opens_with_datasets(tmp_path):
    import datasets

    io.write_parquet(tmp_path / "x.parquet", [{"question_id": "q1", "weight": 1.5}])
    data = datasets.load_dataset("parquet", data_files=str(tmp_path / "x.parquet"), split="train")
    assert data[0] == {"question_id": "q1", "weight": 1.5}


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.jsonl"

    def rows():
        yield {"a": 1}
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        io.write_jsonl(target, rows())
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path):
    target = io.write_json(tmp_path / "x.json", {"v": 1})
    with pytest.raises(TypeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise TypeError("crash")
    assert io.read_json(target) == {"v": 1}


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"x.jsonl:2: expected a JSON object"):
        io.read_jsonl(path)


def test_empty_tables_are_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        io.write_parquet(tmp_path / "x.parquet", [])


def test_artifacts_get_the_umask_permissions_not_private_ones(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = io.write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_temporary_names_carry_the_pid(tmp_path):
    import os

    with io.atomic_path(tmp_path / "x.json") as tmp:
        assert tmp.name.startswith(f".x.json.tmp-{os.getpid()}.")
        tmp.write_text("{}")


def test_damaged_parquet_and_json_are_one_line_errors_naming_the_file(tmp_path):
    path = io.write_parquet(tmp_path / "x.parquet", [{"a": 1}])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match=r"x.parquet: damaged or not a Parquet file .*delete it and rerun"):
        io.read_parquet(path)
    path.write_bytes(b"")
    with pytest.raises(UserError, match=r"x.parquet: damaged"):
        io.read_parquet(path)
    path = io.write_json(tmp_path / "x.json", {"a": 1})
    path.write_bytes(b'{"a": \xff')
    with pytest.raises(UserError, match=r"x.json: damaged, not valid JSON"):
        io.read_json(path)


def test_directories_written_by_libraries_follow_the_umask(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        with io.atomic_path(tmp_path / "model", directory=True) as tmp:
            weights = tmp / "model.safetensors"
            weights.write_bytes(b"x")
            weights.chmod(0o600)  # what safetensors does
    finally:
        os.umask(mask)
    assert (tmp_path / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
