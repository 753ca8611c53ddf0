"""Build the sandbox image (`azr sandbox build`), online or from this machine's Python.

The offline base is a root filesystem holding only this machine's Python interpreter, its standard
library and the shared libraries they link, imported with `docker import`: no registry, no package
manager, a few seconds. The executor Dockerfile then builds on top of it like on any base.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from azr.sandbox.client import RUNNER_PATH, SandboxError
from azr.sandbox.docker_backend import RUNNER_LABEL, SANDBOX_UID, docker_client, runner_digest

log = logging.getLogger(__name__)

DOCKERFILE = Path(__file__).resolve().parents[2] / "containers" / "executor" / "Dockerfile"
OFFLINE_BASE = "azr-executor-base:offline"
# Parts of the standard library a sandboxed program cannot use (GUI, tests, installers, static libs).
SKIP_STDLIB = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data"}
SKIP_PREFIX = ("config-",)


def shared_libraries(binaries: list[str]) -> set[str]:
    """Absolute paths of the shared libraries (and the loader) that binaries need, from ldd."""
    found: set[str] = set()
    for binary in binaries:
        output = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        for match in re.finditer(r"(/\S+)\s+\(0x", output):
            found.add(match.group(1))
    return found


def stdlib_files(stdlib: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in SKIP_STDLIB and not d.startswith(SKIP_PREFIX)]
        for name in files:
            if ".opt-" not in name:  # optimised bytecode: never used, half the size
                yield Path(root, name)


def _add_file(tar: tarfile.TarFile, path: str, arcname: str | None = None) -> None:
    """Add a file (symlinks resolved) readable and, if executable, runnable by everyone."""
    info = tar.gettarinfo(os.path.realpath(path), arcname=(arcname or path).lstrip("/"))
    info.mode |= 0o444 | (0o111 if info.mode & 0o100 else 0)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    with open(os.path.realpath(path), "rb") as fh:
        tar.addfile(info, fh)


def _add_dir(tar: tarfile.TarFile, path: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(path.strip("/"))
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def _add_text(tar: tarfile.TarFile, path: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(path.lstrip("/"))
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_symlink(tar: tarfile.TarFile, path: str, target: str) -> None:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar.addfile(info)


def offline_rootfs(out: io.BufferedIOBase) -> int:
    """Write a tar of a minimal root filesystem with this machine's Python; returns the file count.

    Files keep their absolute paths, so the interpreter finds its stdlib and libraries as it does
    here; /usr/local/bin/python3 points at it, as in the official python images.
    """
    python = os.path.realpath(sys._base_executable if hasattr(sys, "_base_executable") else sys.executable)
    stdlib = Path(sysconfig.get_paths(vars={"installed_base": sys.base_prefix, "base": sys.base_prefix})["stdlib"])
    files = [str(p) for p in stdlib_files(stdlib)]
    extensions = [f for f in files if f.endswith(".so")]
    libraries = shared_libraries([python, *extensions])
    dirs = sorted({str(Path(p).parent) for p in [python, *files, *libraries]} | {"/usr/local/bin", "/tmp", "/etc"})
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for directory in _with_parents(dirs):
            _add_dir(tar, directory, 0o1777 if directory == "/tmp" else 0o755)
        for path in sorted({python, *files, *libraries}):
            _add_file(tar, path)
        if python != "/usr/local/bin/python3":
            _add_symlink(tar, "/usr/local/bin/python3", python)
        _add_text(tar, "/etc/passwd", f"root:x:0:0:root:/root:/sbin/nologin\nsandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/tmp:/sbin/nologin\n")
        _add_text(tar, "/etc/group", f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\n")
    return len(files) + len(libraries) + 1


def _with_parents(dirs: list[str]) -> list[str]:
    every = set()
    for directory in dirs:
        path = Path(directory)
        every.update(str(p) for p in [path, *path.parents] if str(p) != "/")
    return sorted(every, key=lambda p: (p.count("/"), p))


def build_offline_base(client: Any, tag: str = OFFLINE_BASE) -> str:
    """`docker import` a base image made from this machine's Python; returns its tag."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as tar:
        count = offline_rootfs(tar)
        size = tar.tell()
        tar.seek(0)
        repository, _, version = tag.partition(":")
        client.api.import_image_from_data(tar.read(), repository=repository, tag=version or "latest")
    log.info("offline base %s: %d files, %.0f MiB, %.1f s", tag, count, size / 2**20, time.monotonic() - started)
    return tag


def build_image(image: str, base_image: str | None = None, offline: bool = False) -> str:
    """Build and tag the sandbox image from containers/executor/Dockerfile; returns the image id."""
    if offline and base_image:
        raise SandboxError("give either --base-image or --offline, not both")
    if not DOCKERFILE.is_file():
        raise SandboxError(f"{DOCKERFILE} not found (azr sandbox build runs from a source checkout)")
    client = docker_client(timeout=600)
    if offline:
        base_image = build_offline_base(client)
    args = {"BASE_IMAGE": base_image} if base_image else {}
    previous = _image_id(client, image)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as context:
        shutil.copy(DOCKERFILE, Path(context, "Dockerfile"))
        shutil.copy(RUNNER_PATH, Path(context, "runner.py"))
        try:
            built, _ = client.images.build(
                path=context, tag=image, buildargs=args, labels={RUNNER_LABEL: runner_digest()}, rm=True, forcerm=True
            )
        except Exception as exc:  # BuildError, APIError: both carry the daemon's message
            raise SandboxError(f"building {image} failed: {exc}") from None
    labels = built.labels or {}
    if labels.get(RUNNER_LABEL) != runner_digest():
        raise SandboxError(f"built {image} but it lacks the {RUNNER_LABEL} label")
    log.info("built %s (%s) in %.1f s", image, built.short_id, time.monotonic() - started)
    if previous and previous != built.id:
        _remove_quietly(client, previous)  # vfs keeps a full copy per image: do not pile up old ones
    return built.id


def _image_id(client: Any, image: str) -> str | None:
    try:
        return client.images.get(image).id
    except Exception:  # ImageNotFound
        return None


def _remove_quietly(client: Any, image_id: str) -> None:
    try:
        client.images.remove(image_id)
    except Exception as exc:  # still used by a container: leave it
        log.info("kept previous image %s: %s", image_id[:19], exc)
