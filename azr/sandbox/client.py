"""The `Sandbox`: a pool of runner workers (containers or local processes) fed in batches.

Jobs stream to every worker over its stdin, answers stream back in completion order, so one slow
program never holds up the others. A worker that dies or stops answering is killed and replaced,
and the pool goes on serving. The jobs it held are run again, each by itself on a worker with
nothing else to do (first the fresh replacement): a worker can die of something that is no
program's doing (`docker kill`, a daemon restart, the OOM killer), so only a job that kills or
hangs the worker it runs on alone gets status ``killed``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import selectors
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from azr.config import ExecutorConfig
from azr.sandbox.results import CheckResult, ValidationResult  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

RUNNER_PATH = Path(__file__).with_name("runner.py")
# Resolve every shared-library symbol when the runner starts: lazily, each forked child would
# resolve (and copy-on-write) the same symbol table entries again.
RUNNER_ENV = {"LD_BIND_NOW": "1"}
START_SECONDS = 60.0  # a worker must say hello within this (a container start on a busy daemon is slow)
HANG_GRACE_SECONDS = 10.0  # silence beyond the per-program limit that marks a worker as hung
RESTART_SECONDS = 60.0  # how long a replacement worker may keep failing to start (a Docker daemon restarting)
JOBS_PER_SLOT = 8  # jobs queued at a worker per slot: keeps its children busy while answers travel
SANDBOX_UIDS = range(100_000, 1_100_000)  # unprivileged uids with no account; see sandbox_uid


def sandbox_uid() -> int:
    """A uid of its own for one worker's programs.

    The kernel counts the process limit (RLIMIT_NPROC) per uid across the whole machine, so workers
    sharing one uid would let a fork bomb in one stop every other worker's programs from forking or
    starting a thread. Drawn at random, so that separate pools (and separate runs) do not share one.
    """
    return SANDBOX_UIDS[secrets.randbelow(len(SANDBOX_UIDS))]


class SandboxError(RuntimeError):
    """The sandbox cannot run at all (no daemon, no image, a worker that never starts)."""


class Worker(Protocol):
    """One runner process; `start` sends the config line and returns the runner's hello."""

    name: str
    read_fd: int
    write_fd: int

    def start(self, runner_config: dict[str, Any]) -> dict[str, Any]: ...

    def decode(self, data: bytes) -> bytes: ...

    def kill(self) -> None: ...

    def describe_death(self) -> str: ...


def runner_config(config: ExecutorConfig, **extra: Any) -> dict[str, Any]:
    """The runner's limits from the executor config."""
    return {
        "timeout_seconds": config.timeout_seconds,
        "cpu_seconds": config.cpu_seconds,
        "memory_mb": config.memory_mb,
        "max_output_chars": config.max_output_chars,
        "slots": config.worker_slots,
        "banned": list(config.banned_modules),  # jobs checked against another list carry their own
        **extra,
    }


def read_hello(worker: Worker, deadline: float) -> dict[str, Any]:
    """Block until the runner's first line; SandboxError if it does not come."""
    buffer = b""
    selector = selectors.DefaultSelector()
    selector.register(worker.read_fd, selectors.EVENT_READ)
    try:
        while b"\n" not in buffer:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                raise SandboxError(f"{worker.name}: no hello within {START_SECONDS:.0f} s")
            data = os.read(worker.read_fd, 65536)
            if not data:
                raise SandboxError(f"{worker.name}: exited before saying hello: {worker.describe_death()}")
            buffer += worker.decode(data)
    finally:
        selector.close()
    line, _, rest = buffer.partition(b"\n")
    message = json.loads(line)
    if "hello" not in message:
        raise SandboxError(f"{worker.name}: refused its config: {message.get('error')}")
    message["hello"]["pending"] = rest
    return message["hello"]


class _Slot:
    """A live worker plus the host-side state of its stream."""

    def __init__(self, worker: Worker, hello: dict[str, Any]):
        self.worker = worker
        self.hello = hello
        self.inbuf = bytearray(hello.pop("pending", b""))
        self.outbuf = bytearray()
        self.outstanding: dict[int, int] = {}  # job id -> index in the current batch
        self.alone = False  # it runs one job lost with another worker, and nothing else (Sandbox._feed)
        self.last_heard = time.monotonic()
        os.set_blocking(worker.read_fd, False)
        os.set_blocking(worker.write_fd, False)


@dataclass
class _Batch:
    """One `Sandbox.run` call: the jobs, their answers so far, and what is left to send."""

    jobs: list[dict[str, Any]]
    results: list[dict[str, Any] | None]
    lines: list[bytes | None]
    pending: deque[int]  # job indices not sent yet, in order
    lost: deque[int] = field(default_factory=deque)  # jobs lost with their worker: each runs again alone

    @classmethod
    def of(cls, jobs: list[dict[str, Any]]) -> "_Batch":
        return cls(jobs, [None] * len(jobs), [None] * len(jobs), deque(range(len(jobs))))

    def line(self, index: int, job_id: int) -> bytes:
        """The job's protocol line under a fresh id (each send gets its own, so a late answer cannot be taken for another's)."""
        self.lines[index] = self.lines[index] or json.dumps(self.jobs[index]).encode()
        return b'{"id": %d, ' % job_id + self.lines[index][1:] + b"\n"


class Sandbox:
    """A pool of warm sandbox workers. Use `open_sandbox`; close it (or use ``with``) when done.

    Not thread-safe: one batch at a time.
    """

    def __init__(self, config: ExecutorConfig, backend: str, make_worker: Callable[[int], Worker], extra: dict[str, Any]):
        self.config = config
        self.backend = backend
        self._make_worker = make_worker
        self._runner_config = runner_config(config, **extra)
        self._ids = itertools.count()
        self._serial = itertools.count()
        self._slots: list[_Slot] = []
        self.replaced = 0  # workers replaced after dying or hanging (for tests and metrics)
        size = config.pool_size or os.cpu_count() or 1
        with ThreadPoolExecutor(size) as pool:  # containers start in parallel: each takes a second or more
            starts = [pool.submit(self._start_retrying, "for the pool") for _ in range(size)]
        self._slots = [start.result() for start in starts if start.exception() is None]
        failed = [start.exception() for start in starts if start.exception() is not None]
        if failed:
            self.close()
            raise failed[0]

    @property
    def hello(self) -> dict[str, Any]:
        """What the first worker's runner reported (python version, network isolation)."""
        return self._slots[0].hello

    def _start_worker(self) -> _Slot:
        worker = self._make_worker(next(self._serial))
        try:
            hello = worker.start(self._runner_config)
        except BaseException:
            worker.kill()
            raise
        return _Slot(worker, hello)

    def close(self) -> None:
        """Stop every worker (containers are removed)."""
        for slot in self._slots:
            slot.worker.kill()
        self._slots = []

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- the batch loop

    def run(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run runner jobs (see runner.JOB_FIELDS) across the pool; one answer dict per job, in order."""
        if not self._slots:
            raise SandboxError("sandbox is closed")
        batch = _Batch.of(jobs)
        # A job the runner reruns alone (runner.py, Server.start_children) may wait out its neighbours' limit first.
        hang_after = 2 * self.config.timeout_seconds + HANG_GRACE_SECONDS
        while batch.pending or batch.lost or any(slot.outstanding for slot in self._slots):
            for slot in self._slots:
                self._feed(slot, batch)
                self._flush(slot)
            self._wait(batch, hang_after)
        return batch.results  # type: ignore[return-value]

    def _feed(self, slot: _Slot, batch: _Batch) -> None:
        """Queue jobs at a worker: a lost job by itself when the worker is idle, else regular jobs up to its window."""
        if not slot.outstanding:
            slot.alone = False
            if batch.pending or batch.lost:
                slot.last_heard = time.monotonic()  # silence while it had nothing to do is not a hang
            if batch.lost:
                self._send(slot, batch, batch.lost.popleft())
                slot.alone = True
                return
        if slot.alone:
            return
        window = self.config.worker_slots * JOBS_PER_SLOT
        while batch.pending and len(slot.outstanding) < window:
            self._send(slot, batch, batch.pending.popleft())

    def _send(self, slot: _Slot, batch: _Batch, index: int) -> None:
        job_id = next(self._ids)
        slot.outbuf += batch.line(index, job_id)
        slot.outstanding[job_id] = index

    def _flush(self, slot: _Slot) -> None:
        while slot.outbuf:
            try:
                written = os.write(slot.worker.write_fd, slot.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # a dead worker: its read side reports EOF next
            del slot.outbuf[:written]

    def _wait(self, batch: _Batch, hang_after: float) -> None:
        selector = selectors.DefaultSelector()
        try:
            for slot in self._slots:
                mask = selectors.EVENT_READ
                if slot.worker.write_fd == slot.worker.read_fd and slot.outbuf:
                    mask |= selectors.EVENT_WRITE
                selector.register(slot.worker.read_fd, mask, slot)
                if slot.worker.write_fd != slot.worker.read_fd and slot.outbuf:
                    selector.register(slot.worker.write_fd, selectors.EVENT_WRITE, slot)
            for key, mask in selector.select(timeout=1.0):
                if mask & selectors.EVENT_READ:
                    self._receive(key.data, batch)
        finally:
            selector.close()
        now = time.monotonic()
        for slot in list(self._slots):
            if slot.outstanding and now - slot.last_heard > hang_after:
                self._replace(slot, batch, f"gave no answer for {now - slot.last_heard:.0f} s (hung)")

    def _receive(self, slot: _Slot, batch: _Batch) -> None:
        if slot not in self._slots:
            return
        try:
            data = os.read(slot.worker.read_fd, 1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # a reset connection is a dead worker too
        if not data:
            self._replace(slot, batch, f"died ({slot.worker.describe_death()})")
            return
        slot.last_heard = time.monotonic()
        slot.inbuf += slot.worker.decode(data)
        start = 0
        while (end := slot.inbuf.find(b"\n", start)) >= 0:
            self._answer(slot, json.loads(slot.inbuf[start:end]), batch.results)
            start = end + 1
        del slot.inbuf[:start]

    def _answer(self, slot: _Slot, message: dict[str, Any], results: list[dict[str, Any] | None]) -> None:
        job_id = message.pop("id", None)
        if job_id not in slot.outstanding:
            raise SandboxError(f"{slot.worker.name}: answer for a job it was not given: {message}")
        results[slot.outstanding.pop(job_id)] = message

    def _replace(self, slot: _Slot, batch: _Batch, reason: str) -> None:
        """Kill a dead or hung worker and start a fresh one in its place; run the jobs it held again.

        A worker can die or hang of something that is no program's doing (`docker kill`, a daemon
        restart, the OOM killer taking the runner), so the jobs it held go back to the batch, each
        to run by itself (`_feed`). A job that was already running alone did it: it gets ``killed``.
        """
        held = list(slot.outstanding.values())
        slot.worker.kill()
        if slot.alone:
            log.warning("sandbox %s %s while running one program alone; that program is killed", slot.worker.name, reason)
            for index in held:
                batch.results[index] = {"status": "killed", "error": f"the sandbox worker running this program alone {reason}", "seconds": 0.0}
        else:
            log.warning("sandbox %s %s; replacing it and running its %d programs again, each alone", slot.worker.name, reason, len(held))
            batch.lost.extend(held)
        self._slots[self._slots.index(slot)] = self._start_retrying(f"in place of {slot.worker.name}")
        self.replaced += 1
        now = time.monotonic()
        for other in self._slots:  # not listened to while the replacement started: their silence is ours
            other.last_heard = now

    def _start_retrying(self, purpose: str) -> _Slot:
        """A fresh worker (`purpose`: for the log). Starting may fail for a while (a Docker daemon restarting,
        which removes a container it was starting): keep trying for RESTART_SECONDS."""
        deadline, delay = time.monotonic() + RESTART_SECONDS, 0.5
        while True:
            try:
                return self._start_worker()
            except (SandboxError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise SandboxError(
                        f"cannot start a sandbox worker {purpose} (tried for {RESTART_SECONDS:.0f} s): {exc}"
                    ) from exc
                log.warning("sandbox: starting a worker %s failed (%s); trying again in %.1f s", purpose, exc, delay)
                time.sleep(delay)
                delay = min(2 * delay, 5.0)

    # -------------------------------------------------------------- operations

    def validate(self, items: list[tuple[str, list[str]]], banned_modules: list[str] | None = None) -> list[ValidationResult]:
        """Ground-truth validation of (program, input texts) proposals; see design.md section 5."""
        from azr.sandbox.checks import validate

        return validate(self, items, self.config.banned_modules if banned_modules is None else banned_modules)

    def check_deduction(self, items: list[tuple[str, str]], expressions: bool = False) -> list[CheckResult]:
        """(gold output repr, answer literal): correct when the answer's value equals the gold value.
        `expressions`: CRUXEval's rule, an answer may be any expression."""
        from azr.sandbox.checks import check_deduction

        return check_deduction(self, items, expressions)

    def check_abduction(self, items: list[tuple[str, str, str]], expressions: bool = False) -> list[CheckResult]:
        """(program, answer argument list, gold output repr): correct when f(answer) == gold.
        `expressions`: CRUXEval's rule, an answer may be any expression or `f(...)` call text."""
        from azr.sandbox.checks import check_abduction

        return check_abduction(self, items, expressions)

    def check_induction(self, items: list[tuple[str, list[str], list[str]]]) -> list[CheckResult]:
        """(candidate program, inputs, gold output reprs): correct when it reproduces every pair."""
        from azr.sandbox.checks import check_induction

        return check_induction(self, items)
