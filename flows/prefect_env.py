"""Environment for Prefect and MLflow, set before either is imported.

Prefect reads its settings once, at import, so every command that runs a flow calls
`prepare_environment` first and imports `flows.training` after it. Values the user already set
in the environment win (``os.environ.setdefault``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # azr's own log lines (progress, sandbox) reach the Prefect run logs too; outside a run (the
    # CLI before and after the flow) there is no run to send them to, which is not worth a warning.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "azr",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}

# A tracking server that does not answer costs a run seconds, not minutes, per tracking step (MLflow's
# defaults retry for about four minutes); what a step misses is logged at the next (azr.tracking).
TRACKING_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

# Lines a normal run prints that say nothing about the run: the ephemeral server starting and
# stopping, and MLflow creating its SQLite tables on first use.
_NOISE_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration")


def prefect_home(runs_dir: Path) -> Path:
    """Where Prefect keeps its database and files for runs under ``runs_dir``."""
    return Path(runs_dir).expanduser().resolve() / ".prefect"


def prepare_environment(runs_dir: Path, *, api_url: str | None = None, quiet: bool = True) -> None:
    """Offline defaults, PREFECT_HOME under ``runs_dir``, and (quiet) Prefect's console lines off.

    Without PREFECT_API_URL Prefect starts its local ephemeral server (nothing to run first).
    ``quiet`` keeps Prefect's console lines (per-task states, the ephemeral server's start/stop,
    a failed task's traceback printed once per enclosing flow) and the weight-loading progress
    bars off the console, where `azr run` shows its own progress and one traceback on failure.
    Prefect's lines still reach the Prefect API (and its UI).
    """
    for key, value in (OFFLINE_DEFAULTS | TRACKING_DEFAULTS).items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(prefect_home(runs_dir)))
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # per-stage weight-loading bars
        # transformers may already be imported (the CLI's library commands import it), and it reads
        # that variable once at import: switch its bars off directly too.
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    for name in _NOISE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def detach_ephemeral_server() -> None:
    """Have Prefect's ephemeral API server, when one is used, start outside azr's process group.

    Ctrl-C in a terminal sends SIGINT to the whole foreground process group: the server, a child of
    azr, stopped at once, and azr then retried for minutes to record the interrupted run in it. In a
    group of its own it stays up until azr has recorded the run as crashed and stops it at exit (Prefect
    registers that with atexit); it also gets SIGTERM when azr dies (PR_SET_PDEATHSIG), so a
    `kill -9` of azr leaves no server behind. Starts the server; call after `prepare_environment`,
    from the main thread, before running a flow.
    """
    if os.environ.get("PREFECT_API_URL"):
        return
    import ctypes
    import signal
    import subprocess

    from prefect.server.api.server import SubprocessASGIServer

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it

    def die_with_parent() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    class DetachedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            popen = subprocess.Popen
            subprocess.Popen = lambda *args, **kwargs: popen(*args, process_group=0, preexec_fn=die_with_parent, **kwargs)
            try:
                return super()._run_uvicorn_command()
            finally:
                subprocess.Popen = popen

    # Prefect's SubprocessASGIServer() now returns this instance (one per port; None = any). Started here,
    # from the main thread: the parent-death signal fires when the thread that started the child ends.
    DetachedServer().start()
