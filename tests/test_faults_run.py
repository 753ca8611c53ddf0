"""Faults around a whole run, caused for real on `azr run` / `azr resume` subprocesses (tiny-random, Prefect's
ephemeral server, MLflow's SQLite store, the real sandbox):

- SIGTERM (kill, a scheduler) and SIGINT (Ctrl-C, sent to the process group as a terminal does) in each stage;
- the MLflow store locked by another process, and an MLflow server that does not answer;
- corrupted and truncated files in a run directory;
- the Docker daemon stopped and started again while the validate stage runs.

Each must leave what the issue asks: a clear stop or error, nothing recorded wrongly, no process behind,
and a resume that ends with the rows of an uninterrupted run (the session's `smoke_run`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from azr.artifacts import RunDir, file_sha256, manifest_path, read_table
from azr.pipeline import BUFFER, EVALUATE
from tests.conftest import ROOT, SMOKE_CONFIG, assert_same_table, azr_command, azr_env, run_azr

pytestmark = pytest.mark.slow  # each runs azr end to end, several times

PARQUET = ("proposals.parquet", "tasks.parquet", "solutions.parquet", "rewards.parquet")
STAGES = ("propose", "validate", "solve", "score", "train", "update-buffer", "evaluate", "log-iteration")
STOP_LIMIT = 120  # seconds a stopped run may take to exit before the test calls it hung
RUN_LIMIT = 3600  # seconds a run or resume may take (a smoke run takes minutes on a crowded 2-core machine)


def assert_same_rows(run: RunDir, reference: RunDir) -> None:
    for iteration in (1, 2):
        for name in PARQUET:
            assert_same_table(read_table(run.stage_file(iteration, name)),
                              read_table(reference.stage_file(iteration, name)), obj=f"iter-{iteration:04d}/{name}")
        pd.testing.assert_frame_equal(read_table(BUFFER.output(run, iteration)), read_table(BUFFER.output(reference, iteration)))
        ours, theirs = run.checkpoint_dir(iteration), reference.checkpoint_dir(iteration)
        if (ours / "model.safetensors").exists() and (theirs / "model.safetensors").exists():
            # The update reads the recorded log-probs (the PPO ratio), which differ between processes in their
            # last digits (assert_same_table), and AdamW's first step makes that ~2e-6 in the weights (seen in
            # CI, lr 1e-4): the same update within float noise. Resume itself is checked bitwise where both runs
            # are started alike (the damaged-files test below, tests/test_distributed_train.py).
            want, got = load_file(theirs / "model.safetensors"), load_file(ours / "model.safetensors")
            assert want.keys() == got.keys(), f"weights of {iteration}"
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5, msg=f"weights of {iteration}: {name}")


def mlflow_run(runs_dir: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    run_id = (runs_dir / "smoke" / "mlflow_run_id").read_text().strip()
    return client, client.get_run(run_id)


class Azr:
    """One `azr` subprocess, marked so that every process it leaves behind can be found: its environment
    (inherited by Prefect's server) carries a marker, and its TMPDIR (the sandbox's worker directories and
    socket directories, which containers mount) is its own."""

    def __init__(self, *args: object, tmp: Path, **env: str):
        self.mark, self.tmp = uuid.uuid4().hex, tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.process = subprocess.Popen(azr_command(*args), cwd=ROOT, env=azr_env(AZR_TEST_MARK=self.mark, TMPDIR=str(tmp), **env),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        # Its output as it comes (read by threads, so that a full pipe never blocks it): the test waits
        # for the line a stage prints once its task has returned.
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def alive(self) -> bool:
        return self.process.poll() is None

    def printed(self, prefix: str) -> bool:
        """Whether it has printed a line starting with ``prefix`` (stdout)."""
        return any(line.startswith(prefix) for line in list(self.out))

    def communicate(self, timeout: float) -> tuple[str, str]:
        """Wait for it to exit; everything it printed on stdout and stderr."""
        self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=30)
        return "".join(self.out), "".join(self.err)

    def stop(self, signum: int) -> tuple[float, str]:
        """Send ``signum`` as a user would (SIGINT to the process group, like Ctrl-C); seconds until it exited, stderr."""
        sent = time.monotonic()
        (os.killpg if signum == signal.SIGINT else os.kill)(self.process.pid, signum)
        _, err = self.communicate(timeout=STOP_LIMIT)
        return time.monotonic() - sent, err

    def leftovers(self) -> list[str]:
        """Processes it started that are still there, and sandbox containers mounting its directories."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if self.mark.encode() in environ or cwd.startswith(str(self.tmp)):
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
                found.append(f"process {pid}: {command!r}")
        if shutil.which("docker"):
            listing = subprocess.run(["docker", "ps", "-a", "--filter", "label=azr.sandbox", "--format", "{{.ID}} {{.Mounts}}",
                                      "--no-trunc"], capture_output=True, text=True).stdout
            found += [f"container {line.split()[0]}" for line in listing.splitlines() if str(self.tmp) in line]
        return found

    def assert_nothing_left(self, wait: float = 30.0) -> None:
        deadline = time.monotonic() + wait  # a container goes once its runner sees the host's end of the socket close
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == [], left


def prefect_rows(runs_dir: Path, query: str, *args: object) -> list[tuple]:
    database = runs_dir / ".prefect" / "prefect.db"
    if not database.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as connection:
            return connection.execute(query, args).fetchall()
    except sqlite3.OperationalError:  # locked or not created yet: ask again
        return []


def wait_for(condition, azr: Azr, what: str, timeout: float = RUN_LIMIT, every: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if not azr.alive():
            raise AssertionError(f"azr ended before {what}:\n{azr.communicate(timeout=60)[1]}")
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(every)


# ---------------------------------------------------------------------------------------------- signals


STOPS = [(1, stage, signal.SIGTERM) for stage in STAGES] + [(2, stage, signal.SIGINT) for stage in STAGES]


def mlflow_steps(runs_dir: Path, key_pattern: str) -> set[int]:
    """Steps at which the run directory's MLflow store holds a metric whose key is LIKE ``key_pattern``."""
    database = runs_dir / "mlflow.db"
    if not database.exists():
        return set()
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as connection:
            return {row[0] for row in connection.execute("select step from metrics where key like ?", (key_pattern,))}
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return set()


# The line each stage prints when its task has returned (azr.summary.stage_line), by the stage after it.
LINE_BEFORE = {"validate": "propose", "solve": "validate", "score": "solve", "train": "score", "update-buffer": "train",
               "evaluate": "buffer", "log-iteration": "evaluate"}


def done_before(azr: Azr, runs_dir: Path, iteration: int, stage: str):
    """A check that turns true when the stage before ``stage`` has returned: the line it prints then (each
    process prints it again for a stage it skips as done), or, before propose, the previous iteration's
    line or the base model's evaluation in MLflow. Prefect then creates ``stage``'s task run, so a signal
    sent now lands in that bookkeeping (and raises as ``stage`` starts) or in ``stage`` itself. (The
    stage's output file is no such point: a stage writes it before its task returns, and a signal
    landing in between stops the stage before.)"""
    total = int(yaml.safe_load(SMOKE_CONFIG.read_text())["num_iterations"])
    if stage in LINE_BEFORE:
        return lambda: azr.printed(f"iteration {iteration}/{total}  {LINE_BEFORE[stage]} ")
    if iteration > 1:
        return lambda: azr.printed(f"iteration {iteration - 1}/{total} done")
    return lambda: 0 in mlflow_steps(runs_dir, "eval/%")  # propose-1 follows the base model's evaluation being logged


def latest_task_state(runs_dir: Path, task: str) -> str | None:
    rows = prefect_rows(runs_dir, "select state_type from task_run where name = ? order by created desc limit 1", task)
    return rows[0][0] if rows else None


def test_sigterm_and_sigint_in_every_stage_stop_the_run_and_it_resumes_exactly(smoke_run, tmp_path, capsys):
    """One run stopped 16 times: SIGTERM in each stage of iteration 1, Ctrl-C in each stage of iteration 2,
    each time in a fresh process resuming the last (which redoes the stage stopped before, then reaches
    the next). Each stop: the process exits by itself, says what to do, Prefect records the flow run and
    the stage's task run as crashed, MLflow the run as killed, and nothing it started is left. Then a
    last resume finishes the run with the rows of an uninterrupted one."""
    runs_dir = tmp_path / "runs"
    run = RunDir(runs_dir / "smoke")
    seconds = {}
    for number, (iteration, stage, signum) in enumerate(STOPS):
        task = f"{stage}-{iteration}"
        args = ("run", "--config", SMOKE_CONFIG, "--runs-dir", runs_dir) if number == 0 else ("resume", run.root)
        azr = Azr(*args, tmp=tmp_path / f"tmp-{number}")
        wait_for(done_before(azr, runs_dir, iteration, stage), azr, f"the stage before {task}",
                 every=0.02 if stage == "propose" else 0.001)  # MLflow's database locks while it is read
        seconds[task], err = azr.stop(signum)
        flat = " ".join(err.split())
        assert azr.process.returncode == 128 + signum, err
        assert f"stopped by {signal.Signals(signum).name}" in flat and f"azr resume {run.root}" in flat, err
        assert latest_task_state(runs_dir, task) == "CRASHED", (
            f"{task} was not the stage stopped: "
            + str(prefect_rows(runs_dir, "select name, state_type from task_run order by created desc limit 4")) + err)
        flows = prefect_rows(runs_dir, "select state_type from flow_run where parent_task_run_id is null order by created")
        assert flows[-1] == ("CRASHED",)
        assert mlflow_run(runs_dir)[1].info.status == "KILLED"
        azr.assert_nothing_left()

    result = run_azr("resume", run.root, timeout=RUN_LIMIT)
    assert result.returncode == 0, f"azr resume failed:\n{result.stdout}\n{result.stderr}"
    assert_same_rows(run, RunDir(smoke_run[1]))
    client, logged = mlflow_run(runs_dir)
    assert logged.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "iteration")] == [1, 2]  # each logged once
    with capsys.disabled():
        print("\nseconds from the signal to the process's exit (contended machine): "
              + ", ".join(f"{task} {value:.1f}" for task, value in seconds.items()))


# ---------------------------------------------------------------------------------------------- MLflow


def test_a_locked_mlflow_store_does_not_stop_the_run_and_gets_the_metrics_later(smoke_run, tmp_path):
    """Another process holds the SQLite store locked from before the start until iteration 2 begins: the
    run goes on (warning that it does), and iteration 2's log step logs iteration 1 too, once each."""
    from mlflow import MlflowClient

    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}").search_experiments()  # the store exists
    lock = sqlite3.connect(runs_dir / "mlflow.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    azr = Azr("run", "--config", SMOKE_CONFIG, "--runs-dir", runs_dir, tmp=tmp_path / "tmp")
    try:
        wait_for(lambda: manifest_path(RunDir(runs_dir / "smoke").stage_file(2, "proposals.parquet")).exists(), azr,
                 "iteration 2")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    out, err = azr.communicate(timeout=RUN_LIMIT)
    assert azr.process.returncode == 0, err
    assert "MLflow tracking store" in err and "the run goes on" in err, err
    client, logged = mlflow_run(runs_dir)
    assert logged.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "iteration")] == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(logged.info.run_id, "train/loss")) == [1, 2]
    assert logged.data.params["model.name_or_path"] == "tiny-random"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_mlflow_server_that_does_not_answer_costs_seconds_and_gets_the_metrics_when_it_does(smoke_run, tmp_path):
    """The tracking steps of a finished run against a server that is down: each gives up quickly, with a
    warning; once a real `mlflow server` answers there, the next log step logs every iteration."""
    from mlflow import MlflowClient

    from azr import tracking
    from azr.config import load_config
    from flows.prefect_env import TRACKING_DEFAULTS

    for key, value in TRACKING_DEFAULTS.items():
        os.environ.setdefault(key, value)
    root = tmp_path / "runs" / "smoke"
    shutil.copytree(smoke_run[1], root, ignore=shutil.ignore_patterns("mlflow_run_id"))
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    base = load_config(root / "config.yaml")
    config = base.model_copy(update={"tracking": base.tracking.model_copy(update={"mlflow_tracking_uri": uri})})
    run = RunDir(root)

    started = time.monotonic()
    assert tracking.start_run(config, run) is None
    assert tracking.log_iteration(config, run, 1) == {}
    tracking.end_run(config, run, "FINISHED")
    assert time.monotonic() - started < 120  # MLflow's own retries alone took about four minutes per call

    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        client = MlflowClient(tracking_uri=uri)
        deadline = time.monotonic() + 120
        while True:
            try:
                client.search_experiments()
                break
            except Exception:
                assert time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(1)
        assert tracking.log_iteration(config, run, 2)["proposals/count"] > 0
        tracking.end_run(config, run, "FINISHED")
        run_id = (root / "mlflow_run_id").read_text().strip()
        assert [m.step for m in client.get_metric_history(run_id, "iteration")] == [1, 2]
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


# ---------------------------------------------------------------------------------------------- damaged files


def test_resume_names_damaged_files_and_recomputes_their_stages(smoke_run, tmp_path):
    """A run stopped before iteration 2's update, then damaged: rewards.parquet of iteration 2 truncated,
    the weights of iteration 1's checkpoint changed (still a loadable file), a manifest overwritten with
    garbage. `azr resume` names each, recomputes those stages, and trains on nothing damaged: the weights
    and rows come out as an uninterrupted run's."""
    reference = RunDir(smoke_run[1])
    root = tmp_path / "runs" / "smoke"
    shutil.copytree(reference.root, root, ignore=shutil.ignore_patterns("mlflow_run_id"))
    run = RunDir(root)
    for path in (run.stage_file(2, "train.json"), BUFFER.output(run, 2), EVALUATE.output(run, 2)):  # stopped before train(2)
        path.unlink()
        manifest_path(path).unlink()
    shutil.rmtree(run.checkpoint_dir(2))

    rewards = run.stage_file(2, "rewards.parquet")
    rewards.write_bytes(rewards.read_bytes()[: rewards.stat().st_size // 2])
    weights = run.checkpoint_dir(1) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:-4092] = bytes(b ^ 0x40 for b in data[-4096:-4092])  # in the tensors, past the header
    weights.write_bytes(bytes(data))
    manifest_path(run.stage_file(2, "tasks.parquet")).write_text("{ not json")

    result = run_azr("resume", root, timeout=RUN_LIMIT)
    assert result.returncode == 0, f"azr resume failed:\n{result.stdout}\n{result.stderr}"
    err = " ".join(result.stderr.split())
    for named in ("iter-0002/rewards.parquet: its contents do not match its manifest",
                  "iter-0001/checkpoint: model.safetensors do not match",  # checkpoint.json, or policy.json
                  "iter-0002/tasks.parquet: its manifest is unreadable"):
        assert named in err, result.stderr
    assert_same_rows(run, reference)
    assert file_sha256(run.checkpoint_dir(2) / "model.safetensors") == file_sha256(reference.checkpoint_dir(2) / "model.safetensors")


# ---------------------------------------------------------------------------------------------- Docker daemon


def dockerd_pid() -> int | None:
    found = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def start_dockerd() -> None:
    """Start dockerd the way containers/setup-docker.sh does, and wait until it answers."""
    with open("/tmp/dockerd.log", "ab") as log:
        subprocess.Popen(["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs"],
                         stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 120
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "dockerd did not come back within 120 s (see /tmp/dockerd.log)"
        time.sleep(0.5)


@pytest.mark.docker
def test_the_docker_daemon_restarted_during_validate_costs_the_run_nothing(smoke_run, tmp_path):
    """dockerd is stopped (SIGTERM, as `systemctl stop` does) while the validate stage of iteration 1 runs its
    containers (or is still starting them), and started again a few seconds later. The stage waits for the
    daemon and starts or replaces its containers; the run ends with the rows of an uninterrupted one. (This stops every container on the
    machine for a few seconds: it runs once, as root, in CI.)"""
    from tests.test_sandbox import docker_problem
    from azr.config import ExecutorConfig

    if os.geteuid() != 0 or dockerd_pid() is None:
        pytest.skip("needs root and a dockerd started on this machine (containers/setup-docker.sh)")
    if docker_problem(ExecutorConfig()):
        pytest.skip(f"docker backend unavailable: {docker_problem(ExecutorConfig())}")
    runs_dir = tmp_path / "runs"
    run = RunDir(runs_dir / "smoke")
    azr = Azr("run", "--config", SMOKE_CONFIG, "--runs-dir", runs_dir, "--set", "executor.backend=docker", tmp=tmp_path / "tmp")
    try:
        proposals = manifest_path(run.stage_file(1, "proposals.parquet"))  # validate starts next
        wait_for(lambda: proposals.exists() and any("container" in item for item in azr.leftovers()), azr,
                 "the validate stage's containers", every=0.2)
        pid = dockerd_pid()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)
    finally:
        if dockerd_pid() is None:
            start_dockerd()
    out, err = azr.communicate(timeout=RUN_LIMIT)
    assert azr.process.returncode == 0, err
    # The stage saw the outage: in the middle of its batch, or while its pool was starting.
    assert any(seen in err for seen in ("Docker daemon does not answer", "replacing it", "starting a worker")), err
    assert_same_rows(run, RunDir(smoke_run[1]))
    azr.assert_nothing_left()
