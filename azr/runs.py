"""Reading run directories: where a run stands, its per-iteration metrics, its tasks.

Pure reading helpers behind `azr runs`, `azr tasks`, the progress display of `azr run` and the
MLflow metrics (azr.tracking). Nothing here writes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from azr.artifacts import ArtifactError, RunDir, manifest_path, read_json, read_manifest, read_rows, read_table
from azr import task_types as registry
from azr.config import ConfigError, load_config
from azr.parsing import REASONS as PARSE_REASONS
from azr.rewards import QUALITY_REASONS
from azr.sandbox.runner import STATUSES as SANDBOX_STATUSES
from azr.pipeline import ITERATION_STEPS, PROPOSE, SCORE, SOLVE, STAGE, TRAIN, VALIDATE, Stage

STEPS: tuple[str, ...] = ITERATION_STEPS  # the steps of every iteration, in order (azr/pipeline.py)
REWARD_COMPONENTS = ("reward", "learnability", "diversity", "complexity", "format", "correctness", "advantage")
NONZERO_ADVANTAGE = 1e-6
REWARD_ROLES = ("propose", "solve")
# train.json numbers logged every iteration; one a step did not report (kl without a KL term, every
# one when training is off) is logged as 0, so each chart has a point per iteration.
TRAIN_METRICS = ("loss", "pg_loss", "entropy", "kl", "clip_fraction", "grad_norm", "tokens_per_second", "peak_memory_mb")
# Why validate rejects a proposal: its parse reason, its sandbox status, or a quality check.
REJECTION_REASONS = (
    *(r for r in PARSE_REASONS if r != "no_answer"),  # no_answer is the solver's
    *sorted(SANDBOX_STATUSES - {"ok"}),
    "repeated_inputs",  # too few distinct inputs of a task made of pairs (TaskType.check_inputs)
    *QUALITY_REASONS,
)
TASK_STATUSES = ("accepted", "rejected", "forced")
KEY_METRICS = ("tasks/valid_rate", "solve_rate/all", "reward/solve/reward", "train/loss")


def step_output(run: RunDir, iteration: int, step: str) -> Path:
    """The file whose manifest marks ``step`` of ``iteration`` as done."""
    return STAGE[step].output(run, iteration)


def step_done(run: RunDir, iteration: int, step: str) -> bool:
    return manifest_path(step_output(run, iteration, step)).exists()


def iterations_done(run: RunDir) -> int:
    """How many iterations, counted from 1, have every step done."""
    n = 0
    while all(step_done(run, n + 1, step) for step in STEPS):
        n += 1
    return n


def position(run: RunDir, num_iterations: int) -> tuple[int, str] | None:
    """The first (iteration, step) not done yet; None when all ``num_iterations`` are done."""
    for iteration in range(iterations_done(run) + 1, num_iterations + 1):
        for step in STEPS:
            if not step_done(run, iteration, step):
                return iteration, step
    return None


def _manifest_rows(path: Path) -> tuple[int, float]:
    try:
        manifest = read_manifest(path)
    except ArtifactError:
        return 0, 0.0
    return int(manifest.get("rows") or 0), float(manifest.get("seconds") or 0.0)


@dataclass
class Progress:
    """Counts for a progress display: generated samples so far and the latest step's rate."""

    iterations_done: int
    current: tuple[int, str] | None
    samples: int = 0
    last_step: str | None = None
    last_rate: float | None = None  # rows per second of the latest finished generating step


def progress(run: RunDir, num_iterations: int) -> Progress:
    """Where a (possibly running) run stands, from its manifests only."""
    result = Progress(iterations_done(run), position(run, num_iterations))
    for iteration in run.iterations():
        for step in (PROPOSE, SOLVE):  # the generating steps
            rows, seconds = _manifest_rows(step.output(run, iteration))
            if rows:
                result.samples += rows
                result.last_step = f"{step.name} {iteration}"
                result.last_rate = rows / seconds if seconds > 0 else None
    return result


def _metric_key(text: str) -> str:
    """A reason or type as an MLflow-safe metric name part."""
    return re.sub(r"[^\w\-. /]", "_", str(text))[:60] or "unknown"


def _mean(series: pd.Series) -> float | None:
    value = pd.to_numeric(series, errors="coerce").mean()
    return None if pd.isna(value) else float(value)


def _proposal_metrics(frame: pd.DataFrame, task_types: tuple[str, ...]) -> dict[str, float]:
    metrics = {"proposals/count": len(frame), "proposals/parsed": int(frame["parsed"].sum())}
    metrics |= {f"proposals/{t}": 0 for t in task_types}
    for task_type, count in frame["task_type"].value_counts().items():
        metrics[f"proposals/{_metric_key(task_type)}"] = int(count)
    return metrics


def ground_truth_valid(tasks: pd.DataFrame) -> pd.Series:
    """Proposals that passed the ground-truth checks: accepted, or rejected only by a quality check."""
    return tasks["accepted"] | tasks["reason"].isin(QUALITY_REASONS)


def _task_metrics(frame: pd.DataFrame, task_types: tuple[str, ...]) -> dict[str, float]:
    proposed = frame[frame["source"] == "proposed"]
    accepted = int(proposed["accepted"].sum())
    valid = ground_truth_valid(proposed)
    metrics = {
        "tasks/accepted": accepted,
        "tasks/rejected": len(proposed) - accepted,
        "tasks/forced": int(proposed["forced"].sum()),
        "tasks/from_buffer": int((frame["source"] == "buffer").sum()),
        "tasks/valid_rate": float(valid.mean()) if len(proposed) else 0.0,
        "tasks/accepted_rate": accepted / len(proposed) if len(proposed) else 0.0,
    }
    for task_type, rate in valid.groupby(proposed["task_type"]).mean().items():
        metrics[f"tasks/valid_rate/{_metric_key(task_type)}"] = float(rate)
    metrics |= {f"tasks/rejected/{reason}": 0 for reason in REJECTION_REASONS}
    for reason, count in proposed.loc[~proposed["accepted"], "reason"].fillna("unknown").value_counts().items():
        metrics[f"tasks/rejected/{_metric_key(reason)}"] = int(count)
    return metrics


def _solution_metrics(frame: pd.DataFrame, task_types: tuple[str, ...]) -> dict[str, float]:
    metrics = {"solutions/count": len(frame), "solve_rate/all": _mean(frame["correct"]) or 0.0,
               "solutions/parsed": _mean(frame["parsed"]) or 0.0}
    metrics |= {f"solve_rate/{t}": 0.0 for t in task_types}
    for task_type, rate in frame.groupby("task_type")["correct"].mean().items():
        metrics[f"solve_rate/{_metric_key(task_type)}"] = float(rate)
    return metrics


def _reward_metrics(frame: pd.DataFrame, task_types: tuple[str, ...]) -> dict[str, float]:
    metrics = {f"reward/{role}/{c}": 0.0 for role in REWARD_ROLES for c in REWARD_COMPONENTS}
    metrics |= {f"advantage/{role}/nonzero": 0.0 for role in REWARD_ROLES}
    for role, rows in frame.groupby("role"):
        for component in REWARD_COMPONENTS:
            if component in rows and (value := _mean(rows[component])) is not None:
                metrics[f"reward/{role}/{component}"] = value
        # The share of samples the update learns from: an advantage of 0 contributes no gradient.
        metrics[f"advantage/{role}/nonzero"] = float((rows["advantage"].abs() > NONZERO_ADVANTAGE).mean())
    return metrics


def _train_metrics(data: dict[str, Any]) -> dict[str, float]:
    return {f"train/{key}": 0.0 for key in TRAIN_METRICS} | {
        f"train/{key}": float(value)
        for key, value in data.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def iteration_metrics(run: RunDir, iteration: int, task_types: tuple[str, ...] | list[str] | None = None) -> dict[str, float]:
    """Metrics of one iteration from its finished files (missing steps are left out).

    Proposals by type, validity by reason, forced count, solve rate by type, reward means by
    role and component, train.json's numbers, seconds per step and the buffer size. Within a
    finished step every metric is there, as 0 when nothing was counted (a rejection reason that
    did not occur, a type nothing was proposed for, a rate with nothing to rate), so each chart
    has a point per iteration.
    """
    task_types = tuple(task_types if task_types is not None else registry.names())
    readers = {PROPOSE: _proposal_metrics, VALIDATE: _task_metrics, SOLVE: _solution_metrics, SCORE: _reward_metrics}
    metrics: dict[str, float] = {}
    for stage, reader in readers.items():
        path = stage.output(run, iteration)
        if manifest_path(path).exists():
            metrics.update(reader(read_table(path), task_types))
    train_json = TRAIN.output(run, iteration)
    if manifest_path(train_json).exists():
        metrics.update(_train_metrics(read_json(train_json)))
    total = 0.0
    for step in STEPS:
        path = step_output(run, iteration, step)
        if manifest_path(path).exists():
            rows, seconds = _manifest_rows(path)
            metrics[f"seconds/{step}"] = seconds
            total += seconds
            if step == "buffer":
                metrics["buffer/size"] = rows
    metrics["seconds/iteration"] = total
    return metrics


@dataclass
class RunSummary:
    """One line of `azr runs`."""

    name: str
    root: Path
    status: str  # finished | incomplete | new | unreadable
    iterations_done: int
    num_iterations: int
    position: tuple[int, str] | None
    metrics: dict[str, float] = field(default_factory=dict)  # KEY_METRICS of the last finished iteration


def summarize_run(root: Path) -> RunSummary:
    """Status, iterations done and key metrics of the run directory ``root``."""
    run = RunDir(root)
    try:
        config = load_config(run.config_path)
    except ConfigError:
        return RunSummary(run.name, run.root, "unreadable", 0, 0, None)
    done = iterations_done(run)
    where = position(run, config.num_iterations)
    status = "finished" if where is None else ("new" if where == (1, "propose") else "incomplete")
    metrics = iteration_metrics(run, done) if done else {}
    return RunSummary(run.name, run.root, status, done, config.num_iterations, where,
                      {k: metrics[k] for k in KEY_METRICS if k in metrics})


def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run directory (a folder with config.yaml) under ``runs_dir``, oldest first."""
    roots = [p.parent for p in Path(runs_dir).glob("*/config.yaml")]
    return [summarize_run(root) for root in sorted(roots, key=lambda p: p.stat().st_mtime)]


def task_status(accepted: bool, forced: bool) -> str:
    """One word per task: rejected, forced (accepted under force acceptance) or accepted."""
    return "rejected" if not accepted else ("forced" if forced else "accepted")


def _iteration_files(run: RunDir, stage: Stage, iteration: int | None) -> list[Path]:
    iterations = [iteration] if iteration is not None else run.iterations()
    return [p for i in iterations if manifest_path(p := stage.output(run, i)).exists()]


def _concat(paths: list[Path]) -> pd.DataFrame:
    frames = [read_table(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def task_table(
    run: RunDir, *, iteration: int | None = None, task_type: str | None = None, status: str | None = None
) -> pd.DataFrame:
    """Tasks of a run (all iterations, or one) with their status and Monte Carlo solve rate."""
    if status is not None and status not in TASK_STATUSES:
        raise ValueError(f"status {status!r}: expected one of {', '.join(TASK_STATUSES)}")
    columns = ["iteration", "task_id", "task_type", "source", "status", "reason", "solve_rate", "program"]
    tasks = _concat(_iteration_files(run, VALIDATE, iteration))
    if tasks.empty:
        return pd.DataFrame(columns=columns)
    tasks["status"] = [task_status(a, f) for a, f in zip(tasks["accepted"], tasks["forced"])]
    solutions = _concat(_iteration_files(run, SOLVE, iteration))
    rates = solutions.groupby(["iteration", "task_id"])["correct"].mean() if not solutions.empty else pd.Series(dtype=float)
    tasks["solve_rate"] = [rates.get((i, t)) for i, t in zip(tasks["iteration"], tasks["task_id"])]
    if task_type is not None:
        tasks = tasks[tasks["task_type"] == task_type]
    if status is not None:
        tasks = tasks[tasks["status"] == status]
    return tasks[columns].reset_index(drop=True)


def task_detail(run: RunDir, task_id: str, *, iteration: int | None = None) -> list[dict[str, Any]]:
    """Everything about one task, once per iteration it appears in, as plain Python values: the
    task row, its proposal, the solver rollouts and the reward rows (proposer and solver)."""
    found = []
    for path in _iteration_files(run, VALIDATE, iteration):
        for task in _rows_for(path, task_id):
            n = task["iteration"]
            found.append({
                "task": task,
                "proposal": _rows_for(PROPOSE.output(run, n), task_id),
                "solutions": _rows_for(SOLVE.output(run, n), task_id),
                "rewards": _rows_for(SCORE.output(run, n), task_id),
            })
    return found


def _rows_for(path: Path, task_id: str) -> list[dict[str, Any]]:
    if not manifest_path(path).exists():
        return []
    return [row for row in read_rows(path) if row["task_id"] == task_id]
