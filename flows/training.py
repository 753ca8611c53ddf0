"""The training-run flow: setup, then one subflow per iteration whose tasks are the stages.

Wiring only. Every stage is idempotent through its manifest (DESIGN.md section 2), so running
this flow again on the same run directory (`azr resume`, or retrying the flow run in the Prefect
UI) skips what is done and continues at the first unfinished stage. Stage tasks pass Parquet
paths, never frames or models. Import this module after `flows.prefect_env.prepare_environment`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import docker.errors
from prefect import flow, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.runtime import flow_run

from azr import tracking
from azr.artifacts import RunDir
from azr.config import AZRConfig
from flows.signals import interruptible
from stages.buffer import update_buffer
from stages.evaluate import evaluate_iteration, should_evaluate
from stages.propose import propose
from stages.score import score
from stages.setup import setup_run
from stages.solve import solve
from stages.train import train
from stages.validate import validate

# Errors worth a retry: I/O hiccups, a sandbox container or the Docker daemon going away.
TRANSIENT_ERRORS = (OSError, docker.errors.DockerException)
NOT_TRANSIENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry only errors a second try can fix."""
    try:
        state.result()
    except NOT_TRANSIENT:
        return False
    except TRANSIENT_ERRORS:
        return True
    except BaseException:
        return False
    return False


STAGE_TASK = dict(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=is_transient)


@task(name="propose", **STAGE_TASK)
@interruptible
def propose_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return propose(config, run, iteration)


@task(name="validate", **STAGE_TASK)
@interruptible
def validate_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return validate(config, run, iteration)


@task(name="solve", **STAGE_TASK)
@interruptible
def solve_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return solve(config, run, iteration)


@task(name="score", **STAGE_TASK)
@interruptible
def score_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return score(config, run, iteration)


@task(name="train", **STAGE_TASK)
@interruptible
def train_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return train(config, run, iteration)


@task(name="update-buffer", **STAGE_TASK)
@interruptible
def buffer_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return update_buffer(config, run, iteration)


@task(name="evaluate", **STAGE_TASK)
@interruptible
def evaluate_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return evaluate_iteration(config, run, iteration)


@task(name="log-iteration", **STAGE_TASK)
@interruptible
def log_iteration_task(config: AZRConfig, run: RunDir, iteration: int) -> dict[str, float]:
    return tracking.log_iteration(config, run, iteration)


setup_task = task(interruptible(setup_run), name="setup", **STAGE_TASK)
start_tracking_task = task(interruptible(tracking.start_run), name="start-tracking", **STAGE_TASK)
end_tracking_task = task(interruptible(tracking.end_run), name="end-tracking", **STAGE_TASK)
log_base_evaluation_task = task(interruptible(tracking.log_base_evaluation), name="log-base-evaluation", **STAGE_TASK)

ITERATION_TASKS = (propose_task, validate_task, solve_task, score_task, train_task, buffer_task, evaluate_task,
                   log_iteration_task)


@flow(name="azr-iteration", flow_run_name="iteration-{iteration}")
def iteration_flow(config: AZRConfig, run_root: Path, iteration: int) -> dict[str, str]:
    """One self-play iteration: propose, validate, solve, score, train, update the buffer, log."""
    run = RunDir(run_root)
    retry = dict(retries=config.orchestration.task_retries,
                 retry_delay_seconds=config.orchestration.retry_delay_seconds)
    outputs = {}
    with tags(f"iteration:{iteration}"):
        for stage_task in ITERATION_TASKS:
            if stage_task is evaluate_task and not should_evaluate(config, iteration):
                continue
            result = stage_task.with_options(task_run_name=f"{stage_task.name}-{iteration}", **retry)(
                config, run, iteration
            )
            if isinstance(result, Path):
                outputs[stage_task.name] = str(result)
    return outputs


def default_run_name(created: datetime) -> str:
    """``azr-<local timestamp>`` of when the run was created."""
    return created.astimezone().strftime("azr-%Y%m%d-%H%M%S")


def with_location(config: AZRConfig, runs_dir: str | Path | None = None, run_name: str | None = None) -> AZRConfig:
    """The config with ``orchestration.runs_dir`` / ``run_name`` replaced where given."""
    update = {k: str(v) for k, v in (("runs_dir", runs_dir), ("run_name", run_name)) if v is not None}
    return config.model_copy(update={"orchestration": config.orchestration.model_copy(update=update)})


def _flow_run_created() -> datetime:
    # The flow run's creation time stays the same when the run is retried from the UI, so a
    # retry finds the same run directory.
    context = FlowRunContext.get()
    created = context.flow_run.created if context and context.flow_run else None
    return created or datetime.now()


@flow(name="azr-run")
def training_run(config: AZRConfig = AZRConfig()) -> str:
    """An AZR self-play training run: `num_iterations` iterations of propose, validate, solve,
    score and train. Returns the run directory. Re-running it on the same run directory (same
    `orchestration.run_name`) continues from the first unfinished stage."""
    if config.orchestration.run_name is None:
        config = with_location(config, run_name=default_run_name(_flow_run_created()))
    runs_dir = Path(config.orchestration.runs_dir).expanduser().resolve()
    run = setup_task(config, runs_dir)
    try:
        start_tracking_task(config, run, flow_run.get_id())
        if should_evaluate(config, 0):  # the base model, so curves start before any update
            evaluate_task(config, run, 0)
            log_base_evaluation_task(config, run)
        for iteration in range(1, config.num_iterations + 1):
            iteration_flow(config, run.root, iteration)
    except Exception:
        end_tracking_task(config, run, "FAILED")
        raise
    except BaseException:  # SIGTERM or Ctrl-C (Prefect's TerminationSignal, KeyboardInterrupt, SystemExit)
        tracking.end_run(config, run, "KILLED")  # not as a task: the flow run is being torn down
        raise
    end_tracking_task(config, run, "FINISHED")
    return str(run.root)
