"""Validate: run every parsed proposal in the sandbox, accept or reject it, top up from the buffer."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from azr import schemas
from azr.artifacts import RunDir, read_rows, read_table, stage_complete, write_table
from azr.config import AZRConfig
from azr.data_construction import quality_reason, solver_view, split_induction, topup_candidates
from azr.model import load_tokenizer
from azr.prompts import fits_prompt, solver_prompt
from azr.rewards import complexity
from azr.sandbox import open_sandbox
from azr.seeding import stage_rng


def _proposal_inputs(row: dict) -> list[str] | None:
    if row["task_type"] == "induction":
        return row["inputs"]
    return [row["input"]] if row["input"] is not None else None


def _judge(row: dict, result, buffer_programs: list[str], config: AZRConfig, forced: bool, rng: np.random.Generator) -> dict:
    """One proposal's tasks.parquet row: ground truth from the sandbox, then the quality checks."""
    task = {
        "run": row["run"], "iteration": row["iteration"], "task_id": row["task_id"], "task_type": row["task_type"],
        "source": "proposed", "accepted": False, "forced": False, "reason": None,
        "program": row["program"], "input": row["input"], "output": None, "inputs": _proposal_inputs(row),
        "outputs": None, "message": row["message"], "shown": None, "complexity": None,
        "validate_seconds": result.seconds if result else 0.0,
    }
    if not row["parsed"]:
        return {**task, "reason": row["parse_reason"] or "unparsed"}
    if result.status != "ok":
        return {**task, "reason": result.status}
    task.update(program=result.program, outputs=list(result.outputs), output=result.outputs[0],
                complexity=complexity(result.program))
    if row["task_type"] == "induction":
        task["shown"] = split_induction(len(task["inputs"]), rng)
    reason = None if forced else quality_reason(task, buffer_programs, config)
    return {**task, "accepted": reason is None, "forced": forced, "reason": reason}


def solver_prompt_fits(config: AZRConfig) -> Callable[[dict], bool]:
    """Whether a task's solver prompt fits `sampling.max_prompt_tokens` (with the policy's tokenizer)."""
    tokenizer = load_tokenizer(config.model)
    mode, limit = config.generation.answer_format, config.sampling.max_prompt_tokens
    return lambda task: fits_prompt(tokenizer, solver_prompt(task["task_type"], solver_view(task), mode), limit)


def _fits_solver(task: dict, fits: Callable[[dict], bool]) -> dict:
    """An accepted task whose solver prompt is longer than sampling.max_prompt_tokens is rejected:
    the solver could not be shown it (whatever force acceptance waives)."""
    if task["accepted"] and not fits(task):
        return {**task, "accepted": False, "forced": False, "reason": "prompt_too_long"}
    return task


def _topups(buffer: pd.DataFrame, accepted: pd.DataFrame, config: AZRConfig, iteration: int, run: str, rng: np.random.Generator) -> list[dict]:
    """Buffer tasks that fill the solve batch up to ``tasks_per_iteration``."""
    needed = config.tasks_per_iteration - len(accepted)
    rows = []
    for index in range(max(0, needed)):
        task_type = str(rng.choice(config.task_types, p=config.task_distribution))
        pool = topup_candidates(buffer, task_type, min_pairs=2)
        if pool.empty:  # no buffer task has enough pairs for induction; pose a deduction instead
            task_type, pool = "deduction", buffer
        task = pool.iloc[int(rng.integers(len(pool)))]
        rows.append({
            "run": run, "iteration": iteration, "task_id": f"i{iteration:04d}-b{index:03d}", "task_type": task_type,
            "source": "buffer", "accepted": True, "forced": False, "reason": None,
            "program": task["program"], "input": task["input"], "output": task["output"],
            "inputs": list(task["inputs"]), "outputs": list(task["outputs"]), "message": task["message"],
            "shown": split_induction(len(task["inputs"]), rng) if task_type == "induction" else None,
            "complexity": complexity(task["program"]), "validate_seconds": 0.0,
        })
    return rows


def validate(config: AZRConfig, run_dir: RunDir, iteration: int) -> Path:
    """Write ``iter-N/tasks.parquet``: every proposal judged, plus buffer top-ups to fill the batch."""
    proposals_path = run_dir.stage_file(iteration, "proposals.parquet")
    buffer_path = run_dir.buffer_path(iteration - 1)
    out = run_dir.stage_file(iteration, "tasks.parquet")
    if stage_complete([out], [proposals_path, buffer_path], config.config_hash()):
        return out
    started = time.perf_counter()
    proposals = read_rows(proposals_path)
    buffer = read_table(buffer_path)
    forced = config.is_forced(iteration)
    rng = stage_rng(config.seed, iteration, "validate")

    runnable = [row for row in proposals if row["parsed"]]
    with open_sandbox(config.executor) as sandbox:
        results = sandbox.validate([(row["program"], _proposal_inputs(row)) for row in runnable])
    by_id = {row["task_id"]: result for row, result in zip(runnable, results)}
    buffer_programs = list(buffer["program"])
    rows = [_judge(row, by_id.get(row["task_id"]), buffer_programs, config, forced, rng) for row in proposals]
    fits = solver_prompt_fits(config)
    rows = [_fits_solver(row, fits) for row in rows]
    accepted = pd.DataFrame([r for r in rows if r["accepted"]])
    rows += _topups(buffer, accepted, config, iteration, run_dir.name, rng)
    return write_table(pd.DataFrame(rows), out, inputs=[proposals_path, buffer_path],
                       schema=schemas.TASKS, config_hash=config.config_hash(), seconds=time.perf_counter() - started)
