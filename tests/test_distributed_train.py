"""Training on torchrun ranks (azr/distributed.py, azr/torchrun.py, stages/train.py), with real gloo
ranks on loopback started by the train stage itself, against the same stage in one process.

Tolerance: the ranks add the same per-token terms in another order, so the weights are not
bitwise equal. Each weight after an update is within WEIGHT_ATOL = 1e-5 of the one-process weight:
1% of the step AdamW takes (learning rate 1e-3). AdamW divides each gradient entry by its own
magnitude, so an entry that is nearly 0 turns a float rounding difference into a visible one
(measured: 30 of 1.7M weights differ by more than 1e-6, the largest by 7e-6). The metrics (sums
over every token) agree to a relative 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from azr.artifacts import RunDir, read_table, write_table
from azr.checkpoint import load_policy, read_meta
from azr.config import AZRConfig, ConfigError, build_config, dump_config
from azr.distributed import Ranks
from azr.torchrun import RankFailed
from stages.train import train
from tests.conftest import ROOT, SMOKE_CONFIG, azr_command, azr_env, run_azr
from tests.test_train import smoke_config, write_rewards

WEIGHT_ATOL = 1e-5
METRIC_RTOL = 1e-5
SUMMED_METRICS = ("loss", "pg_loss", "entropy", "clip_fraction", "grad_norm", "learning_rate")


def distributed_config(lora: bool = False, **distributed) -> AZRConfig:
    config = smoke_config()  # 5 samples in micro-batches of 2: the ranks get 3 and 2, in 2 and 1 passes
    config.model.lora.enabled = lora
    config.training.distributed = config.training.distributed.model_copy(update=distributed)
    return config


def train_iterations(config: AZRConfig, run_dir: RunDir, iterations=(1, 2)) -> RunDir:
    for iteration in iterations:
        write_rewards(run_dir, iteration)
        train(config, run_dir, iteration)
    return run_dir


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> RunDir:
    """Two iterations of the train stage in the test's own process: the reference."""
    return train_iterations(smoke_config(), RunDir(tmp_path_factory.mktemp("one") / "run"))


@pytest.fixture(scope="module")
def one_process_lora(tmp_path_factory) -> RunDir:
    """The same with fresh LoRA adapters at iteration 1 (drawn from the run's seed)."""
    return train_iterations(distributed_config(lora=True), RunDir(tmp_path_factory.mktemp("one-lora") / "run"))


def weights(run_dir: RunDir, iteration: int) -> dict[str, torch.Tensor]:
    """The trained weights (a LoRA checkpoint's merged into the base model)."""
    return load_policy(smoke_config().model, run_dir.checkpoint_dir(iteration))[0].state_dict()


def metrics(run_dir: RunDir, iteration: int) -> dict[str, float]:
    return json.loads(run_dir.stage_file(iteration, "train.json").read_text())


def assert_same_update(expected: RunDir, actual: RunDir, iteration: int) -> None:
    want, got = weights(expected, iteration), weights(actual, iteration)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=WEIGHT_ATOL, msg=name)
    want, got = metrics(expected, iteration), metrics(actual, iteration)
    assert (got["tokens"], got["samples"]) == (want["tokens"], want["samples"])
    for key in SUMMED_METRICS:
        assert got[key] == pytest.approx(want[key], rel=METRIC_RTOL), key


def file_hashes(run_dir: RunDir, iteration: int) -> dict[str, str]:
    return read_meta(run_dir.checkpoint_dir(iteration))["files"]


@pytest.mark.slow
def test_two_gloo_ranks_give_the_one_process_update_and_resume_exactly(one_process, tmp_path):
    config = distributed_config(nproc_per_node=2)
    run_dir = train_iterations(config, RunDir(tmp_path / "run"), iterations=(1,))
    # a crash in iteration 2's train stage, before its checkpoint: the run as iteration 1 left it
    shutil.copytree(run_dir.root, tmp_path / "crashed")
    train_iterations(config, run_dir, iterations=(2,))
    assert_same_update(one_process, run_dir, 1)
    assert_same_update(one_process, run_dir, 2)  # the optimizer state went through checkpoint 1

    uninterrupted, loss = file_hashes(run_dir, 2), metrics(run_dir, 2)["loss"]
    resumed = train_iterations(config, RunDir(tmp_path / "crashed"), iterations=(2,))  # iteration 2 runs again
    assert file_hashes(resumed, 2) == uninterrupted  # weights, optimizer, scheduler and RNG state, bitwise
    assert metrics(resumed, 2)["loss"] == loss
    assert not (resumed.stage_file(2, "train-ranks") / "launch.json").exists()


@pytest.mark.slow
def test_fsdp_ranks_give_the_one_process_update_and_save_its_checkpoint_format(one_process, tmp_path):
    run_dir = train_iterations(distributed_config(nproc_per_node=2, fsdp=True), RunDir(tmp_path / "run"))
    assert_same_update(one_process, run_dir, 1)
    assert_same_update(one_process, run_dir, 2)  # FSDP restored checkpoint 1's optimizer state into its shards

    # The gathered optimizer state is what one process saves: a plain AdamW loads it.
    want = torch.load(one_process.checkpoint_dir(2) / "optimizer.pt", weights_only=True)
    got = torch.load(run_dir.checkpoint_dir(2) / "optimizer.pt", weights_only=True)
    assert [g["params"] for g in got["param_groups"]] == [g["params"] for g in want["param_groups"]]
    assert got["state"].keys() == want["state"].keys()
    for index, state in want["state"].items():
        torch.testing.assert_close(got["state"][index]["exp_avg"], state["exp_avg"], rtol=1e-4, atol=1e-8)


@pytest.mark.slow
def test_fsdp_ranks_training_lora_adapters_give_the_one_process_update(one_process_lora, tmp_path):
    run_dir = train_iterations(distributed_config(lora=True, nproc_per_node=2, fsdp=True), RunDir(tmp_path / "run"))
    assert read_meta(run_dir.checkpoint_dir(2))["lora"] is True
    assert_same_update(one_process_lora, run_dir, 1)  # the same fresh adapters on every rank as in one process
    assert_same_update(one_process_lora, run_dir, 2)


@pytest.mark.slow
def test_a_killed_rank_fails_the_stage_naming_it_and_a_rerun_succeeds(one_process, tmp_path):
    run_dir, config = RunDir(tmp_path / "run"), distributed_config(nproc_per_node=2)
    write_rewards(run_dir, 1)
    killed: list[int] = []

    def kill_rank_1() -> None:
        """SIGKILL this test's rank-1 process as soon as it exists (it then takes seconds to start)."""
        deadline = time.monotonic() + 600
        while not killed and time.monotonic() < deadline:
            for process in psutil.Process().children(recursive=True):
                try:
                    if "stages.train_rank" in process.cmdline() and process.environ().get("RANK") == "1":
                        process.kill()
                        killed.append(process.pid)
                        return
                except psutil.Error:
                    continue
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank_1, daemon=True)
    killer.start()
    with pytest.raises(RankFailed) as failure:
        train(config, run_dir, 1)
    killer.join()
    message = str(failure.value)
    assert f"train rank 1 (local rank 1, pid {killed[0]}) was killed by SIGKILL" in message
    assert "torchrun then stopped rank(s) 0" in message
    assert not run_dir.stage_file(1, "train.json").exists()
    assert not run_dir.checkpoint_dir(1).exists()

    train(config, run_dir, 1)  # nothing the failed launch left behind gets in the way
    assert_same_update(one_process, run_dir, 1)


@pytest.mark.slow
def test_an_exception_on_a_rank_fails_the_stage_with_its_message(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    write_table(pd.DataFrame({"prompt_ids": [[1]], "response_ids": [[2]], "logprobs": [[-1.0]]}),
                run_dir.stage_file(1, "rewards.parquet"))
    with pytest.raises(RankFailed, match=r"train rank [01] \(local rank [01], pid \d+\) exited with code 1: "
                                         r"ValueError: .*rewards.parquet: missing column\(s\) .*advantage"):
        train(distributed_config(nproc_per_node=2), run_dir, 1)


@pytest.mark.slow
def test_two_nodes_meet_at_the_rendezvous_and_give_the_one_process_update(one_process, tmp_path):
    run_dir = RunDir(tmp_path / "run")
    write_rewards(run_dir, 1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = distributed_config(nnodes=2, rdzv_endpoint=f"127.0.0.1:{port}")
    node = subprocess.Popen(azr_command("train-node", run_dir.root, "--launches", "1"), cwd=ROOT, env=azr_env())
    try:
        train(config, run_dir, 1)
        assert node.wait(timeout=300) == 0
    finally:
        node.kill()
    assert_same_update(one_process, run_dir, 1)


def test_each_micro_batch_goes_to_one_rank_and_fsdp_ranks_run_as_many_passes():
    cpu = torch.device("cpu")
    batches = ["a", "b", "c"]  # the micro-batches one process would run
    assert [Ranks(r, 2, cpu).share(batches) for r in (0, 1)] == [["a", "c"], ["b"]]
    assert [Ranks(r, 2, cpu, fsdp=True).share(batches) for r in (0, 1)] == [["a", "c"], ["b", None]]
    assert Ranks(2, 3, cpu, fsdp=True).share(["a"]) == [None]  # no micro-batch left, still one pass


def test_distributed_config_is_checked_and_names_the_key():
    with pytest.raises(ConfigError, match="training.distributed.rdzv_endpoint: 'gpu-box' is not host:port"):
        build_config({"training": {"distributed": {"rdzv_endpoint": "gpu-box"}}})
    with pytest.raises(ConfigError, match="training.distributed.nproc_per_node: Input should be greater than 0"):
        build_config({"training": {"distributed": {"nproc_per_node": 0}}})
    config = build_config({"training": {"distributed": {"nproc_per_node": 4, "nnodes": 2}}})
    assert config.training.distributed.world_size == 8


def rank_processes(run_root: Path) -> list[psutil.Process]:
    """The train ranks of the run in `run_root` on this machine, whoever started them."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "stages.train_rank" in command and str(run_root) in command:
            found.append(process)
    return found


@pytest.mark.slow
def test_ranks_exit_when_the_process_running_the_stage_is_killed(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    write_rewards(run_dir, 1)
    config = tmp_path / "config.yaml"
    config.write_text(dump_config(distributed_config(nproc_per_node=2)))
    code = ("import sys; from azr.artifacts import RunDir; from azr.config import load_config; "
            "from stages.train import train; train(load_config(sys.argv[1]), RunDir(sys.argv[2]), 1)")
    stage = subprocess.Popen([sys.executable, "-c", code, str(config), str(run_dir.root)], cwd=ROOT, env=azr_env(),
                             start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while len(rank_processes(run_dir.root)) < 2:
            assert stage.poll() is None and time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.05)
    finally:
        os.killpg(stage.pid, signal.SIGKILL)  # the stage and torchrun's agent; the ranks have sessions of their own
        stage.wait()
    _, alive = psutil.wait_procs(rank_processes(run_dir.root), timeout=60)
    assert not alive, f"ranks outlived the stage: {[p.pid for p in alive]}"
    assert not run_dir.stage_file(1, "train.json").exists()


@pytest.mark.slow
def test_a_run_on_dask_and_two_ranks_completes_and_resumes_exactly(tmp_path):
    overrides = ("--set", "executor.backend=dask", "--set", "training.distributed.nproc_per_node=2",
                 "--set", "eval.every=0")  # evaluation is not what this is about; it only adds minutes
    result = run_azr("run", "--config", SMOKE_CONFIG, "--runs-dir", tmp_path / "whole", *overrides, timeout=3600)
    assert result.returncode == 0, f"azr run failed:\n{result.stdout}\n{result.stderr}"
    reference = RunDir(tmp_path / "whole" / "smoke")

    # The same run, killed (its whole process group) while iteration 2's ranks start, then resumed.
    runs_dir = tmp_path / "killed"
    process = subprocess.Popen(azr_command("run", "--config", SMOKE_CONFIG, "--runs-dir", runs_dir, *overrides),
                               cwd=ROOT, env=azr_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    run = RunDir(runs_dir / "smoke")
    deadline = time.monotonic() + 3600
    try:
        while not [p for p in rank_processes(run.root) if p.info["cmdline"][-1] == "2"]:
            assert process.poll() is None, f"azr run ended before training iteration 2:\n{process.stderr.read()}"
            assert time.monotonic() < deadline, "iteration 2 never started training"
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # torchrun starts ranks in sessions of their own: they notice their agent is gone and exit.
    _, alive = psutil.wait_procs(rank_processes(run.root), timeout=60)
    assert not alive, f"ranks outlived the killed run: {[p.pid for p in alive]}"
    assert not run.stage_file(2, "train.json").exists() and run.stage_file(1, "train.json").exists()

    result = run_azr("resume", run.root, timeout=3600)
    assert result.returncode == 0, f"azr resume failed:\n{result.stdout}\n{result.stderr}"
    for iteration in (1, 2):
        assert file_hashes(run, iteration) == file_hashes(reference, iteration)  # weights, optimizer, RNG: bitwise
        assert metrics(run, iteration)["loss"] == metrics(reference, iteration)["loss"]
        for name in ("tasks.parquet", "rewards.parquet"):
            pd.testing.assert_frame_equal(
                read_table(run.stage_file(iteration, name)).filter(regex="^(?!.*_seconds$)"),
                read_table(reference.stage_file(iteration, name)).filter(regex="^(?!.*_seconds$)"),
                check_exact=True, obj=f"iter-{iteration:04d}/{name}")
