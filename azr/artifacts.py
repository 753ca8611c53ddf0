"""The run directory and its Parquet artifacts (DESIGN.md sections 2-3).

One writer: `write_table` writes to a temporary name, fsyncs, renames, then writes the manifest
(`<name>.manifest.json`). The manifest is written last, so a file without a matching manifest is
never taken as complete. `stage_complete` answers whether a stage's outputs are current for the
inputs and config it is about to run with; that is what makes resume work. A full disk is a
`NoSpaceError` naming the file; what was being written is removed, what was finished is kept.
`discard_damaged` finds finished files that no longer match their manifests (a corrupt or
truncated file), so that their stages run again instead of feeding the next ones.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 2  # 2: response_mask (azr's scaffold tokens are not the model's)


class ArtifactError(RuntimeError):
    """A stage input or output that is missing, unreadable or does not match its manifest."""


class NoSpaceError(ArtifactError):
    """The disk is full: a file could not be written (it is not there; what was finished is kept)."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL_BYTES = 1 << 20  # free space below which a failed write is put down to a full disk


def no_space(path: Path, cause: BaseException | None = None) -> NoSpaceError:
    """The error for a write to ``path`` that the disk had no room for."""
    free = shutil.disk_usage(next(p for p in (Path(path), *Path(path).parents) if p.exists())).free
    return NoSpaceError(f"{path}: no space left on the device ({free / 2**20:.1f} MiB free"
                        f"{f'; {cause}' if cause else ''}); nothing half-written was kept. Free some space, "
                        "then continue the run (azr resume)")


def out_of_space(exc: BaseException, path: Path) -> bool:
    """Whether a failed write to ``path`` failed for want of space. Libraries say so differently:
    an OSError's errno, safetensors in its message, torch.save not at all ('unexpected pos'), so a
    device left with (almost) no free space counts too."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE or "No space left on device" in str(exc):
        return True
    return Path(path).exists() and shutil.disk_usage(path).free < NEARLY_FULL_BYTES


@dataclass(frozen=True)
class RunDir:
    """Owns the layout of ``runs/<run-name>/``; every path in a run comes from here."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def iteration_dir(self, iteration: int) -> Path:
        return self.root / f"iter-{iteration:04d}"

    def stage_file(self, iteration: int, name: str) -> Path:
        """A file of one iteration's directory (the stages' names for them: azr/pipeline.py)."""
        return self.iteration_dir(iteration) / name

    def checkpoint_dir(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "checkpoint"

    def iterations(self) -> list[int]:
        """Iteration numbers that have a directory, ascending."""
        found = (p.name.removeprefix("iter-") for p in self.root.glob("iter-*") if p.is_dir())
        return sorted(int(n) for n in found if n.isdigit())


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync the result, rename it over ``path``; NoSpaceError when the disk is full."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise no_space(path) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _input_hashes(inputs: Iterable[Path]) -> dict[str, str]:
    """Each input's recorded sha256 (from its manifest when it has one, else hashed now)."""
    hashes = {}
    for p in inputs:
        p = Path(p)
        m = manifest_path(p)
        hashes[p.name] = json.loads(m.read_text())["sha256"] if m.exists() else file_sha256(p)
    return hashes


def write_manifest(
    path: Path,
    *,
    rows: int | None,
    schema_version: int = SCHEMA_VERSION,
    inputs: Iterable[Path] = (),
    config_hash: str = "",
    seconds: float = 0.0,
) -> dict[str, Any]:
    """Record that `path` is complete (call only after `path` is fully written)."""
    manifest = {
        "file": path.name,
        "rows": rows,
        "sha256": file_sha256(path),
        "schema_version": schema_version,
        "inputs": _input_hashes(inputs),
        "config_hash": config_hash,
        "seconds": round(seconds, 3),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json.dumps(manifest, indent=2)
    _atomic_write_bytes(manifest_path(path), lambda tmp: Path(tmp).write_text(text))
    return manifest


def to_arrow(data: pd.DataFrame | pa.Table, schema: pa.Schema | None = None) -> pa.Table:
    """Arrow table of ``data``; with a schema, exactly its columns in its order and types."""
    if schema is None:
        return data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    columns = set(data.column_names if isinstance(data, pa.Table) else data.columns)
    missing, extra = set(schema.names) - columns, columns - set(schema.names)
    if missing or extra:
        raise ValueError(f"columns do not match the schema: missing {sorted(missing)}, unexpected {sorted(extra)}")
    if isinstance(data, pa.Table):
        return data.select(schema.names).cast(schema)
    return pa.Table.from_pandas(data, schema=schema, preserve_index=False)


def write_table(
    data: pd.DataFrame | pa.Table,
    path: str | os.PathLike[str],
    *,
    schema: pa.Schema | None = None,
    schema_version: int = SCHEMA_VERSION,
    inputs: Iterable[Path] = (),
    config_hash: str = "",
    seconds: float = 0.0,
) -> Path:
    """The one Parquet writer: atomic (temp name, fsync, rename), then the manifest."""
    path = Path(path)
    table = to_arrow(data, schema)
    manifest_path(path).unlink(missing_ok=True)  # the old manifest must not vouch for the new file
    _atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp))
    write_manifest(
        path, rows=table.num_rows, schema_version=schema_version, inputs=inputs,
        config_hash=config_hash, seconds=seconds,
    )
    return path


def write_json(data: dict[str, Any], path: str | os.PathLike[str], **manifest: Any) -> Path:
    """Write a small JSON artifact (e.g. train.json) atomically, with a manifest."""
    path = Path(path)
    manifest_path(path).unlink(missing_ok=True)
    text = json.dumps(data, indent=2, sort_keys=True)
    _atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
    write_manifest(path, rows=None, **manifest)
    return path


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    m = manifest_path(path)
    if not m.exists():
        raise ArtifactError(f"{path}: no manifest ({m.name}); the file is missing or was not finished")
    try:
        return json.loads(m.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{m}: corrupt manifest: {exc}") from exc


def _read_arrow(path: Path, verify: bool) -> pa.Table:
    if not path.exists():
        raise ArtifactError(f"{path}: file not found")
    if verify:
        manifest = read_manifest(path)
        if file_sha256(path) != manifest["sha256"]:
            raise ArtifactError(f"{path}: contents do not match its manifest (corrupt or changed after writing)")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable Parquet file: {exc}") from exc


def read_table(path: str | os.PathLike[str], *, verify: bool = True) -> pd.DataFrame:
    """Read a stage's Parquet output; a missing, unfinished or corrupt file is an ArtifactError naming it."""
    return _read_arrow(Path(path), verify).to_pandas()


def read_rows(path: str | os.PathLike[str], *, verify: bool = True) -> list[dict[str, Any]]:
    """The same file as plain Python rows (list columns stay lists, nulls are None)."""
    return _read_arrow(Path(path), verify).to_pylist()


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: corrupt JSON: {exc}") from exc


def stage_complete(outputs: Iterable[Path], inputs: Iterable[Path], config_hash: str) -> bool:
    """True when every output exists, matches its manifest, and was made from these inputs and config."""
    inputs = [Path(p) for p in inputs]
    try:
        current = _input_hashes(inputs)
    except FileNotFoundError:
        return False
    for out in map(Path, outputs):
        if not out.exists() or not manifest_path(out).exists():
            return False
        try:
            manifest = read_manifest(out)
        except ArtifactError:
            return False
        if manifest.get("inputs") != current or manifest.get("config_hash") != config_hash:
            return False
        if manifest.get("sha256") != file_sha256(out):
            return False
    return True


def leftover_temporaries(root: Path) -> list[Path]:
    """Temporary files and directories of writes that never finished (``.<name>.tmp``, ``.<name>.<pid>.tmp``)."""
    return sorted(p for p in Path(root).rglob(".*.tmp") if ".prefect" not in p.parts)


def damaged_files(root: Path) -> list[tuple[Path, str]]:
    """(file, what is wrong) for every file under ``root`` with a manifest that no longer vouches for it."""
    found = []
    for manifest in sorted(Path(root).rglob("*.manifest.json")):
        if ".prefect" in manifest.parts or manifest.name.startswith("."):
            continue
        path = manifest.with_name(manifest.name.removesuffix(".manifest.json"))
        try:
            expected = json.loads(manifest.read_text())["sha256"]
        except (ValueError, KeyError, TypeError):
            found.append((path, "its manifest is unreadable"))
            continue
        if path.exists() and file_sha256(path) != expected:
            found.append((path, "its contents do not match its manifest (corrupt, truncated or changed after writing)"))
    return found


def discard_damaged(root: Path) -> list[str]:
    """Make a run directory safe to continue: remove leftovers of unfinished writes, and the manifest of
    every damaged file, so that the stage that wrote it runs again instead of passing it on.

    Returns one line per damaged file, naming it (relative to ``root``).
    """
    for leftover in leftover_temporaries(root):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    lines = []
    for path, problem in damaged_files(root):
        manifest_path(path).unlink(missing_ok=True)
        lines.append(f"{path.relative_to(root)}: {problem}")
    return lines
