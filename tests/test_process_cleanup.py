"""Nothing `azr run`, `azr resume` or `azr serve` starts survives a SIGKILL of that command.

Each test starts the real command in its own session, waits until it has started Prefect's local
server (run, resume) or a flow-run process (serve) and the sandbox (worker processes or
containers), kills only the command's own process with SIGKILL, as `kill -9 PID` does, and then
looks for survivors among everything it had started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from azr.reaper import OWNER_ENV, OWNER_LABEL
from tests.conftest import ROOT, SMOKE_CONFIG, azr_command, azr_env, wait_until

pytestmark = pytest.mark.slow  # runs azr end to end (tiny-random, Prefect, sandbox)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _owner_token(processes: list[psutil.Process]) -> str | None:
    for process in processes:
        try:
            token = process.environ().get(OWNER_ENV)
        except psutil.Error:
            continue
        if token:
            return token
    return None


def _containers(token: str | None) -> list:
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception:
        return []
    return client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={token}"}) if token else []


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _started(pid: int, must_run: str) -> bool:
    """True once the command has a descendant running ``must_run`` and its sandbox is up."""
    processes = _descendants(pid)
    lines = [_cmdline(p) for p in processes]
    sandbox_up = any("runner.py" in line for line in lines) or bool(_containers(_owner_token(processes)))
    return sandbox_up and any(must_run in line for line in lines)


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie; a process that exits while being asked is not alive."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_and_find_survivors(process: subprocess.Popen, timeout: float = 30) -> list[str]:
    """SIGKILL the command alone; what it had started that is still there after ``timeout``."""
    started = [p for p in _descendants(process.pid) if _alive(p)]
    token = _owner_token(started)
    assert started, "the command had started nothing"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in started if _alive(p)]
        containers = _containers(token)
        if not alive and not containers:
            return []
        time.sleep(0.5)
    return [f"pid {p.pid}: {_cmdline(p)[:200]}" for p in alive] + [f"container {c.short_id}" for c in containers]


def _start(log: Path, *args) -> subprocess.Popen:
    return subprocess.Popen(azr_command(*args), cwd=ROOT, env=azr_env(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_killed_run_and_resume_leave_nothing_behind(tmp_path):
    """Prefect's local server (a uvicorn process) and the sandbox workers: all end. (The process
    backend: its workers are the command's own processes; the serve test covers containers.)"""
    runs_dir, log = tmp_path / "runs", tmp_path / "azr.log"
    run = ("run", "--config", SMOKE_CONFIG, "--runs-dir", runs_dir, "--set", "executor.backend=process")
    # The local server runs `prefect.server.api.server` under uvicorn.
    for args in (run, ("resume", runs_dir / "smoke")):
        process = _start(log, *args)
        try:
            wait_until(lambda: _started(process.pid, "uvicorn"), f"azr {args[0]} starting", process, log)
            assert _kill_and_find_survivors(process) == [], f"azr {args[0]} killed with SIGKILL left these behind"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_killed_serve_leaves_no_flow_run_behind(own_prefect_server, tmp_path):
    """`azr serve` runs each flow run in a process of its own; it ends with serve, and so do its
    sandbox containers (the default backend where docker answers) or worker processes."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    log = tmp_path / "serve.log"
    process = _start(log, "serve", "--config", SMOKE_CONFIG, "--runs-dir", tmp_path / "runs",
                     "--api-url", own_prefect_server, "--name", "killed")
    try:
        with temporary_settings({PREFECT_API_URL: own_prefect_server}), get_client(sync_client=True) as client:
            wait_until(lambda: any(d.name == "killed" for d in client.read_deployments()), "azr serve", process, log)
            deployment = client.read_deployment_by_name("azr-run/killed")
            client.create_flow_run_from_deployment(deployment.id, parameters={"config": {"num_iterations": 1}})
            wait_until(lambda: _started(process.pid, "python"), "the flow run starting", process, log)
        assert _kill_and_find_survivors(process) == [], "azr serve killed with SIGKILL left these behind"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
