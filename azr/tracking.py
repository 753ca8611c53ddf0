"""MLflow tracking: one MLflow run per training run, metrics per iteration with step = iteration.

The MLflow run id is kept in the run directory (``mlflow_run_id``), so a resumed run logs into
the same MLflow run. Metrics come from the run directory's files (azr.runs.iteration_metrics),
so what MLflow shows is what the Parquet files say. Logging an iteration is idempotent: the
``iteration`` metric is written last (in the same batch when it fits) and marks it as logged.

A tracking store that is locked or does not answer never stops a run: each tracking step logs a
warning and gives up, and the next one (every iteration's log step, and `azr resume`) logs what
is missing, from the files, creating the MLflow run first if it could not be created at start.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from azr import summary
from azr.artifacts import RunDir, manifest_path, read_table
from azr.config import AZRConfig
from azr.evaluation import eval_metrics
from azr.runs import iteration_metrics
from azr.pipeline import BUFFER, EVALUATE, STAGES

RUN_ID_FILE = "mlflow_run_id"
MARKER_METRIC = "iteration"
FLOW_RUN_TAG = "prefect.flow_run_id"
# MLflow 3 shows experiments in its GenAI view (traces) unless told otherwise. The experiment tag
# says "training" to UIs that read it; MLflow 3.17's UI decides by a view switch kept in the browser
# (GenAI by default) that the `workflowType` query parameter of a link sets. Both select the view
# with runs, parameters and metric charts.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
TRAINING_VIEW = "workflowType=machine_learning"
MLFLOW_UI_URL = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
MAX_BATCH_METRICS = 1000  # MLflow's limit per log_batch
T = TypeVar("T")
log = logging.getLogger(__name__)


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a locked, unreachable or failing tracking store raises (MLflow wraps most in MlflowException)."""
    import requests
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError  # a locked SQLite store, before MLflow's client wraps anything

    return MlflowException, SQLAlchemyError, requests.RequestException, OSError


def _tolerant(what: str, default: T, step: Callable[[], T], config: AZRConfig, run: RunDir) -> T:
    """Run one tracking step; if the store fails, warn and return ``default`` so that the run goes on."""
    try:
        return step()
    except _store_errors() as exc:
        log.warning("MLflow tracking store %s failed while %s (%s: %s); the run goes on, and what MLflow missed "
                    "is logged at the next iteration's log step or by `azr resume %s`",
                    tracking_uri(config, run.root.parent), what, type(exc).__name__, str(exc).splitlines()[0][:300], run.root)
        return default


def tracking_uri(config: AZRConfig, runs_dir: Path) -> str:
    """The configured tracking URI, or SQLite at ``<runs_dir>/mlflow.db``."""
    if config.tracking.mlflow_tracking_uri:
        return config.tracking.mlflow_tracking_uri
    return f"sqlite:///{Path(runs_dir).expanduser().resolve() / 'mlflow.db'}"


def ui_command(config: AZRConfig, runs_dir: Path) -> str:
    """The command that opens the MLflow UI on this run's tracking store."""
    return f"mlflow ui --backend-store-uri {tracking_uri(config, runs_dir)}"


def ui_url(config: AZRConfig) -> str:
    """Where the MLflow UI for this config's store is: the tracking server, or `mlflow ui`'s default."""
    uri = config.tracking.mlflow_tracking_uri or ""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else MLFLOW_UI_URL


def run_link(config: AZRConfig, run: RunDir) -> str:
    """The MLflow UI page of ``run``'s MLflow run, in the training view (a note when the store fails)."""
    def link() -> str:
        run_id = (run.root / RUN_ID_FILE).read_text().strip()
        experiment_id = _client(config, run).get_run(run_id).info.experiment_id
        return f"{ui_url(config)}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"

    return _tolerant("finding the run's page", "(not available: the MLflow store did not answer)", link, config, run)


def _client(config: AZRConfig, run: RunDir):
    from mlflow import MlflowClient  # imported here: mlflow takes a second to import

    return MlflowClient(tracking_uri=tracking_uri(config, run.root.parent))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config mapping -> {"section.key": "value"} (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def _experiment_id(client, config: AZRConfig, runs_dir: Path) -> str:
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is not None:
        if EXPERIMENT_KIND[0] not in experiment.tags:  # made by an older azr, or by hand
            client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
        return experiment.experiment_id
    # With the default SQLite store, artifacts sit next to it rather than in the working directory.
    location = None if config.tracking.mlflow_tracking_uri else (runs_dir / "mlartifacts").resolve().as_uri()
    return client.create_experiment(config.tracking.experiment, artifact_location=location,
                                    tags={EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1]})


def start_run(config: AZRConfig, run: RunDir, flow_run_id: str | None = None) -> str | None:
    """Open (or reopen, on resume) the MLflow run of ``run``; returns its id, or None when the store fails.

    A new MLflow run gets the flattened config as params. Either way it is marked running and
    tagged with the Prefect flow-run id.
    """
    return _tolerant("opening the run", None, lambda: _open_run(config, run, flow_run_id), config, run)


def _open_run(config: AZRConfig, run: RunDir, flow_run_id: str | None) -> str:
    from mlflow.entities import Param, RunTag

    client = _client(config, run)
    id_file = run.root / RUN_ID_FILE
    tags = [RunTag("azr.run_dir", str(run.root))]
    if flow_run_id:
        tags.append(RunTag(FLOW_RUN_TAG, flow_run_id))
    if id_file.exists():
        run_id = id_file.read_text().strip()
        client.update_run(run_id, status="RUNNING")
    else:
        experiment_id = _experiment_id(client, config, run.root.parent)
        run_id = client.create_run(experiment_id, run_name=run.name).info.run_id
        id_file.write_text(run_id + "\n")  # at once: a store failing from here on must not make a second run
    # Every time (the same values again are accepted): a store that failed right after creating the run got none.
    params = [Param(k, v) for k, v in flatten(config.model_dump(mode="json")).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=params[start:start + 100])
    client.log_batch(run_id, tags=tags)
    return run_id


def _run_id(config: AZRConfig, run: RunDir) -> str:
    """The MLflow run's id, creating the MLflow run when the store could not at start."""
    id_file = run.root / RUN_ID_FILE
    return id_file.read_text().strip() if id_file.exists() else _open_run(config, run, None)


def logged_iterations(config: AZRConfig, run: RunDir) -> set[int]:
    """Iterations already in the MLflow run (their marker metric exists)."""
    history = _client(config, run).get_metric_history(_run_id(config, run), MARKER_METRIC)
    return {m.step for m in history}


def iteration_logged(config: AZRConfig, run: RunDir, iteration: int) -> bool:
    """True when ``iteration`` is already in the MLflow run."""
    return iteration in logged_iterations(config, run)


def log_iteration(config: AZRConfig, run: RunDir, iteration: int) -> dict[str, float]:
    """Log finished iteration ``iteration`` and every earlier one MLflow does not have yet (it was
    locked or down then), with the base evaluation; returns what was logged for ``iteration``."""
    def catch_up() -> dict[str, float]:
        logged = logged_iterations(config, run)
        log_base_evaluation(config, run)
        metrics: dict[str, float] = {}
        for number in range(1, iteration + 1):
            if number not in logged:
                metrics = _log_one_iteration(config, run, number)
        return metrics if iteration not in logged else {}

    return _tolerant(f"logging iteration {iteration}", {}, catch_up, config, run)


def _log_one_iteration(config: AZRConfig, run: RunDir, iteration: int) -> dict[str, float]:
    """One finished iteration's metrics (step = iteration), its summary as ``iter-NNNN/summary.csv`` and,
    if enabled, its files as artifacts under ``iter-NNNN/``."""
    from mlflow.entities import Metric

    client = _client(config, run)
    run_id = _run_id(config, run)
    metrics = iteration_metrics(run, iteration, config.task_types) | evaluation_metrics(config, run, iteration)
    # Parquet has no preview in the MLflow UI; this small table has.
    client.log_text(run_id, summary.summary_csv(iteration, metrics), f"{run.iteration_dir(iteration).name}/summary.csv")
    if config.tracking.log_artifacts:
        folder = run.iteration_dir(iteration).name
        for stage in (s for s in STAGES if s.artifact):
            path = stage.output(run, iteration)
            if manifest_path(path).exists():
                client.log_artifact(run_id, str(path), artifact_path=folder)
        client.log_artifact(run_id, str(BUFFER.output(run, iteration)), artifact_path="buffer")
    now = int(time.time() * 1000)
    entries = [Metric(key, float(value), now, iteration) for key, value in metrics.items()]
    entries.append(Metric(MARKER_METRIC, float(iteration), now, iteration))  # last: the iteration is logged
    for start in range(0, len(entries), MAX_BATCH_METRICS):  # one batch (one transaction) when it fits
        client.log_batch(run_id, metrics=entries[start:start + MAX_BATCH_METRICS])
    return metrics


def evaluation_metrics(config: AZRConfig, run: RunDir, iteration: int) -> dict[str, float]:
    """``eval/<set>/<type>/pass_at_k`` of the held-out evaluation after ``iteration``, when it ran."""
    path = EVALUATE.output(run, iteration)
    return eval_metrics(read_table(path), config.eval.pass_k) if manifest_path(path).exists() else {}


def log_base_evaluation(config: AZRConfig, run: RunDir) -> dict[str, float]:
    """Log the base model's evaluation at step 0 (once: a resumed run finds it there)."""
    from mlflow.entities import Metric

    metrics = evaluation_metrics(config, run, 0)
    if not metrics:
        return {}

    def log() -> dict[str, float]:
        client = _client(config, run)
        run_id = _run_id(config, run)
        if any(m.step == 0 for m in client.get_metric_history(run_id, next(iter(metrics)))):
            return {}
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()])
        return metrics

    return _tolerant("logging the base model's evaluation", {}, log, config, run)


def end_run(config: AZRConfig, run: RunDir, status: str = "FINISHED") -> None:
    """Mark the MLflow run FINISHED, FAILED or KILLED (a SIGKILLed process leaves it RUNNING until resumed)."""
    id_file = run.root / RUN_ID_FILE
    if id_file.exists():  # else the store never answered: nothing to mark
        _tolerant(f"marking the run {status}", None,
                  lambda: _client(config, run).set_terminated(id_file.read_text().strip(), status=status), config, run)
