"""Shared test fixtures.

Importing this file points PREFECT_HOME at a temporary directory before anything imports
Prefect (it reads its settings once, at import), so no test writes to the user's home.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

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
