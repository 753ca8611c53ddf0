"""Solve: n rollouts per accepted task, answers parsed and checked in the sandbox."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from azr import prompts
from azr import schemas
from azr.artifacts import RunDir, read_rows, stage_complete, write_table
from azr.config import AZRConfig
from azr.data_construction import hidden_pairs, solver_view
from azr.parsing import parse_answer
from azr.sandbox import CheckResult, open_sandbox
from azr.seeding import stage_seed
from stages.common import generate_batch, generation_columns, policy_inputs


def _check_all(sandbox, tasks: list[dict], answers: list[str | None]) -> list[CheckResult | None]:
    """Check every parsed answer in the sandbox, batched by task type; None where nothing parsed."""
    results: list[CheckResult | None] = [None] * len(tasks)
    batches: dict[str, list[tuple[int, tuple]]] = {"deduction": [], "abduction": [], "induction": []}
    for i, (task, answer) in enumerate(zip(tasks, answers)):
        if answer is None:
            continue
        if task["task_type"] == "deduction":
            batches["deduction"].append((i, (task["output"], answer)))
        elif task["task_type"] == "abduction":
            batches["abduction"].append((i, (task["program"], answer, task["output"])))
        else:
            batches["induction"].append((i, (answer, *hidden_pairs(task))))
    checkers = {"deduction": sandbox.check_deduction, "abduction": sandbox.check_abduction,
                "induction": sandbox.check_induction}
    for task_type, batch in batches.items():
        if batch:
            for (i, _), result in zip(batch, checkers[task_type]([item for _, item in batch])):
                results[i] = result
    return results


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
    user_prompts = [prompts.solver_prompt(task["task_type"], solver_view(task)) for task, _ in rollouts]
    rendered, generations = generate_batch(config, run_dir, iteration, user_prompts,
                                           stage_seed(config.seed, iteration, "solve"))
    strict = not config.is_forced(iteration)
    parsed = [parse_answer(task["task_type"], g.text, strict=strict) for (task, _), g in zip(rollouts, generations)]
    with open_sandbox(config.executor) as sandbox:
        checks = _check_all(sandbox, [t for t, _ in rollouts], [p.answer if p.ok else None for p in parsed])
    seconds = time.perf_counter() - started
    rows = [
        {
            "run": run_dir.name, "iteration": iteration, "task_id": task["task_id"], "task_type": task["task_type"],
            "sample": sample, **generation_columns(prompt, gen), "parsed": p.ok, "parse_reason": p.reason,
            "answer": p.answer, "correct": bool(check and check.correct),
            "check_status": check.status if check else "unparsed",
            "solve_seconds": seconds / len(rollouts),
        }
        for (task, sample), prompt, gen, p, check in zip(rollouts, rendered, generations, parsed, checks)
    ]
    return write_table(pd.DataFrame(rows), out, inputs=inputs, schema=schemas.SOLUTIONS, config_hash=config.config_hash(), seconds=seconds)
