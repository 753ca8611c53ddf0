"""What every `azr` command module shares: the consoles, the --config/--set options, the one config
loader for commands, and the one way a command fails (a red `error:` line and an exit code)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.text import Text

from azr.config import AZRConfig, ConfigError, load_config

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML run config.")]
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", "-s", help="Override a key: key.path=value (repeatable).")
]


def fail(message: object, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``code`` (2: bad input; 1: nothing to do)."""
    err_console.print(Text.assemble(("error: ", "red"), str(message)))  # as text: a message may hold [brackets]
    raise typer.Exit(code)


def resolve_config(config: Optional[Path], overrides: Optional[list[str]]) -> AZRConfig:
    """Load the config for a command, or print what is wrong and exit 2."""
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        fail(exc)
