"""`azr serve` against a real local Prefect server: the deployment, its form schema, runs created
through the API (one with an override that completes, invalid ones that are refused)."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from azr.artifacts import RunDir
from azr.runs import iterations_done
from tests.conftest import ROOT, SMOKE_CONFIG, azr_command, azr_env

pytestmark = pytest.mark.slow  # runs azr end to end (tiny-random, Prefect, MLflow)

DEPLOYMENT = "azr-run/azr"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, what: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"{what}: process exited\n{log.read_text()[-5000:]}"
        assert time.monotonic() < deadline, f"{what}: timed out\n{log.read_text()[-5000:]}"
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A Prefect server on a free loopback port, and `azr serve` registered against it."""
    tmp = tmp_path_factory.mktemp("deploy")
    url = f"http://127.0.0.1:{_free_port()}/api"
    server_log, serve_log = tmp / "server.log", tmp / "serve.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
         "--port", url.split(":")[2].split("/")[0], "--no-ui"],
        env=azr_env(prefect_home=tmp / "server-home"), stdout=server_log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    serve = None
    try:
        _wait(lambda: _healthy(url), "prefect server start", server, server_log)
        serve = subprocess.Popen(
            azr_command("serve", "--config", SMOKE_CONFIG, "--runs-dir", tmp / "runs", "--api-url", url),
            cwd=ROOT, env=azr_env(), stdout=serve_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            def registered() -> bool:
                return any(d.name == "azr" for d in client.read_deployments())

            _wait(registered, "azr serve", serve, serve_log)
            yield client, client.read_deployment_by_name(DEPLOYMENT), tmp / "runs", serve_log
    finally:
        for process in (serve, server):
            if process is not None:
                _stop(process)


def test_deployment_parameter_is_the_whole_config_with_descriptions_and_bounds(served):
    _, deployment, runs_dir, _ = served
    config = deployment.parameters["config"]
    assert config["model"]["name_or_path"] == "tiny-random"  # the --config given to azr serve
    assert config["orchestration"]["runs_dir"] == str(runs_dir.resolve())
    assert config["orchestration"]["run_name"] is None  # every UI run gets its own directory
    schema = deployment.parameter_openapi_schema
    definitions = schema.get("definitions") or schema.get("$defs")
    azr = definitions["AZRConfig"]["properties"]
    assert azr["num_iterations"]["exclusiveMinimum"] == 0 and azr["num_iterations"]["description"]
    assert definitions["SamplingConfig"]["properties"]["top_p"]["maximum"] == 1.0


def _run(client, parameters: dict, timeout: float = 600):
    from prefect.deployments import run_deployment

    flow_run = run_deployment(DEPLOYMENT, parameters=parameters, timeout=timeout, poll_interval=1)
    return client.read_flow_run(flow_run.id)


def test_run_created_through_the_api_with_an_override_completes(served):
    client, deployment, runs_dir, log = served
    config = copy.deepcopy(deployment.parameters["config"])
    config["num_iterations"] = 1
    config["orchestration"]["run_name"] = "from-api"
    flow_run = _run(client, {"config": config})
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{log.read_text()[-5000:]}"
    run = RunDir(runs_dir / "from-api")
    assert iterations_done(run) == 1 and run.iterations() == [1]  # the override, not the deployment's 2

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])))
    task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [c.id for c in children]}))
    names = {t.name for t in task_runs}
    assert {"propose-1", "validate-1", "solve-1", "score-1", "train-1"} <= names
    assert all("iteration:1" in t.tags for t in task_runs)


def _wait_final(client, flow_run_id, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while not (flow_run := client.read_flow_run(flow_run_id)).state.is_final():
        assert time.monotonic() < deadline, f"flow run still {flow_run.state.name}"
        time.sleep(1)
    return flow_run


def test_retry_from_the_ui_continues_the_failed_run(served):
    """A run fails at propose (a file stands where iter-0001/ must go); after the obstacle is gone,
    the Retry button's state change (what the UI sends) runs the same flow run again, which
    continues in the same run directory without redoing setup."""
    from prefect.states import AwaitingRetry

    client, deployment, runs_dir, log = served
    config = copy.deepcopy(deployment.parameters["config"])
    config["num_iterations"] = 1
    config["orchestration"]["run_name"] = "retried"
    run = RunDir(runs_dir / "retried")
    run.root.mkdir(parents=True)
    run.iteration_dir(1).write_text("not a directory")
    failed = _run(client, {"config": config})
    assert failed.state.is_failed(), f"{failed.state}\n{log.read_text()[-5000:]}"
    seed = run.buffer_path(0)
    seed_written = (seed.stat().st_mtime_ns, run.config_path.stat().st_mtime_ns)
    mlflow_run_id = (run.root / "mlflow_run_id").read_text()

    run.iteration_dir(1).unlink()
    client.set_flow_run_state(failed.id, AwaitingRetry(message="Retry from the UI"), force=False)
    retried = _wait_final(client, failed.id)
    assert retried.state.is_completed(), f"{retried.state}\n{log.read_text()[-5000:]}"
    assert iterations_done(run) == 1
    assert (seed.stat().st_mtime_ns, run.config_path.stat().st_mtime_ns) == seed_written
    assert (run.root / "mlflow_run_id").read_text() == mlflow_run_id


@pytest.mark.parametrize("change, field", [
    (lambda c: c.update(num_iterations=0), "num_iterations"),
    (lambda c: c["sampling"].update(top_p=2.0), "top_p"),
    (lambda c: c.update(bogus_key=1), "bogus_key"),
])
def test_invalid_parameter_is_refused_naming_the_field(served, change, field):
    client, deployment, _, _ = served
    config = copy.deepcopy(deployment.parameters["config"])
    change(config)
    before = len(client.read_flow_runs())
    with pytest.raises(Exception, match=field):
        client.create_flow_run_from_deployment(deployment.id, parameters={"config": config})
    assert len(client.read_flow_runs()) == before  # refused: no run was created


def test_invalid_combination_fails_the_run_naming_the_field(served):
    """Cross-field rules (task_distribution must sum to 1) are not in the JSON schema: the server
    accepts the run and the flow refuses its parameters before doing anything."""
    client, deployment, runs_dir, _ = served
    config = copy.deepcopy(deployment.parameters["config"])
    config["task_distribution"] = [0.5, 0.5, 0.5]
    config["orchestration"]["run_name"] = "bad-distribution"
    flow_run = _run(client, {"config": config})
    assert flow_run.state.is_failed()
    assert "task_distribution" in flow_run.state.message
    assert not (runs_dir / "bad-distribution").exists()


def test_serve_without_a_server_says_how_to_start_one():
    url = f"http://127.0.0.1:{_free_port()}/api"
    result = subprocess.run(azr_command("serve", "--config", SMOKE_CONFIG, "--api-url", url), cwd=ROOT, env=azr_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert f"no Prefect server answers at {url}" in message and "prefect server start" in message
