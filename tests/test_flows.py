"""The training flow end to end: `azr run` on the smoke config, and a SIGKILLed run resumed.

Both run the real console script in a subprocess: Prefect's ephemeral server (PREFECT_HOME under
the runs directory), tiny-random, the real sandbox.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from azr.artifacts import RunDir, manifest_path, read_table
from azr.runs import STEPS, step_output
from azr.pipeline import BUFFER
from tests.conftest import SMOKE_CONFIG, ROOT, assert_same_table, azr_command, azr_env, run_azr

pytestmark = pytest.mark.slow  # runs azr end to end (tiny-random, Prefect, MLflow)

PARQUET = ("proposals.parquet", "tasks.parquet", "solutions.parquet", "rewards.parquet")


def test_smoke_run_writes_every_artifact(smoke_run):
    result, root = smoke_run
    run = RunDir(root)
    assert run.config_path.exists() and BUFFER.output(run, 0).exists()
    for iteration in (1, 2):
        for step in STEPS:
            path = step_output(run, iteration, step)
            assert path.exists() and manifest_path(path).exists(), f"{path} missing"
        assert (run.checkpoint_dir(iteration) / "checkpoint.json").exists()
        train = json.loads(run.stage_file(iteration, "train.json").read_text())
        assert train["tokens"] > 0 and train["loss"] == train["loss"]  # a real update, not NaN
    assert run.iterations() == [1, 2]  # num_iterations from the smoke config, nothing more
    assert (root / "mlflow_run_id").exists()
    assert (root.parent / "mlflow.db").exists()
    assert (root.parent / ".prefect" / "prefect.db").exists()  # PREFECT_HOME under the runs directory


def test_smoke_run_prints_summary_and_where_to_look(smoke_run):
    result, root = smoke_run
    out = result.stdout
    assert "run smoke" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{root.parent / 'mlflow.db'}" in out.replace("\n", "")
    assert f"azr tasks {root}" in out.replace("\n", "")
    # The ephemeral server's start/stop lines and Prefect's per-task INFO lines stay off the console.
    for noise in ("Starting temporary server", "Stopping temporary server", "Finished in state", "Traceback"):
        assert noise not in result.stdout + result.stderr


def _wait_for_solve(run: RunDir, process: subprocess.Popen, timeout: float = 600) -> None:
    started_solve = manifest_path(run.stage_file(2, "tasks.parquet"))
    deadline = time.monotonic() + timeout
    while not started_solve.exists():
        assert process.poll() is None, f"azr run ended before the solve stage of iteration 2:\n{process.stderr.read()}"
        assert time.monotonic() < deadline, "the solve stage of iteration 2 never started"
        time.sleep(0.02)


def _snapshot(run: RunDir) -> dict[Path, tuple[int, bytes]]:
    """mtime and bytes of every finished file and manifest (the work that must not be redone)."""
    files = [p for p in run.root.rglob("*") if p.is_file() and ".prefect" not in p.parts]
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files if p.suffix in (".parquet", ".json")}


def _without_timing(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in frame.columns if c.endswith("_seconds")])


def test_killed_run_resumes_to_the_same_files(smoke_run, tmp_path):
    _, reference_root = smoke_run
    runs_dir = tmp_path / "runs"
    # Same run name as the reference run: the `run` column is part of every row.
    process = subprocess.Popen(
        azr_command("run", "--config", SMOKE_CONFIG, "--runs-dir", runs_dir), cwd=ROOT, env=azr_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    run = RunDir(runs_dir / "smoke")
    try:
        _wait_for_solve(run, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not run.stage_file(2, "solutions.parquet").exists(), "killed too late: solve had already finished"
    before = _snapshot(run)
    assert run.stage_file(1, "train.json") in before and run.stage_file(2, "tasks.parquet") in before
    mlflow_run_id = (run.root / "mlflow_run_id").read_text()

    result = run_azr("resume", run.root)
    assert result.returncode == 0, f"azr resume failed:\n{result.stdout}\n{result.stderr}"

    after = _snapshot(run)
    for path, (mtime, content) in before.items():
        assert after[path] == (mtime, content), f"{path.relative_to(run.root)} was rewritten by resume"
    reference = RunDir(reference_root)
    for iteration in (1, 2):
        for name in PARQUET:
            assert_same_table(read_table(run.stage_file(iteration, name)),
                              read_table(reference.stage_file(iteration, name)), obj=f"iter-{iteration:04d}/{name}")
        pd.testing.assert_frame_equal(read_table(BUFFER.output(run, iteration)), read_table(BUFFER.output(reference, iteration)))
    _assert_one_mlflow_run_logged_once(runs_dir, mlflow_run_id.strip())


def _assert_one_mlflow_run_logged_once(runs_dir: Path, run_id: str) -> None:
    """Iteration 1 was logged before the kill; the resumed process logs iteration 2 into the same run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    assert (runs_dir / "smoke" / "mlflow_run_id").read_text().strip() == run_id
    assert [m.step for m in client.get_metric_history(run_id, "iteration")] == [1, 2]
    experiment = client.get_experiment_by_name("azr")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_run_refuses_an_existing_run_directory(smoke_run):
    _, root = smoke_run
    result = run_azr("run", "--config", SMOKE_CONFIG, "--runs-dir", root.parent)
    assert result.returncode == 2
    assert f"azr resume {root}" in " ".join(result.stderr.split())


def test_resume_names_a_directory_that_is_not_a_run(tmp_path):
    result = run_azr("resume", tmp_path)
    assert result.returncode == 2
    assert str(tmp_path) in " ".join(result.stderr.split()) and "config.yaml" in result.stderr


def test_failed_run_says_what_failed_and_how_to_continue(tmp_path):
    result = run_azr("run", "--config", SMOKE_CONFIG, "--runs-dir", tmp_path, "--set", "model.name_or_path=/no/such/model",
                     "--set", "eval.every=0")  # fail in the first stage, not the base-model evaluation
    assert result.returncode == 1
    err = result.stderr
    assert "run smoke failed: " in err and "ModelNotFoundError" in err and "/no/such/model" in err
    assert f"azr resume {tmp_path / 'smoke'}" in err
    assert 'stages/propose.py", line' in err  # where in azr it failed
    assert "site-packages" not in err  # not Prefect's engine frames, printed once per flow level
    # Nothing written outside the run: Prefect keeps a raised exception in its result storage.
    assert not (tmp_path / ".prefect" / "storage").exists()
