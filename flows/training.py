"""The training-run flow: setup, then one subflow per iteration whose tasks are the stages.

Wiring only. Every stage is idempotent through its manifest (DESIGN.md section 2), so running
this flow again on the same run directory (`azr resume`, or retrying the flow run in the Prefect
UI) skips what is done and continues at the first unfinished stage. Stage tasks pass Parquet
paths, never frames or models. Each finished stage and iteration is reported on the
``azr.progress`` logger (the Prefect run logs, and the terminal of `azr run`), and each iteration
as a Prefect artifact. Import this module after `flows.prefect_env.prepare_environment`.
"""

from __future__ import annotations

import logging
import re
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

import docker.errors
from prefect import flow, tags, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Failed, State

from azr import summary, tracking
from azr.artifacts import RunDir
from azr.config import AZRConfig, ConfigError, build_config, deep_merge
from azr.runs import iteration_metrics
from azr.sandbox import choose_backend
from azr.pipeline import BUFFER, EVALUATE, PROPOSE, SCORE, SOLVE, STAGE, STAGES, TRAIN, VALIDATE
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


@task(name=PROPOSE.task, **STAGE_TASK)
@interruptible
def propose_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return propose(config, run, iteration)


@task(name=VALIDATE.task, **STAGE_TASK)
@interruptible
def validate_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return validate(config, run, iteration)


@task(name=SOLVE.task, **STAGE_TASK)
@interruptible
def solve_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return solve(config, run, iteration)


@task(name=SCORE.task, **STAGE_TASK)
@interruptible
def score_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return score(config, run, iteration)


@task(name=TRAIN.task, **STAGE_TASK)
@interruptible
def train_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return train(config, run, iteration)


@task(name=BUFFER.task, **STAGE_TASK)
@interruptible
def buffer_task(config: AZRConfig, run: RunDir, iteration: int) -> Path:
    return update_buffer(config, run, iteration)


@task(name=EVALUATE.task, **STAGE_TASK)
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


STEP_OF_TASK = {stage.task: stage.name for stage in STAGES} | {"log-iteration": None}  # None: no progress line
progress = logging.getLogger("azr.progress")
progress.setLevel(logging.INFO)  # Prefect gives the extra loggers its handlers, not a level


def _report_stage(config: AZRConfig, run: RunDir, iteration: int, task_name: str, log_to: str | None = None) -> None:
    """Log the line of a finished stage; ``log_to``: the flow run whose logs get it (default: the current)."""
    step = STEP_OF_TASK.get(task_name, task_name)
    if step is not None:
        metrics = iteration_metrics(run, iteration, config.task_types)
        if step == "evaluate":
            metrics |= tracking.evaluation_metrics(config, run, iteration)
        line = summary.stage_line(step, iteration, config.num_iterations, metrics)
        progress.info(line, extra={"flow_run_id": log_to} if log_to else None)


def _iteration_flow_run_name() -> str:
    parameters = flow_run.parameters
    return f"{Path(parameters['run_root']).name}-iteration-{parameters['iteration']}"


@flow(name="azr-iteration", flow_run_name=_iteration_flow_run_name, persist_result=False)
def iteration_flow(config: AZRConfig, run_root: Path, iteration: int) -> dict[str, str] | State:
    """One self-play iteration: propose, validate, solve, score, train, update the buffer, log.

    Each stage waits for the one before (the edges of the run graph), and a line in the run's logs
    reports it when done.
    """
    run = RunDir(run_root)
    # The stage lines go to the run's own logs (the page a user opens), as in the terminal.
    log_to = flow_run.root_flow_run_id
    retry = dict(retries=config.orchestration.task_retries,
                 retry_delay_seconds=config.orchestration.retry_delay_seconds)
    outputs: dict[str, str] = {}
    results: dict[str, Any] = {}  # task name -> what it returned, for the edges of the graph
    previous: list[Any] = []
    try:
        with tags(f"iteration:{iteration}"):
            for stage_task in ITERATION_TASKS:
                if stage_task is evaluate_task and not should_evaluate(config, iteration):
                    continue
                result = stage_task.with_options(task_run_name=f"{stage_task.name}-{iteration}", **retry)(
                    config, run, iteration, wait_for=previous + _read_results(stage_task.name, results)
                )
                previous, results[stage_task.name] = [result], result
                if isinstance(result, Path):
                    outputs[stage_task.name] = str(result)
                _report_stage(config, run, iteration, stage_task.name, log_to)
    except Exception as exc:
        return failed(exc)
    return outputs


def _read_results(task_name: str, results: dict[str, Any]) -> list[Any]:
    """The results of the stages this task reads in this iteration (azr/pipeline.py): the edges the
    Prefect UI draws besides the one from the task before (evaluate reads train's checkpoint)."""
    stage = next((s for s in STAGES if s.task == task_name), None)
    reads = (*stage.reads, *(("train",) if stage is EVALUATE else ())) if stage else ()
    return [results[STAGE[name].task] for name in reads if name in STAGE and STAGE[name].task in results]


def failed(exc: BaseException) -> State:
    """The Failed state of a flow that caught ``exc``.

    Returned rather than raised: Prefect writes a raised exception to its result storage (under
    PREFECT_HOME, outside the run directory); a returned state is kept only in memory, as these
    flows persist no results. The exception stays the state's result (what `azr run` prints).
    """
    return Failed(message=f"{type(exc).__name__}: {exc}", data=exc)


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


def _served_config() -> dict[str, Any]:
    """The config the deployment of the current flow run was served with ({} outside a deployment)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment

    if not deployment.id:
        return {}
    with get_client(sync_client=True) as client:
        return client.read_deployment(deployment.id).parameters.get("config") or {}


def _config_data(config: AZRConfig | dict[str, Any]) -> dict[str, Any]:
    """The run's config as a mapping: a partial one (from the API) merged over the deployment's."""
    if isinstance(config, AZRConfig):
        return config.model_dump(mode="json")
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a mapping of keys, not {type(config).__name__}")
    return deep_merge(_served_config(), config)


def resolve_config(config: AZRConfig | dict[str, Any]) -> AZRConfig:
    """The validated config of a run (cross-field rules included), its run name filled in.

    Prefect replaces a deployment's parameters only at the top level, so a run created with part
    of a config (``{"config": {"num_iterations": 1}}``: API, CLI, automations) gets that part
    merged over the config the deployment was served with, key by key, instead of replacing it.
    """
    if not isinstance(config, AZRConfig):
        config = build_config(_config_data(config), source="config")
    if config.orchestration.run_name is None:
        config = with_location(config, run_name=default_run_name(_flow_run_created()))
    return config


def _run_flow_run_name() -> str:
    """Flow runs are named after the run directory (the config's run name, or its timestamp)."""
    try:
        data = _config_data(flow_run.parameters.get("config", AZRConfig()))
    except ConfigError:
        return "refused-config"
    return (data.get("orchestration") or {}).get("run_name") or default_run_name(_flow_run_created())


def _refuse(exc: ConfigError) -> State:
    """The run's end when its config is invalid: the offending keys first, no traceback, nothing written."""
    message = f"{'; '.join(exc.problems)} (config refused; no stage ran)"
    progress.error(message)
    return Failed(message=message)


def _unseen_runs_dir(config: AZRConfig) -> str | None:
    """Why a deployment's run cannot start here: its runs directory is not on this machine.

    `azr serve` and `azr deploy` create the runs directory where the deployment is made; a worker
    elsewhere must see the same directory (shared storage). Creating it on the worker would split
    the run's files across machines, so the run stops before any stage instead."""
    from prefect.runtime import deployment

    runs_dir = Path(config.orchestration.runs_dir).expanduser()
    if deployment.id and not runs_dir.is_dir():
        return (f"orchestration.runs_dir {runs_dir} is not visible on this worker ({socket.gethostname()}): mount the "
                "shared storage that holds it at the same path (config refused; no stage ran)")
    return None


def _announce(config: AZRConfig, run: RunDir) -> None:
    backend, why = choose_backend(config.executor)
    progress.info(f"run {run.name} in {run.root}")
    progress.info(f"MLflow run {tracking.run_link(config, run)} (open the UI with: "
                  f"{tracking.ui_command(config, run.root.parent)})")
    progress.info(f"sandbox backend: {backend} ({why})")


def _artifact_key(run: RunDir, iteration: int) -> str:
    # Prefect artifact keys: lowercase letters, digits and dashes.
    return f"{re.sub(r'[^a-z0-9]+', '-', run.name.lower()).strip('-') or 'run'}-iteration-{iteration}"


def _report_iteration(config: AZRConfig, run: RunDir, iteration: int) -> None:
    metrics = iteration_metrics(run, iteration, config.task_types) | tracking.evaluation_metrics(config, run, iteration)
    progress.info(summary.iteration_line(iteration, config.num_iterations, metrics))
    links = {
        "run directory": f"`{run.root}`",
        "tasks": f"`azr tasks {run.root} --iteration {iteration}`",
        "MLflow run": tracking.run_link(config, run),
    }
    create_markdown_artifact(
        summary.iteration_markdown(run.name, iteration, config.num_iterations, metrics, links),
        key=_artifact_key(run, iteration),
        description=f"{run.name}: summary of iteration {iteration}",
    )


@flow(name="azr-run", flow_run_name=_run_flow_run_name, validate_parameters=False, persist_result=False)
def training_run(config: AZRConfig = AZRConfig()) -> str | State:
    """An AZR self-play training run: `num_iterations` iterations of propose, validate, solve,
    score and train. Returns the run directory. Re-running it on the same run directory (same
    `orchestration.run_name`) continues from the first unfinished stage.

    From a deployment, ``config`` may be part of a config: it is merged over the deployment's and
    the whole is validated, cross-field rules included, before any stage runs. (Prefect's own
    parameter validation is off: it would validate the part alone, and fail with its traceback.)
    """
    try:
        config = resolve_config(config)
    except ConfigError as exc:
        return _refuse(exc)
    unseen = _unseen_runs_dir(config)
    if unseen:
        progress.error(unseen)
        return Failed(message=unseen)
    try:
        run = setup_task(config, Path(config.orchestration.runs_dir).expanduser().resolve())
        start_tracking_task(config, run, flow_run.get_id())
    except Exception as exc:
        return failed(exc)
    try:
        _announce(config, run)
        if should_evaluate(config, 0):  # the base model, so curves start before any update
            evaluate_task(config, run, 0)
            _report_stage(config, run, 0, "evaluate")
            log_base_evaluation_task(config, run)
        for iteration in range(1, config.num_iterations + 1):
            iteration_flow(config, run.root, iteration)
            _report_iteration(config, run, iteration)
    except Exception as exc:
        end_tracking_task(config, run, "FAILED")
        return failed(exc)
    except BaseException:  # SIGTERM or Ctrl-C (Prefect's TerminationSignal, KeyboardInterrupt, SystemExit)
        tracking.end_run(config, run, "KILLED")  # not as a task: the flow run is being torn down
        raise
    end_tracking_task(config, run, "FINISHED")
    return str(run.root)
