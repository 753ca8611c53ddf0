"""Solve: n rollouts per accepted task, answers parsed and checked in the sandbox."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from azr import prompts, schemas
from azr.answers import score_responses
from azr.artifacts import RunDir, read_rows, stage_complete, write_table
from azr.config import AZRConfig
from azr.data_construction import solver_view
from azr.sandbox import open_sandbox
from azr.seeding import stage_seed
from azr.formats import solver_format
from stages.common import generate_batch, generation_columns, iteration_policy, policy_inputs


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
    n = config.rewards.n_samples
    rollouts = [(task, sample) for task in accepted for sample in range(n)]
    mode = config.generation.answer_format
    user_prompts = [prompts.solver_prompt(task["task_type"], solver_view(task), mode) for task, _ in rollouts]
    formats = [solver_format(config, task) for task, _ in rollouts]
    rendered, generations = generate_batch(config, iteration_policy(config, run_dir, iteration), user_prompts, formats,
                                           stage_seed(config.seed, iteration, "solve"))
    with open_sandbox(config.executor) as sandbox:
        scores = score_responses(sandbox, [t for t, _ in rollouts], [g.text for g in generations],
                                 strict=not config.is_forced(iteration))
    seconds = time.perf_counter() - started
    rows = [
        {
            "run": run_dir.name, "iteration": iteration, "task_id": task["task_id"], "task_type": task["task_type"],
            "sample": sample, **generation_columns(prompt, gen),
            **{k: score[k] for k in ("parsed", "parse_reason", "answer", "correct", "check_status")},
            "solve_seconds": seconds / len(rollouts),
        }
        for (task, sample), prompt, gen, score in zip(rollouts, rendered, generations, scores)
    ]
    return write_table(pd.DataFrame(rows), out, inputs=inputs, schema=schemas.SOLUTIONS, config_hash=config.config_hash(), seconds=seconds)
