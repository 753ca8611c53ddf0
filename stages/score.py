"""Score: every reward component for proposers and solvers, the totals, and TRR++ advantages."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from azr import schemas
from azr.artifacts import RunDir, read_rows, read_table
from azr.config import AZRConfig
from azr.pipeline import SCORE, run_stage
from azr import rewards

TOKEN_COLUMNS = ["prompt_ids", "response_ids", "response_mask", "logprobs"]  # what the update trains on


def _solver_rows(solutions: list[dict], forced: bool, config: AZRConfig) -> list[dict]:
    rows = []
    for s in solutions:
        well_formed = rewards.well_formed(s["parsed"], s["check_status"])  # not a literal: a format error
        correctness, fmt = rewards.solver_reward(s["correct"], well_formed, forced, config.rewards)
        rows.append(schemas.row(schemas.REWARDS, {
            "run": s["run"], "iteration": s["iteration"], "task_id": s["task_id"], "task_type": s["task_type"],
            "role": "solve", "sample": s["sample"], **{c: s[c] for c in TOKEN_COLUMNS},
            "valid": True, "solve_rate": None, "learnability": 0.0, "diversity": 0.0, "complexity": 0.0,
            "format": fmt, "correctness": correctness, "reward": correctness + fmt,
        }, later=("advantage",)))
    return rows


def _proposer_rows(proposals: list[dict], tasks: dict[str, dict], solve_rates: dict[str, float],
                   buffer: pd.DataFrame, forced: bool, config: AZRConfig) -> list[dict]:
    programs_by_id = dict(zip(buffer["task_id"], buffer["program"]))
    output_types = Counter(rewards.value_type(o) for o in buffer["output"])
    rows = []
    for p in proposals:
        task = tasks[p["task_id"]]
        valid = bool(task["accepted"])
        rate = solve_rates.get(p["task_id"], 0.0)
        references = [programs_by_id[r] for r in p["reference_ids"] if r in programs_by_id]
        div = rewards.diversity(task["program"], task["output"], references, output_types) if valid else 0.0
        comp = task["complexity"] if valid else 0.0
        learn = rewards.learnability(rate, config.rewards.learnability_at_extremes) if valid else 0.0
        rows.append(schemas.row(schemas.REWARDS, {
            "run": p["run"], "iteration": p["iteration"], "task_id": p["task_id"], "task_type": p["task_type"],
            "role": "propose", "sample": 0, **{c: p[c] for c in TOKEN_COLUMNS},
            "valid": valid, "solve_rate": rate if valid else None, "learnability": learn, "diversity": div,
            "complexity": comp, "format": 0.0, "correctness": 0.0,
            "reward": rewards.proposer_reward(valid, rate, div, comp, config.rewards, task["reason"], forced),
        }, later=("advantage",)))
    return rows


def score(config: AZRConfig, run_dir: RunDir, iteration: int) -> Path:
    """Write ``iter-N/rewards.parquet``: one row per trainable sample, every component in its own column."""
    inputs = SCORE.inputs(run_dir, iteration)
    return run_stage(SCORE, config, run_dir, iteration, inputs, lambda: _rewards(config, iteration, inputs))


def _rewards(config: AZRConfig, iteration: int, inputs: list[Path]) -> pd.DataFrame:
    proposals, tasks, solutions = (read_rows(p) for p in inputs[:3])
    buffer = read_table(inputs[3])
    solve_rates = pd.DataFrame(solutions).groupby("task_id")["correct"].mean().to_dict()
    forced = config.is_forced(iteration)
    rows = _proposer_rows(proposals, {t["task_id"]: t for t in tasks}, solve_rates, buffer, forced, config)
    rows += _solver_rows(solutions, forced, config)
    frame = pd.DataFrame(rows)
    frame["advantage"] = rewards.trr_advantages(frame, config.rewards.advantage_eps)
    return frame
