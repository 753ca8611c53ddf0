"""`azr`, the console script: one Typer app wired from the command modules, in the order `azr --help` lists them.

    cli/library.py    config, model, report         (the library: no Prefect)
    cli/sandbox.py    validate, check, score, sandbox
    cli/evaluate.py   eval, compare
    cli/run.py        run, resume, serve, runs, tasks, train-node   (the Prefect flows)

Each module declares its commands on a Typer of its own (`commands`) and imports nothing from the
others but `cli/common.py`; this module is the only place they meet.
"""

from __future__ import annotations

import typer

from cli import evaluate, library, run, sandbox

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Absolute Zero Reasoner self-play.")
for module in (library, evaluate, sandbox, run):
    app.registered_commands += module.commands.registered_commands
    app.registered_groups += module.commands.registered_groups


if __name__ == "__main__":  # python -m cli.main
    app()
