"""`azr serve` against a real local Prefect server: the deployment, its form schema, runs created
through the API (one with an override that completes, invalid ones that are refused)."""

from __future__ import annotations

import copy
import subprocess
import time

import pytest
from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter

from azr.artifacts import RunDir
from azr.config import load_config
from azr.runs import iterations_done
from azr.pipeline import BUFFER
from tests.conftest import ROOT, SMOKE_CONFIG, azr_command, azr_env, free_port, run_deployment_to_end

pytestmark = pytest.mark.slow  # runs azr end to end (tiny-random, Prefect, MLflow)


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


def _child_runs(client, flow_run):
    return client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])))


def _task_runs(client, flow_runs):
    return client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [f.id for f in flow_runs]}))


def _log_lines(client, flow_runs, until: str = "Finished in state", timeout: float = 60) -> list[str]:
    """The log lines of ``flow_runs``, once one starts with ``until`` (logs reach the API in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id={"any_": [f.id for f in flow_runs]}))
        lines = [log.message for log in logs]
        if any(line.startswith(until) for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(1)


def test_partial_override_through_the_api_keeps_the_deployments_other_settings(served, api_run):
    """Prefect merges parameters at the top level only; azr merges the rest, key by key."""
    client, deployment, runs_dir, _ = served
    flow_run, root = api_run
    run = RunDir(root)
    assert iterations_done(run) == 1 and run.iterations() == [1]  # the override, not the deployment's 2
    saved = load_config(run.config_path)
    assert saved.sampling.max_new_tokens == 32  # overridden inside a section ...
    served_config = deployment.parameters["config"]
    assert saved.sampling.batch_size == served_config["sampling"]["batch_size"] == 8  # ... its other keys kept
    assert saved.model.name_or_path == "tiny-random"  # and every other section: smoke.yaml's, not the defaults
    assert saved.orchestration.runs_dir == str(runs_dir.resolve())
    assert saved.eval.every == 1 and saved.rewards.n_samples == 2

    children = _child_runs(client, flow_run)
    task_runs = _task_runs(client, children)
    names = {t.name for t in task_runs}
    assert {"propose-1", "validate-1", "solve-1", "score-1", "train-1"} <= names
    assert all("iteration:1" in t.tags for t in task_runs)


def test_flow_runs_are_named_after_the_run_and_iteration(served, api_run):
    client, _, _, _ = served
    flow_run, _ = api_run
    assert flow_run.name == "from-api"
    assert [c.name for c in _child_runs(client, flow_run)] == ["from-api-iteration-1"]


def test_each_stage_waits_for_the_one_before_in_the_run_graph(served, api_run):
    client, _, _, _ = served
    flow_run, _ = api_run
    by_name = {t.name: t for t in _task_runs(client, _child_runs(client, flow_run))}
    order = ["propose-1", "validate-1", "solve-1", "score-1", "train-1", "update-buffer-1", "evaluate-1", "log-iteration-1"]
    for before, after in zip(order, order[1:]):
        upstream = {i.id for inputs in by_name[after].task_inputs.values() for i in inputs}
        assert by_name[before].id in upstream, f"{after} has no edge from {before}"
    # and an edge from every stage whose file it reads (azr/pipeline.py)
    for after, reads in (("score-1", ("propose-1", "validate-1", "solve-1")), ("update-buffer-1", ("validate-1",))):
        upstream = {i.id for inputs in by_name[after].task_inputs.values() for i in inputs}
        assert {by_name[r].id for r in reads} <= upstream, f"{after} lacks an edge from one of {reads}"


def test_run_logs_say_what_the_run_is_doing(served, api_run):
    """The lines `azr run` prints reach the Prefect run logs: where the run is, the MLflow run,
    the sandbox backend, each finished stage with its numbers, and each iteration's summary."""
    client, _, runs_dir, _ = served
    flow_run, root = api_run
    lines = _log_lines(client, [flow_run], until="iteration 1/1 done:")
    assert f"run from-api in {root.resolve()}" in lines
    assert any(line.startswith("MLflow run http://127.0.0.1:5000/#/experiments/") for line in lines)
    assert any(line.startswith("sandbox backend: ") for line in lines)
    assert any(line.startswith("iteration 1/1 done: prop 4  valid ") for line in lines)
    # The stages' lines too: the run's page shows them as the terminal does, not only the iteration's.
    stage_lines = _log_lines(client, [flow_run], until="iteration 1/1  buffer")
    for stage, numbers in (("propose", "4 proposals"), ("validate", "accepted"), ("solve", "rollouts, solve rate"),
                           ("score", "mean reward"), ("train", "tokens/s"), ("buffer", "buffer holds")):
        assert any(line.startswith(f"iteration 1/1  {stage}") and numbers in line for line in stage_lines), stage


def test_each_iteration_is_a_prefect_artifact(served, api_run):
    client, _, _, _ = served
    flow_run, root = api_run
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": [flow_run.id]}))
    assert [(a.key, a.type) for a in artifacts] == [("from-api-iteration-1", "markdown")]
    text = artifacts[0].data
    assert "| iter | prop | valid | forced | solved |" in text and "| 1 | 4 |" in text
    assert "**Rejected proposals by reason**" in text
    mlflow_run_id = (root / "mlflow_run_id").read_text().strip()
    assert f"- MLflow run: http://127.0.0.1:5000/#/experiments/" in text and mlflow_run_id in text
    assert f"- run directory: `{root.resolve()}`" in text


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
    failed = run_deployment_to_end(client, {"config": config})
    assert failed.state.is_failed(), f"{failed.state}\n{log.read_text()[-5000:]}"
    assert failed.state.message.startswith("NotADirectoryError: ")  # what failed, first
    # Nothing written outside the run: Prefect keeps a raised exception in its result storage.
    assert not (runs_dir / ".prefect" / "storage").exists()
    seed = BUFFER.output(run, 0)
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


def test_invalid_partial_parameter_is_refused_naming_the_field(served):
    client, deployment, _, _ = served
    before = len(client.read_flow_runs())
    with pytest.raises(Exception, match="top_p"):
        client.create_flow_run_from_deployment(deployment.id, parameters={"config": {"sampling": {"top_p": 2.0}}})
    assert len(client.read_flow_runs()) == before


@pytest.mark.parametrize("name, partial", [
    ("sums-to-1-5", {"task_distribution": [0.5, 0.5, 0.5]}),
    # Valid alone (two types, two probabilities, the defaults' shape aside); with the deployment's
    # three task types, not: the rule is checked on the merged config.
    ("two-of-three", {"task_distribution": [0.5, 0.5]}),
])
def test_invalid_combination_is_refused_before_any_stage_naming_the_field(served, name, partial):
    """Cross-field rules (task_distribution matches task_types and sums to 1) are not in the JSON
    schema: the server accepts the run, and the flow refuses the merged config before any stage
    runs; the first line of the refusal names the field, before any traceback."""
    client, deployment, runs_dir, _ = served
    flow_run = run_deployment_to_end(client, {"config": {**partial, "orchestration": {"run_name": name}}})
    assert flow_run.state.is_failed()
    assert flow_run.state.message.splitlines()[0].startswith("task_distribution: ")
    assert not (runs_dir / name).exists()
    assert client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]})) == []  # no stage ran
    lines = _log_lines(client, [flow_run], until="task_distribution: ")
    refusal = next(i for i, line in enumerate(lines) if line.startswith("task_distribution: "))
    # azr's refusal comes before any traceback (Prefect logs one when a deployment's run fails).
    assert not any("Traceback" in line for line in lines[:refusal]), lines


def test_serve_without_a_server_says_how_to_start_one():
    url = f"http://127.0.0.1:{free_port()}/api"
    result = subprocess.run(azr_command("serve", "--config", SMOKE_CONFIG, "--api-url", url), cwd=ROOT, env=azr_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert f"no Prefect server answers at {url}" in message and "prefect server start" in message
