"""The run-level `azr` commands: run, resume, serve, runs, tasks, train-node.
 Prefect is imported inside the commands, after
`prepare_environment` has set PREFECT_HOME and the offline defaults (Prefect reads its settings
at import).
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from rich import box
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from azr import meter, reaper
from azr import runs as run_info
from azr.artifacts import RunDir
from cli.common import ConfigOption, SetOption, console, err_console, fail, resolve_config
from azr import task_types as registry
from azr.config import AZRConfig, ConfigError, load_config
from azr.summary import SUMMARY_COLUMNS, summary_row
from azr.summary import fmt as _fmt
from azr.tracking import run_link, ui_command
from flows.prefect_env import prepare_environment

commands = typer.Typer()  # wired into `azr` by cli/main.py

DEFAULT_API_URL = "http://127.0.0.1:4200/api"
PROJECT_DIR = str(Path(__file__).resolve().parents[1])
RunsDirOption = Annotated[
    Optional[Path], typer.Option("--runs-dir", help="Parent directory of run directories [default: orchestration.runs_dir].")
]


class RunView:
    """The live progress bar of `azr run` on a terminal, read from the run directory's manifests."""

    def __init__(self, run: RunDir, num_iterations: int) -> None:
        self.run, self.num_iterations, self.started = run, num_iterations, time.monotonic()
        self.steps = list(run_info.STEPS)

    def status(self) -> tuple[int, str]:
        """Steps done so far, and a line saying where the run is."""
        p = run_info.progress(self.run, self.num_iterations)
        done, where = self.num_iterations * len(self.steps), "finishing"
        if p.current:
            iteration, step = p.current
            done = (iteration - 1) * len(self.steps) + self.steps.index(step)
            where = f"iteration {iteration}/{self.num_iterations}  stage {step}"
        rate = f"  ({p.last_step}: {p.last_rate:.2f} samples/s)" if p.last_rate else ""
        return done, f"{where}  samples {p.samples}{rate}  {time.monotonic() - self.started:.0f}s"

    def __rich__(self) -> Group:
        done, line = self.status()
        lines = [ProgressBar(total=self.num_iterations * len(self.steps), completed=done, width=60), Text(line)]
        if meter.latest():  # inside the stage: tokens, fields, programs or micro-batches so far
            lines.append(Text(meter.latest(), style="dim"))
        return Group(*lines)


class ConsoleLines(logging.Handler):
    """Prints the run's progress lines (the ones its Prefect run logs get) on the console."""

    def emit(self, record: logging.LogRecord) -> None:
        style = "red" if record.levelno >= logging.ERROR else None
        console.print(Text(self.format(record), style=style), soft_wrap=True)


@contextmanager
def _progress(run: RunDir, num_iterations: int) -> Iterator[None]:
    """A line per finished stage and iteration; on a terminal, a live bar below them too."""
    logger, handler = logging.getLogger("azr.progress"), ConsoleLines()
    logger.addHandler(handler)
    try:
        if console.is_terminal:
            with Live(RunView(run, num_iterations), console=console, refresh_per_second=2):
                yield
        else:
            yield
    finally:
        logger.removeHandler(handler)


def _summary_table(run: RunDir) -> Table:
    """One row per finished iteration: the numbers a person checks first (all in MLflow)."""
    rows = [[str(iteration), *summary_row(run_info.iteration_metrics(run, iteration))]
            for iteration in range(1, run_info.iterations_done(run) + 1)]
    table = Table(title=f"run {run.name}", box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False, collapse_padding=True)
    for i, title in enumerate(("iter", *SUMMARY_COLUMNS)):
        table.add_column(title, justify="right", no_wrap=True, min_width=max([len(title)] + [len(r[i]) for r in rows]))
    for row in rows:
        table.add_row(*row)
    return table


def _print_where_to_look(config: AZRConfig, run: RunDir) -> None:
    """Where the run's files, tables and dashboards are: whole commands, never wrapped."""
    prefect = os.environ.get("PREFECT_API_URL") or f"PREFECT_HOME={os.environ['PREFECT_HOME']} prefect server start"
    for label, where in (
        ("run directory", str(run.root)),
        ("tasks", f"azr tasks {run.root}"),
        ("all runs", f"azr runs --runs-dir {run.root.parent}"),
        ("MLflow", ui_command(config, run.root.parent)),
        ("MLflow run", run_link(config, run)),  # opens in MLflow's training view
        ("Prefect", prefect),
    ):
        console.print(Text.assemble((f"{label:<14}", "bold"), where), soft_wrap=True)


def _print_failure(run: RunDir, state: Any) -> None:
    """The failing exception with azr's own frames (Prefect's and libraries' are in the Prefect UI)."""
    error = state.result(raise_on_failure=False)
    if isinstance(error, BaseException):
        ours = [f for f in traceback.extract_tb(error.__traceback__)
                if f.filename.startswith(PROJECT_DIR) and "site-packages" not in f.filename]
        frames = [f for f in ours if f.name != "is_transient"]
        err_console.print(Text("".join(traceback.format_list(frames)).rstrip()), soft_wrap=True)
        message = "".join(traceback.format_exception_only(type(error), error)).strip()
    else:
        message = str(state.message)
    err_console.print(Text(f"run {run.name} failed: {message}", style="red"), soft_wrap=True)
    err_console.print(f"continue it with: azr resume {run.root}", soft_wrap=True)


class _WarningsToConsole(logging.Handler):
    """azr's own warnings during `azr run` (a sandbox worker replaced, the tracking store not answering, a
    damaged file found on resume), which the root logger would not show: Prefect's console handler is
    kept quiet there. Printed through rich, so that they appear above the live progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(Text(f"{record.levelname.lower()}: {record.getMessage()}", style="yellow"), soft_wrap=True)


def _show_warnings() -> None:
    for name in ("azr", "stages"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _WarningsToConsole) for h in logger.handlers):
            logger.addHandler(_WarningsToConsole(logging.WARNING))


def _print_stopped(run: RunDir, signum: int) -> None:
    err_console.print(Text(f"run {run.name} stopped by {signal.Signals(signum).name}; every finished stage is kept",
                           style="yellow"), soft_wrap=True)
    err_console.print(f"continue it with: azr resume {run.root}", soft_wrap=True)


def _execute(config: AZRConfig) -> None:
    """Run (or continue) the training flow for ``config``'s run directory, with live progress.

    SIGTERM (kill, a job scheduler) and SIGINT (Ctrl-C) stop the run in the stage it is in
    (flows.signals): a stage writes its outputs whole or not at all, Prefect records the flow run as
    crashed, MLflow as killed (flows.training), the sandbox and Prefect's server stop on the way
    out, and `azr resume` continues from that stage.
    """
    from prefect.exceptions import TerminationSignal

    from flows.prefect_env import detach_ephemeral_server
    from flows.signals import received, stop_in_stages
    from flows.training import training_run

    run = RunDir(Path(config.orchestration.runs_dir) / str(config.orchestration.run_name))
    reaper.watch()  # Prefect's local server and the sandbox end with this process, even on SIGKILL
    detach_ephemeral_server()
    _show_warnings()
    try:
        with stop_in_stages(), _progress(run, config.num_iterations):
            state = training_run(config, return_state=True)
    except (KeyboardInterrupt, TerminationSignal, SystemExit):
        signum = received()
        if signum is None:
            raise
        _print_stopped(run, signum)
        raise typer.Exit(128 + signum) from None
    if state.is_failed() or state.is_crashed():
        _print_failure(run, state)
        raise typer.Exit(1)
    console.print(_summary_table(run))
    _print_where_to_look(config, run)


@commands.command("run")
def run_command(
    config: ConfigOption = None,
    set_: SetOption = None,
    run_name: Annotated[Optional[str], typer.Option("--run-name", help="Run directory name [default: orchestration.run_name or azr-<timestamp>].")] = None,
    runs_dir: RunsDirOption = None,
) -> None:
    """Start a training run: live progress, then a summary table and where to look."""
    cfg = resolve_config(config, set_)
    root_dir = (runs_dir or Path(cfg.orchestration.runs_dir)).expanduser().resolve()
    prepare_environment(root_dir)
    from flows.training import default_run_name, with_location

    name = run_name or cfg.orchestration.run_name or default_run_name(datetime.now())
    if Path(name).name != name or name in ("", ".", ".."):
        fail(f"--run-name {name!r}: must be a plain directory name")
    if (root_dir / name / "config.yaml").exists():
        fail(f"{root_dir / name} already holds a run; continue it with `azr resume {root_dir / name}` "
                    "or choose another --run-name")
    _execute(with_location(cfg, root_dir, name))


@commands.command("resume")
def resume_command(
    run_dir: Annotated[Path, typer.Argument(help="The run directory to continue (holds config.yaml).")],
) -> None:
    """Continue a stopped or failed run from its first unfinished stage, with its saved config."""
    run_dir = run_dir.expanduser().resolve()
    try:
        cfg = load_config(RunDir(run_dir).config_path)
    except ConfigError as exc:
        fail(f"{run_dir}: not a resumable run directory: {exc}")
    prepare_environment(run_dir.parent)
    from flows.training import with_location

    _execute(with_location(cfg, run_dir.parent, run_dir.name))


@commands.command("runs")
def runs_command(runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Parent directory of run directories.")] = Path("runs")) -> None:
    """List runs with their status, iterations done and key metrics of the last iteration."""
    if not runs_dir.is_dir():
        fail(f"--runs-dir {runs_dir}: no such directory")
    table = Table(title=f"runs in {runs_dir}", box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False, collapse_padding=True)
    table.add_column("run", overflow="fold")
    for title in ("status", "iterations", "next", "valid", "solved", "R solve", "loss"):  # metrics: KEY_METRICS
        table.add_column(title, no_wrap=True)
    for s in run_info.list_runs(runs_dir):
        where = f"iter {s.position[0]} {s.position[1]}" if s.position and s.status != "unreadable" else "-"
        table.add_row(s.name, s.status, f"{s.iterations_done}/{s.num_iterations}", where,
                      *(_fmt(s.metrics.get(k)) for k in run_info.KEY_METRICS))
    console.print(table)


def _task_rows_table(frame, limit: int) -> Table:
    rows = []
    for row in frame.head(limit).itertuples():
        program = row.program.strip() if isinstance(row.program, str) else ""
        rows.append([str(row.iteration), row.task_id, row.task_type, row.status,
                     _fmt(row.solve_rate), _fmt(row.reason), program.splitlines()[0] if program else ""])
    # Short columns are shown whole; reason and program give way. (The source, proposed or
    # buffer, is in the task id: i0001-p000 / i0001-b000.)
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False, collapse_padding=True)
    for i, title in enumerate(("iter", "task_id", "type", "status", "solved")):
        table.add_column(title, no_wrap=True, min_width=max([len(title)] + [len(r[i]) for r in rows]))
    table.add_column("reason", overflow="fold", ratio=1, min_width=14)
    table.add_column("program", overflow="ellipsis", no_wrap=True, ratio=2, min_width=8)
    for row in rows:
        table.add_row(*row[:5], Text(row[5]), Text(row[6]))
    return table


def _show_task(found: list[dict[str, Any]]) -> None:
    for item in found:
        task = item["task"]
        status = run_info.task_status(task["accepted"], task["forced"])
        console.print(Text(f"task {task['task_id']}  iteration {task['iteration']}  {task['task_type']}  "
                           f"source {task['source']}  {status}  reason {_fmt(task['reason'])}  "
                           f"complexity {_fmt(task['complexity'])}", style="bold"))
        console.print(Syntax(task["program"] or "", "python", line_numbers=False))
        fields = Table.grid(padding=(0, 2))
        for key in ("input", "output", "inputs", "outputs", "shown", "message"):
            fields.add_row(key, Text(_fmt(task.get(key))))
        console.print(fields)
        for proposal in item["proposal"]:
            console.print(Text(f"proposer response ({proposal['finish_reason']}, parse: "
                               f"{proposal['parse_reason'] or 'ok'}):", style="bold"))
            console.print(Text(proposal["response"]))
        for reward in item["rewards"]:
            if reward["role"] == "propose":
                console.print(Text("proposer reward " + "  ".join(
                    f"{c} {_fmt(reward.get(c))}" for c in ("reward", "learnability", "diversity", "complexity", "advantage"))))
        _print_solutions(item["solutions"], {r["sample"]: r for r in item["rewards"] if r["role"] == "solve"})


def _print_solutions(solutions: list[dict[str, Any]], rewards: dict[int, dict[str, Any]]) -> None:
    if not solutions:
        console.print("no solver rollouts (only accepted tasks are solved)")
        return
    table = Table(title="solver rollouts")
    for title in ("sample", "answer", "correct", "check", "reward", "advantage"):
        table.add_column(title, overflow="fold")
    for s in solutions:
        r = rewards.get(s["sample"], {})
        table.add_row(str(s["sample"]), Text(_fmt(s["answer"])), str(s["correct"]), s["check_status"],
                      _fmt(r.get("reward")), _fmt(r.get("advantage")))
    console.print(table)
    for s in solutions:
        console.print(Text(f"sample {s['sample']} response ({s['finish_reason']}):", style="bold"))
        console.print(Text(s["response"]))


@commands.command("tasks")
def tasks_command(
    run_dir: Annotated[Path, typer.Argument(help="The run directory.")],
    iteration: Annotated[Optional[int], typer.Option("--iteration", "-i", help="Only this iteration.")] = None,
    task_type: Annotated[Optional[str], typer.Option("--type", "-t", help="abduction, deduction or induction.")] = None,
    status: Annotated[Optional[str], typer.Option("--status", help="accepted, rejected or forced.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Most rows to print.")] = 50,
    show: Annotated[Optional[str], typer.Option("--show", help="Print this task whole (program, I/O, answers, rewards).")] = None,
) -> None:
    """List a run's tasks as a table, or print one task whole with --show TASK_ID."""
    run = RunDir(run_dir)
    if not run.config_path.exists():
        fail(f"{run_dir}: not a run directory (no config.yaml)")
    if task_type is not None and task_type not in registry.names():
        fail(f"--type {task_type!r}: expected one of {', '.join(registry.names())}")
    if status is not None and status not in run_info.TASK_STATUSES:
        fail(f"--status {status!r}: expected one of {', '.join(run_info.TASK_STATUSES)}")
    if show is not None:
        found = run_info.task_detail(run, show, iteration=iteration)
        if not found:
            fail(f"--show {show!r}: no such task in {run_dir}", code=1)
        _show_task(found)
        return
    frame = run_info.task_table(run, iteration=iteration, task_type=task_type, status=status)
    console.print(_task_rows_table(frame, limit))
    if len(frame) > limit:
        console.print(f"{len(frame) - limit} more; raise --limit to see them")


def _check_server(api_url: str) -> None:
    import httpx

    try:
        httpx.get(f"{api_url.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        fail(f"no Prefect server answers at {api_url} ({exc}); start one with `prefect server start` "
                    "or pass --api-url")


def _deployment_config(config: Optional[Path], overrides: Optional[list[str]], runs_dir: Optional[Path],
                       api_url: Optional[str]) -> tuple[AZRConfig, str]:
    """(the deployment's config, the API URL) for serve and deploy: the server answers, the runs directory
    exists (where the deployment is made; workers elsewhere must see it), and run_name is cleared so
    that every run from the form gets its own directory."""
    cfg = resolve_config(config, overrides)
    root_dir = (runs_dir or Path(cfg.orchestration.runs_dir)).expanduser().resolve()
    api_url = api_url or os.environ.get("PREFECT_API_URL") or DEFAULT_API_URL
    _check_server(api_url)
    root_dir.mkdir(parents=True, exist_ok=True)
    prepare_environment(root_dir, api_url=api_url, quiet=False)
    from flows.training import with_location

    cfg = with_location(cfg, root_dir)
    return cfg.model_copy(update={"orchestration": cfg.orchestration.model_copy(update={"run_name": None})}), api_url


@commands.command("serve")
def serve_command(
    config: ConfigOption = None,
    set_: SetOption = None,
    runs_dir: RunsDirOption = None,
    name: Annotated[str, typer.Option("--name", help="Deployment name.")] = "azr",
    api_url: Annotated[Optional[str], typer.Option("--api-url", help=f"Prefect server API [default: $PREFECT_API_URL or {DEFAULT_API_URL}].")] = None,
) -> None:
    """Put the training flow in the Prefect UI, the config as its form, and execute the runs started there.

    The config given here is the form's default. Its run_name is cleared so that every run gets
    its own directory (runs/azr-<timestamp>); set orchestration.run_name in the form to choose one.
    """
    cfg, api_url = _deployment_config(config, set_, runs_dir, api_url)
    from flows.deploy import serve_deployment

    console.print(f"serving deployment azr-run/{name} on {api_url}; open the UI, pick the deployment, press Run")
    reaper.watch()  # the flow runs this process starts end with it, even on SIGKILL
    serve_deployment(cfg, name)


@commands.command("deploy")
def deploy_command(
    pool: Annotated[str, typer.Option("--pool", help="Prefect work pool (created as a process pool if missing).")],
    config: ConfigOption = None,
    set_: SetOption = None,
    runs_dir: RunsDirOption = None,
    name: Annotated[str, typer.Option("--name", help="Deployment name.")] = "azr",
    api_url: Annotated[Optional[str], typer.Option("--api-url", help=f"Prefect server API [default: $PREFECT_API_URL or {DEFAULT_API_URL}].")] = None,
) -> None:
    """Register the training flow with a work pool: a worker (`prefect worker start --pool NAME`) runs what the UI starts.

    As with serve, the config is the form's default and every run gets its own directory. The worker's
    machine needs azr installed, the runs directory at the same path (shared storage) and, across
    machines, an MLflow tracking server (tracking.mlflow_tracking_uri); a run refuses to start on a
    worker that cannot see the runs directory.
    """
    cfg, api_url = _deployment_config(config, set_, runs_dir, api_url)
    from flows.deploy import deploy_to_pool

    deployment_id = deploy_to_pool(cfg, pool, name)
    console.print(f"deployment azr-run/{name} ({deployment_id}) is in work pool {pool} on {api_url}", soft_wrap=True)
    console.print(f"start a worker where the runs should execute: PREFECT_API_URL={api_url} prefect worker start --pool {pool}",
                  soft_wrap=True)


@commands.command("train-node")
def train_node_command(
    run_dir: Annotated[Path, typer.Argument(help="The run directory, on storage this machine shares with the flow's.")],
    launches: Annotated[Optional[int], typer.Option("--launches", min=1, help="Stop after this many train stages [default: never].")] = None,
) -> None:
    """Be one more training node of a run on several machines (training.distributed.nnodes > 1).

    Start it on every machine but the one running the flow: it waits for each train stage of the
    run, joins it at training.distributed.rdzv_endpoint with nproc_per_node ranks of its own, and
    waits for the next. Stop it with Ctrl-C when the run is over.
    """
    from stages.train import serve_node

    run = RunDir(run_dir.expanduser().resolve())
    if not run.root.is_dir():
        fail(f"{run.root}: no such run directory (is the shared storage mounted here?)")
    console.print(f"waiting for the train stages of {run.root}")
    serve_node(run, launches=launches, log=console.print)

