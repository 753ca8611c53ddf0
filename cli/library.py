"""Library-level `azr` commands: config, model, report. They import no stage and no flow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from azr.config import commented_yaml, dump_config
from cli.common import ConfigOption, SetOption, console, fail, resolve_config

commands = typer.Typer()  # wired into `azr` by cli/main.py
config_app = typer.Typer(no_args_is_help=True, help="Show and validate run configs.")
commands.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    file: Annotated[Optional[Path], typer.Argument(help="YAML config; omitted = the defaults.")] = None,
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
    comments: Annotated[bool, typer.Option("--comments", help="YAML with each key's description.")] = False,
) -> None:
    """Print the resolved config (defaults filled in)."""
    cfg = resolve_config(file, set_)
    if as_json:
        typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
    elif comments:
        typer.echo(commented_yaml(cfg), nl=False)
    else:
        typer.echo(dump_config(cfg), nl=False)


@config_app.command("validate")
def config_validate(
    file: Annotated[Path, typer.Argument(help="YAML config to check.")],
    set_: SetOption = None,
) -> None:
    """Exit 0 when FILE is a valid config; else print each error (naming the key) and exit 2."""
    resolve_config(file, set_)
    console.print(f"{file}: ok")


model_app = typer.Typer(no_args_is_help=True, help="Prepare policy models.")
commands.add_typer(model_app, name="model")


@model_app.command("prepare")
def model_prepare(
    name: Annotated[Optional[str], typer.Argument(help="Built-in name, .gguf file, HF dir or hub id; default: model.name_or_path.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Fetch/convert a model into the cache (model.cache_dir) once and print its local directory."""
    from azr.model import ModelNotFoundError, prepare_model  # torch is slow to import; only this command needs it

    cfg = resolve_config(config, set_)
    try:
        path = prepare_model(name or cfg.model.name_or_path, cfg.model.cache_dir)
    except (ModelNotFoundError, RuntimeError, ValueError) as exc:
        fail(exc, code=1)
    typer.echo(str(path))


@model_app.command("export")
def model_export(
    run: Annotated[Path, typer.Argument(help="Run directory (runs/<name>).")],
    iteration: Annotated[int, typer.Option("--iteration", "-i", help="Iteration whose checkpoint to export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the plain HF model to.")],
) -> None:
    """Write a run's checkpoint as a plain Hugging Face model directory (LoRA adapters merged in)."""
    from azr.artifacts import ArtifactError, RunDir  # torch is slow to import; only this command needs it
    from azr.checkpoint import export_model, meta_path

    run_dir = RunDir(run)
    cfg = resolve_config(run_dir.config_path, [])
    checkpoint = run_dir.checkpoint_dir(iteration)
    if not meta_path(checkpoint).exists():
        have = [i for i in run_dir.iterations() if meta_path(run_dir.checkpoint_dir(i)).exists()]
        fail(f"{run} has no checkpoint for iteration {iteration} (checkpoints: {', '.join(map(str, have)) or 'none'})",
             code=1)
    try:
        export_model(checkpoint, cfg.model, out)
    except (ArtifactError, ValueError) as exc:
        fail(exc, code=1)
    typer.echo(str(out))


@commands.command("report")
def report_command(
    run: Annotated[Path, typer.Argument(help="Run directory (runs/<name>).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Picture to write [default: RUN/report.png].")] = None,
) -> None:
    """Draw a run's curves per iteration into report.png and print them as a table: valid proposals,
    rejection reasons, solve rates, rewards, non-zero advantages, held-out pass@1, seconds per stage."""
    from rich import box
    from rich.table import Table

    from azr.artifacts import RunDir
    from azr.report import REPORT_FILE, draw_report, report_frame, summary_rows

    run_dir = RunDir(run)
    resolve_config(run_dir.config_path, [])  # a clear error when RUN is not a run directory
    frame = report_frame(run_dir)
    if frame.empty:
        fail(f"{run} has no finished iteration yet", code=1)
    rows = summary_rows(frame)
    table = Table(title=f"run {run_dir.name}: v = valid proposals, R = mean reward, A!=0 = share of non-zero "
                  "advantages (p propose, s solve), e = held-out pass@1", box=box.SIMPLE_HEAD, padding=(0, 1),
                  show_edge=False, title_justify="left")
    for column in rows[0]:
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*("-" if v is None else (str(v) if isinstance(v, int) else f"{v:.2f}") for v in row.values()))
    # A table to read whole, in a log file too (rich would squeeze it into 80 columns there).
    Console(width=max(console.width, 130), soft_wrap=False).print(table)
    path = draw_report(frame, f"azr run {run_dir.name}", out or run_dir.root / REPORT_FILE)
    console.print(f"wrote {path}", highlight=False)


