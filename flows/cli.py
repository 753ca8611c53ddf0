"""The `azr` console script: library commands from `azr.cli` plus the run-level commands."""

from __future__ import annotations

from azr.cli import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
