"""Shared test fixtures.

Importing this file points PREFECT_HOME at a temporary directory before anything imports
Prefect (it reads its settings once, at import), so no test writes to the user's home.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = ROOT / "configs" / "smoke.yaml"

TEST_ENV = {
    "HF_HUB_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}
os.environ.update(TEST_ENV)
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="azr-test-prefect-")
os.environ.pop("PREFECT_API_URL", None)  # tests never talk to a server they did not start


def azr_command(*args: str | os.PathLike[str]) -> list[str]:
    """The `azr` console script of this interpreter's environment, with ``args``."""
    return [str(Path(sys.executable).parent / "azr"), *map(str, args)]


def azr_env(prefect_home: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for an `azr` subprocess: offline, and its own PREFECT_HOME when given."""
    env = {**os.environ, **TEST_ENV, **extra}
    env.pop("PREFECT_HOME", None)  # azr then keeps Prefect's files under the runs directory
    if prefect_home is not None:
        env["PREFECT_HOME"] = str(prefect_home)
    return env


def run_azr(*args: str | os.PathLike[str], timeout: float = 900, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `azr ARGS` to completion in a subprocess from the repository root; output is captured."""
    return subprocess.run(azr_command(*args), cwd=ROOT, env=azr_env(**env), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One uninterrupted `azr run --config configs/smoke.yaml` (2 iterations, tiny-random), shared
    by the tests that read a finished run. Returns the finished process and the run directory."""
    runs_dir = tmp_path_factory.mktemp("smoke-runs")
    result = run_azr("run", "--config", SMOKE_CONFIG, "--runs-dir", runs_dir)
    assert result.returncode == 0, f"azr run failed:\n{result.stdout}\n{result.stderr}"
    return result, runs_dir / "smoke"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, what: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll ``condition`` until true; fail naming ``what`` (with the log's tail) if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"{what}: process exited\n{log.read_text()[-5000:]}"
        assert time.monotonic() < deadline, f"{what}: timed out\n{log.read_text()[-5000:]}"
        time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    """Interrupt a process started in its own session, as Ctrl-C would; kill it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> str:
    """`prefect server start` (API and UI) on a free loopback port, shared by the session; yields its API URL."""
    yield from _prefect_server(tmp_path_factory.mktemp("prefect-server"))


@pytest.fixture
def own_prefect_server(tmp_path) -> str:
    """A Prefect server for one test, for a test that disturbs what it serves (killing `azr serve`
    pauses the deployments it served, which the shared server's other tests use)."""
    yield from _prefect_server(tmp_path / "prefect-server")


def _prefect_server(tmp: Path):
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url, log = f"http://127.0.0.1:{port}/api", tmp / "server.log"
    # The UI asks the API URL of the server; without this it would ask the default port.
    env = azr_env(prefect_home=tmp / "home", PREFECT_UI_API_URL=url)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_until(lambda: healthy(url), "prefect server start", server, log)
        yield url
    finally:
        stop(server)


DEPLOYMENT = "azr-run/azr"


@pytest.fixture(scope="session")
def served(prefect_server, tmp_path_factory):
    """`azr serve --config configs/smoke.yaml` registered against the session's Prefect server:
    (client, deployment, runs directory, serve's log)."""
    tmp, url = tmp_path_factory.mktemp("deploy"), prefect_server
    serve_log = tmp / "serve.log"
    serve = subprocess.Popen(
        azr_command("serve", "--config", SMOKE_CONFIG, "--runs-dir", tmp / "runs", "--api-url", url),
        cwd=ROOT, env=azr_env(), stdout=serve_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            def registered() -> bool:
                return any(d.name == "azr" for d in client.read_deployments())

            wait_until(registered, "azr serve", serve, serve_log)
            yield client, client.read_deployment_by_name(DEPLOYMENT), tmp / "runs", serve_log
    finally:
        stop(serve)


def run_deployment_to_end(client, parameters: dict, timeout: float = 600):
    """Create a run of the served deployment through the API and wait for its final state."""
    from prefect.deployments import run_deployment

    # _sync: the browser tests call this where an event loop runs (Playwright's), which makes it a coroutine.
    flow_run = run_deployment(DEPLOYMENT, parameters=parameters, timeout=timeout, poll_interval=1, _sync=True)
    return client.read_flow_run(flow_run.id)


# The partial config of `api_run`: one top-level key and one key inside a section.
PARTIAL_CONFIG = {"num_iterations": 1, "sampling": {"max_new_tokens": 32}, "orchestration": {"run_name": "from-api"}}


@pytest.fixture(scope="session")
def api_run(served):
    """A run created through the API with only part of a config, run to its end: (flow run, run directory)."""
    client, _, runs_dir, log = served
    flow_run = run_deployment_to_end(client, {"config": PARTIAL_CONFIG})
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{log.read_text()[-5000:]}"
    return flow_run, runs_dir / "from-api"


# Recorded log-probs are float sums of batched kernels: a run resumed in another process may differ in
# their last bits (seen in CI: 1e-6-scale differences with every token the same). Everything else in a
# table (tokens, texts, verdicts, rewards) must be equal exactly.
LOGPROB_RTOL, LOGPROB_ATOL = 1e-4, 1e-5


def assert_same_table(actual, expected, obj: str) -> None:
    """Two stage tables equal: timing columns aside, log-probs within float tolerance, the rest exactly."""
    import numpy as np
    import pandas as pd

    def split(frame):
        frame = frame.drop(columns=[c for c in frame.columns if c.endswith("_seconds")])
        logprobs = frame.pop("logprobs").tolist() if "logprobs" in frame else []
        return frame, logprobs

    (a, a_lp), (b, b_lp) = split(actual), split(expected)
    pd.testing.assert_frame_equal(a, b, check_exact=True, obj=obj)
    assert len(a_lp) == len(b_lp), obj
    for row, (x, y) in enumerate(zip(a_lp, b_lp)):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        assert x.shape == y.shape and np.allclose(x, y, rtol=LOGPROB_RTOL, atol=LOGPROB_ATOL), \
            f"{obj} row {row}: log-probs differ beyond float noise (max {np.max(np.abs(x - y)) if x.shape == y.shape else 'shape'})"
