"""Reading and writing run-directory artifacts so that a kill never leaves a file that looks complete.

Every write goes to a temporary name in the same directory, is flushed and fsynced, then renamed into
place (atomic on POSIX). Readers therefore see either the old file, the whole new one, or nothing.
Temporary names are `.<name>.tmp-<pid>.<random>`: a failed write removes its own, and the pid lets the
next run remove those of a process that was killed (east.rundir.remove_dead_temporaries). Every file
and directory written gets the permissions the umask gives a plain open(), whatever the library that
wrote it chose. A damaged or undecodable file is read as a one-line UserError naming it.
Tables are Parquet (nested lists survive; `datasets.load_dataset("parquet", data_files=...)` opens
them) or JSONL for per-example rows meant to be read by people.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from east.errors import UserError


@contextmanager
def atomic_path(path: Path, *, directory: bool = False):
    """Yield a temporary sibling of `path`; on success rename it onto `path`, on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = temporary_prefix(path)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        # mkstemp/mkdtemp (and some writers, safetensors among them) create private 0600/0700 entries.
        follow_umask(tmp)
        if not directory:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        if directory and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def temporary_prefix(path: Path) -> str:
    """`.<name>.tmp-<pid>.`: hidden, and carrying the pid that east.rundir checks before removing it."""
    return f".{Path(path).name}.tmp-{os.getpid()}."


def follow_umask(path: Path) -> None:
    """Give `path` (and everything under it) the permissions a plain open() / mkdir() would."""
    mask = current_umask()
    path = Path(path)
    for entry in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if not entry.is_symlink():
            entry.chmod((0o777 if entry.is_dir() else 0o666) & ~mask)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    if not rows:
        raise ValueError(f"refusing to write an empty table to {path}")
    table = pa.Table.from_pylist(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        return pq.read_table(path).to_pylist()
    except pa.ArrowException as exc:
        if isinstance(exc, OSError) and exc.errno:
            raise  # a real I/O error (disk, permission): the command line reports it with its file
        raise UserError(f"{path}: damaged or not a Parquet file ({first_line(exc)}); {DAMAGED_FIX}") from None


DAMAGED_FIX = "if east wrote it, delete it and rerun (the stage that wrote it is redone), otherwise replace it"


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a JSONL file; a malformed line is a one-line error naming the file and line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}:{number}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                f"{exc.start + 1}); convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: not valid JSON ({exc.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
            yield number, row


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in jsonl_rows(path)]


def write_json(path: Path, data: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    return Path(path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: damaged, not valid JSON ({first_line(exc)}); {DAMAGED_FIX}") from None


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def file_digest(path: Path) -> str:
    """sha256 of a file or of a directory's files (names and contents), for manifests."""
    import hashlib

    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
