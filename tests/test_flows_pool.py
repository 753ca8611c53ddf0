"""`azr deploy --pool`: the training flow registered with a work pool, run by a real Prefect process
worker (`prefect worker start`) against a real local Prefect server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from azr.artifacts import RunDir
from azr.runs import iterations_done
from tests.conftest import ROOT, SMOKE_CONFIG, azr_command, azr_env, stop, wait_until

pytestmark = pytest.mark.slow  # runs azr end to end (tiny-random, Prefect, MLflow)
POOL, NAME = "azr-test-pool", "pooled"


@pytest.fixture(scope="module")
def pool_worker(prefect_server, tmp_path_factory):
    """`azr deploy --pool` done, and a process worker polling the pool: (API URL, runs directory, worker log)."""
    tmp, url = tmp_path_factory.mktemp("pool"), prefect_server
    runs_dir = tmp / "runs"
    deploy = subprocess.run(azr_command("deploy", "--pool", POOL, "--name", NAME, "--config", SMOKE_CONFIG,
                                        "--runs-dir", runs_dir, "--api-url", url),
                            cwd=ROOT, env=azr_env(), capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert f"prefect worker start --pool {POOL}" in " ".join(deploy.stdout.split())
    log = tmp / "worker.log"
    env = azr_env(tmp / "worker-prefect-home", PREFECT_API_URL=url)
    worker = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"], cwd=tmp, env=env,
                              stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "started" in log.read_text().lower(), "prefect worker start", worker, log, timeout=120)
        yield url, runs_dir, log
    finally:
        stop(worker)


def _run(url: str, parameters: dict):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        flow_run = run_deployment(f"azr-run/{NAME}", parameters=parameters, timeout=900, poll_interval=1, _sync=True)
        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run.id)


def test_a_process_worker_runs_the_smoke_deployment_to_completion(pool_worker):
    url, runs_dir, log = pool_worker
    flow_run = _run(url, {"config": {"orchestration": {"run_name": "from-pool"}}})
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{log.read_text()[-5000:]}"
    run = RunDir(runs_dir / "from-pool")
    assert iterations_done(run) == 2  # the deployment's smoke config: 2 iterations


def test_a_worker_that_cannot_see_the_runs_directory_refuses_the_run(pool_worker, tmp_path):
    url, _, log = pool_worker
    unseen = tmp_path / "not-mounted" / "runs"
    flow_run = _run(url, {"config": {"orchestration": {"runs_dir": str(unseen), "run_name": "nowhere"}}})
    assert flow_run.state.is_failed(), f"{flow_run.state}\n{log.read_text()[-5000:]}"
    assert f"orchestration.runs_dir {unseen} is not visible on this worker" in flow_run.state.message
    assert not Path(unseen).exists(), "nothing may be written where the worker cannot see the shared storage"
