"""Solve: n rollouts per accepted task, answers parsed and checked in the sandbox."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from azr import schemas
from azr.artifacts import RunDir, read_rows, stage_complete, write_table
from azr.config import AZRConfig
from azr.sandbox import open_sandbox
from azr.seeding import stage_seed
from azr.solving import answer_problems
from stages.common import generation_columns, iteration_policy, policy_inputs


def solve(config: AZRConfig, run_dir: RunDir, iteration: int) -> Path:
    """Write ``iter-N/solutions.parquet``: ``rewards.n_samples`` rollouts for every accepted task."""
    tasks_path = run_dir.stage_file(iteration, "tasks.parquet")
    out = run_dir.stage_file(iteration, "solutions.parquet")
    inputs = [tasks_path, *policy_inputs(run_dir, iteration)]
    if stage_complete([out], inputs, config.config_hash()):
        return out
    started = time.perf_counter()
    accepted = [task for task in read_rows(tasks_path) if task["accepted"]]
    if not accepted:
        raise ValueError(f"{tasks_path}: no accepted task to solve (the buffer top-up should prevent this)")
    with open_sandbox(config.executor) as sandbox:
        answers = answer_problems(config, iteration_policy(config, run_dir, iteration), sandbox, accepted,
                                  samples=config.rewards.n_samples, sampling=config.sampling,
                                  seed=stage_seed(config.seed, iteration, "solve"), strict=not config.is_forced(iteration))
    seconds = time.perf_counter() - started
    rows = [
        {
            "run": run_dir.name, "iteration": iteration, "task_id": a.problem["task_id"], "task_type": a.problem["task_type"],
            "sample": a.sample, **generation_columns(a.prompt, a.generation),
            **{k: a.score[k] for k in ("parsed", "parse_reason", "answer", "correct", "check_status")},
            "solve_seconds": seconds / len(answers),
        }
        for a in answers
    ]
    return write_table(pd.DataFrame(rows), out, inputs=inputs, schema=schemas.SOLUTIONS, config_hash=config.config_hash(), seconds=seconds)
