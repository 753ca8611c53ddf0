"""Backend `process`: the runner as local worker processes, in a private network namespace where allowed.

Weaker isolation than `docker` (the host's filesystem is visible, read-only for the unprivileged
uid the children run as when started as root, one per worker); used where no Docker daemon answers.
Started as another user, children run as that user and share its process limit with the host.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from azr.sandbox.client import RUNNER_ENV, RUNNER_PATH, START_SECONDS, SandboxError, read_hello, sandbox_uid

log = logging.getLogger(__name__)


def world_traversable(path: str) -> bool:
    """True when every directory above path lets any user in (so the children's uid can import the stdlib)."""
    parent = os.path.dirname(os.path.realpath(path))
    while True:
        if not os.stat(parent).st_mode & 0o001:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


def choose_interpreter() -> tuple[str, int | None]:
    """(python for the runner, uid for its children). The runner is stdlib-only, so any python3 >= 3.9 works.

    Started as root, children run as an unprivileged uid of the worker's own, which must be able to
    read the interpreter's files; a Python installed under /root (pyenv) cannot be, so a system
    python3 is used instead.
    """
    if os.geteuid() != 0:
        return sys.executable, None
    for candidate in (sys.executable, shutil.which("python3", path=os.defpath), "/usr/bin/python3", "/usr/local/bin/python3"):
        if candidate and os.path.exists(candidate) and world_traversable(candidate):
            return candidate, sandbox_uid()
    log.warning("no python3 readable by an unprivileged user; sandbox children run as root (rlimits only)")
    return sys.executable, None


class ProcessWorker:
    """One `python -S runner.py` child process talking over pipes."""

    def __init__(self, number: int):
        self.name = f"process worker {number}"
        self.workdir = tempfile.mkdtemp(prefix="azr-sandbox-")
        os.chmod(self.workdir, 0o1777)  # children may run as another uid
        self.stderr = tempfile.TemporaryFile()
        # A minimal environment: the host's variables (tokens, paths) are not the program's business.
        env = {"PYTHONHASHSEED": "0", "PATH": os.defpath, "LANG": "C.UTF-8", **RUNNER_ENV}
        python, self.child_uid = choose_interpreter()
        self.process = subprocess.Popen(
            [python, "-S", str(RUNNER_PATH)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        self.read_fd = self.process.stdout.fileno()
        self.write_fd = self.process.stdin.fileno()

    def start(self, runner_config: dict[str, Any]) -> dict[str, Any]:
        config = {
            **runner_config,
            "unshare_net": True,
            "child_uid": self.child_uid,
            "workdir": self.workdir,
            "parent_death_signal": True,
        }
        self.process.stdin.write(json.dumps({"config": config}).encode() + b"\n")
        self.process.stdin.flush()
        hello = read_hello(self, time.monotonic() + START_SECONDS)
        if not hello.get("network"):
            log.warning("%s: the kernel refused a private network namespace; programs can reach the network", self.name)
        return hello

    def decode(self, data: bytes) -> bytes:
        return data

    def describe_death(self) -> str:
        code = self.process.poll()
        self.stderr.seek(0)
        tail = self.stderr.read()[-2000:].decode(errors="replace").strip()
        return f"exit code {code}" + (f"; stderr: {tail}" if tail else "")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # children die with it (parent-death signal)
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.stderr.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def make_process_worker(number: int) -> ProcessWorker:
    try:
        return ProcessWorker(number)
    except OSError as exc:
        raise SandboxError(f"cannot start a process sandbox worker: {exc}") from exc
