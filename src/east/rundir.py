"""What a run directory's manifests say about its files, and checking that it is still true.

Each stage's manifest records, for every file of its outputs (a directory output lists each file in it):

    size      bytes
    sample    sha256 of the first and last 64 KiB and of 8 blocks of 64 KiB spread evenly between them
              (of the whole file when it is at most 640 KiB: every manifest, question file and most tables)
    sha256    sha256 of the whole file, computed once when the stage finishes

Before a finished stage is skipped, `damage(..., full=False)` compares size and sample: at most 640 KiB
read per file whatever its size, so checking a 16 GB model costs milliseconds. Truncation (a kill or a
full disk while copying, a 0-byte file) always changes the size; the blocks cover the places a partial
overwrite or a corrupt copy shows first (Parquet's footer is its last bytes, a safetensors header its
first). `east status --verify` compares the full sha256 (`full=True`), which reads everything.

The key a stage hands to the stages that read it (`chain_key`) combines its config key with the full
digests of its outputs: a stage redone after damage with the same inputs gets the same config key, and
the stages after it are skipped only if it wrote the same bytes again (deterministic stages do);
otherwise they are redone too.

Temporary files and directories are named `.<name>.tmp-<pid>...` or `.<name>.old-<pid>` (east.io,
east.training.run, east.backbone.bootstrap); `remove_dead_temporaries` deletes those of processes that
no longer exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

BLOCK = 64 * 1024
INNER_BLOCKS = 8
MANIFEST_FIELDS = ("stage", "key", "inputs", "config", "outputs", "finished_at", "seconds")
TEMPORARY = re.compile(r"^\..+\.(?:tmp|old)-(\d+)(?:\..*)?$")


class ManifestDamaged(Exception):
    """A manifest that is not the JSON object a finished stage writes; its stage counts as not run."""


# ----------------------------------------------------------------------------------------------------
# Fingerprints


def sample_digest(path: Path, size: int) -> str:
    """sha256 of the first and last blocks and INNER_BLOCKS blocks spread evenly between them."""
    digest = hashlib.sha256(str(size).encode())
    if size <= (INNER_BLOCKS + 2) * BLOCK:
        digest.update(Path(path).read_bytes())
        return digest.hexdigest()[:16]
    step = (size - BLOCK) // (INNER_BLOCKS + 1)
    with open(path, "rb") as handle:
        for offset in [i * step for i in range(INNER_BLOCKS + 1)] + [size - BLOCK]:
            handle.seek(offset)
            digest.update(handle.read(BLOCK))
    return digest.hexdigest()[:16]


def full_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> dict[str, Any]:
    size = Path(path).stat().st_size
    return {"size": size, "sample": sample_digest(path, size), "sha256": full_digest(path)}


def files_of(path: Path) -> list[Path]:
    """The files an output consists of: itself, or every file under a directory (hidden ones too)."""
    path = Path(path)
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def output_records(root: Path, outputs: list[Path]) -> dict[str, dict[str, Any]]:
    """{path relative to root: fingerprint} of every file of `outputs`, for the manifest."""
    return {str(file.relative_to(root)): fingerprint(file) for output in outputs for file in files_of(output)}


def content_key(records: dict[str, dict[str, Any]]) -> str:
    blob = json.dumps({name: record["sha256"] for name, record in records.items()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def chain_key(manifest: dict[str, Any]) -> str:
    """The key the stages that read this one see: its config key and, when recorded, what it wrote."""
    if not manifest.get("files"):
        return manifest["key"]  # manifests written before outputs were recorded
    return hashlib.sha256(f"{manifest['key']}:{content_key(manifest['files'])}".encode()).hexdigest()[:16]


def damage(root: Path, records: dict[str, dict[str, Any]] | None, *, full: bool = False) -> str | None:
    """The first recorded file that is missing or no longer what was written (None: all intact).

    full=False compares size and sampled blocks; full=True the sha256 of the whole file."""
    for name, record in (records or {}).items():
        path = Path(root) / name
        try:
            size = path.stat().st_size
            if size != record["size"]:
                return f"{path} ({size} bytes, {record['size']} written)"
            if sample_digest(path, size) != record["sample"]:
                return f"{path} (content differs from what was written)"
            if full and full_digest(path) != record["sha256"]:
                return f"{path} (content differs from what was written)"
        except FileNotFoundError:
            return f"{path} (missing)"
        except OSError as exc:
            return f"{path} (unreadable: {exc.strerror or exc})"
    return None


# ----------------------------------------------------------------------------------------------------
# Manifests


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at `path`, None if there is none; ManifestDamaged if it is not one a stage wrote."""
    try:
        text = Path(path).read_bytes().decode()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ManifestDamaged(f"{path}: not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestDamaged(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ManifestDamaged(f"{path}: not a JSON object")
    missing = [name for name in MANIFEST_FIELDS if name not in data]
    if missing:
        raise ManifestDamaged(f"{path}: missing {', '.join(missing)}")
    return data


# ----------------------------------------------------------------------------------------------------
# Leftovers of dead processes


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def dead_temporaries(root: Path) -> list[Path]:
    """Temporary files and directories under `root` whose writing process is gone (not ours, not alive)."""
    found = []
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            match = TEMPORARY.match(name)
            if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
                found.append(Path(directory) / name)
        dirs[:] = [d for d in dirs if not TEMPORARY.match(d)]  # a dead temp dir goes whole
    return found


def remove_dead_temporaries(root: Path) -> list[Path]:
    removed = dead_temporaries(root)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


# ----------------------------------------------------------------------------------------------------
# The saved config


def config_problem(text: str) -> str | None:
    """Why a saved config.yaml's text is not a config at all (empty, not YAML, not a mapping), or None."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return f"not valid YAML: {getattr(exc, 'problem', None) or type(exc).__name__}"
    if data is None:
        return "empty"
    if not isinstance(data, dict):
        return "not a mapping of sections"
    return None


def saved_config(root: Path):
    """The RunConfig saved in a run directory, or a one-line UserError saying how to restore it."""
    from pydantic import ValidationError

    from east.config import RunConfig, describe_validation_error
    from east.errors import UserError

    path = Path(root) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{root}: not a run directory (no config.yaml)")
    text = path.read_bytes().decode("utf-8", errors="replace")
    fix = f"rerun `east run CONFIG --out {root}` with the run's config to rewrite it"
    problem = config_problem(text)
    if problem:
        raise UserError(f"{path}: damaged ({problem}); {fix}")
    import yaml

    try:
        return RunConfig.model_validate(yaml.safe_load(text))
    except ValidationError as exc:
        raise UserError(f"{describe_validation_error(exc, str(path))}; {fix}") from None


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
