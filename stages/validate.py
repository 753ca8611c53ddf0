"""Validate: run every parsed proposal in the sandbox, accept or reject it, top up from the buffer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from azr import schemas, task_types
from azr.artifacts import RunDir, read_rows, read_table
from azr.config import AZRConfig
from azr.data_construction import quality_reason, topup_candidates
from azr.dedup import TaskIndex
from azr.model import load_tokenizer
from azr.meter import Meter
from azr.pipeline import VALIDATE, run_stage
from azr.prompts import fits_prompt
from azr.task_types import distinct_inputs
from azr.rewards import complexity
from azr.sandbox import open_sandbox


def _inputs(row: dict) -> tuple[list[str] | None, str | None]:
    """(inputs, ground-truth reason to reject them) of a proposal; see `TaskType.check_inputs`."""
    kind = task_types.get(row["task_type"])
    texts = kind.proposal_inputs(row["input"], row["inputs"])
    if not row["parsed"] or texts is None:
        return texts, None
    return kind.check_inputs(list(texts))


def _judge(row: dict, inputs: tuple[list[str] | None, str | None], result, index: TaskIndex, config: AZRConfig,
           forced: bool, rng: np.random.Generator) -> dict:
    """One proposal's tasks.parquet row: ground truth (literal inputs, the sandbox), then the quality checks.

    An accepted task outside force acceptance joins `index`, so a copy later in the batch is a duplicate."""
    task = schemas.row(schemas.TASKS, {
        "run": row["run"], "iteration": row["iteration"], "task_id": row["task_id"], "task_type": row["task_type"],
        "source": "proposed", "accepted": False, "forced": False, "reason": None,
        "program": row["program"], "input": row["input"], "output": None,
        "inputs": inputs[0],
        "outputs": None, "message": row["message"], "shown": None, "complexity": None,
        "validate_seconds": result.seconds if result else 0.0,
    })
    if not row["parsed"]:
        return {**task, "reason": row["parse_reason"] or "unparsed"}
    if inputs[1] is not None:
        return {**task, "reason": inputs[1]}
    if result.status != "ok":
        return {**task, "reason": result.status}
    task.update(program=result.program, outputs=list(result.outputs), output=result.outputs[0],
                complexity=complexity(result.program))
    task["shown"] = task_types.get(row["task_type"]).shown_pairs(len(task["inputs"]), rng)
    reason = None if forced else quality_reason(task, index, config)
    if reason is None and not forced:
        index.add(task)
    return {**task, "accepted": reason is None, "forced": forced, "reason": reason}


def solver_prompt_fits(config: AZRConfig) -> Callable[[dict], bool]:
    """Whether a task's solver prompt fits `sampling.max_prompt_tokens` (with the policy's tokenizer)."""
    tokenizer = load_tokenizer(config.model)
    mode, limit = config.generation.answer_format, config.sampling.max_prompt_tokens
    return lambda task: fits_prompt(tokenizer, task_types.get(task["task_type"]).solver_prompt(task, mode), limit)


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
        pool = topup_candidates(buffer, task_type)
        if pool.empty:  # no buffer task can be posed as this type (too few pairs): the first type that can
            task_type = next(t for t in config.task_types if not topup_candidates(buffer, t).empty)
            pool = topup_candidates(buffer, task_type)
        task = pool.iloc[int(rng.integers(len(pool)))]
        pairs = distinct_inputs(list(task["inputs"]))  # shown and hidden pairs have distinct inputs
        rows.append(schemas.row(schemas.TASKS, {
            "run": run, "iteration": iteration, "task_id": f"i{iteration:04d}-b{index:03d}", "task_type": task_type,
            "source": "buffer", "accepted": True, "forced": False, "reason": None,
            "program": task["program"], "input": task["input"], "output": task["output"],
            "inputs": [task["inputs"][i] for i in pairs], "outputs": [task["outputs"][i] for i in pairs], "message": task["message"],
            "shown": task_types.get(task_type).shown_pairs(len(pairs), rng),
            "complexity": complexity(task["program"]), "validate_seconds": 0.0,
        }))
    return rows


def validate(config: AZRConfig, run_dir: RunDir, iteration: int) -> Path:
    """Write ``iter-N/tasks.parquet``: every proposal judged, plus buffer top-ups to fill the batch."""
    inputs = VALIDATE.inputs(run_dir, iteration)
    return run_stage(VALIDATE, config, run_dir, iteration, inputs, lambda: _tasks(config, run_dir, iteration, *inputs))


def _tasks(config: AZRConfig, run_dir: RunDir, iteration: int, proposals_path: Path, buffer_path: Path) -> pd.DataFrame:
    proposals = read_rows(proposals_path)
    buffer = read_table(buffer_path)
    forced = config.is_forced(iteration)
    rng = VALIDATE.rng(config, iteration)

    inputs = {row["task_id"]: _inputs(row) for row in proposals}
    runnable = [row for row in proposals if row["parsed"] and inputs[row["task_id"]][1] is None]
    meter = Meter(VALIDATE.name, iteration, len(runnable), "programs")
    with open_sandbox(config.executor) as sandbox:
        results = sandbox.validate([(row["program"], inputs[row["task_id"]][0]) for row in runnable])
    meter.advance(done=len(results))
    meter.finish()
    by_id = {row["task_id"]: result for row, result in zip(runnable, results)}
    index = TaskIndex(buffer.to_dict("records"))
    rows = [_judge(row, inputs[row["task_id"]], by_id.get(row["task_id"]), index, config, forced, rng) for row in proposals]
    fits = solver_prompt_fits(config)
    rows = [_fits_solver(row, fits) for row in rows]
    accepted = pd.DataFrame([r for r in rows if r["accepted"]])
    rows += _topups(buffer, accepted, config, iteration, run_dir.name, rng)
    return pd.DataFrame(rows)
