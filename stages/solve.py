"""Solve: n rollouts per accepted task, answers parsed and checked in the sandbox."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from azr import schemas
from azr.artifacts import RunDir, read_rows
from azr.config import AZRConfig
from azr.meter import Meter
from azr.pipeline import SOLVE, run_stage
from azr.sandbox import open_sandbox
from azr.solving import answer_problems
from stages.common import generation_columns, iteration_policy, policy_inputs


def solve(config: AZRConfig, run_dir: RunDir, iteration: int) -> Path:
    """Write ``iter-N/solutions.parquet``: ``rewards.n_samples`` rollouts for every accepted task."""
    inputs = [*SOLVE.inputs(run_dir, iteration), *policy_inputs(run_dir, iteration)]
    return run_stage(SOLVE, config, run_dir, iteration, inputs, lambda: _solutions(config, run_dir, iteration, inputs[0]))


def _solutions(config: AZRConfig, run_dir: RunDir, iteration: int, tasks_path: Path) -> pd.DataFrame:
    started = time.perf_counter()
    accepted = [task for task in read_rows(tasks_path) if task["accepted"]]
    if not accepted:
        raise ValueError(f"{tasks_path}: no accepted task to solve (the buffer top-up should prevent this)")
    meter = Meter(SOLVE.name, iteration, len(accepted) * config.rewards.n_samples, "fields")
    with open_sandbox(config.executor) as sandbox:
        answers = answer_problems(config, iteration_policy(config, run_dir, iteration), sandbox, accepted,
                                  samples=config.rewards.n_samples, sampling=config.sampling,
                                  seed=SOLVE.seed(config, iteration), strict=not config.is_forced(iteration),
                                  progress=meter.generation_callback())
    meter.finish()
    seconds = time.perf_counter() - started
    rows = [
        schemas.row(schemas.SOLUTIONS, {
            "run": run_dir.name, "iteration": iteration, "task_id": a.problem["task_id"], "task_type": a.problem["task_type"],
            "sample": a.sample, **generation_columns(a.prompt, a.generation),
            **{k: a.score[k] for k in ("parsed", "parse_reason", "answer", "correct", "check_status")},
            "solve_seconds": seconds / len(answers),
        })
        for a in answers
    ]
    return pd.DataFrame(rows)
