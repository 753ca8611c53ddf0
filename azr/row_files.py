"""Rows people bring to `azr validate` and `azr check`: JSONL or Parquet files in, the same out.

Errors name the file and line (or row) and what is wrong with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RowFileError(ValueError):
    """A file or row that cannot be read as asked; the message names it."""


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or Parquet file, with errors that name the file and line."""
    if not path.is_file():
        raise RowFileError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pandas as pd

        rows = pd.read_parquet(path).to_dict("records")  # a missing string reads as NaN: make it None again
        return [{k: None if isinstance(v, float) and v != v else v for k, v in row.items()} for row in rows]
    if path.suffix not in (".jsonl", ".json"):
        raise RowFileError(f"{path}: expected a .jsonl or .parquet file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise RowFileError(f"{path} line {number}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise RowFileError(f"{path} line {number}: expected a JSON object")
        rows.append(row)
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path, index=False)
    else:
        path.write_text("".join(json.dumps(row, default=_plain) + "\n" for row in rows))


def _plain(value: Any) -> Any:
    """numpy values from Parquet rows, as JSON can hold them."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def row_task(row: dict[str, Any], where: str) -> tuple[str, list[str], bool]:
    """(program, inputs, has a single `input`) of a validate row, or a clear error."""
    program = row.get("program", row.get("code"))
    if not isinstance(program, str):
        raise RowFileError(f"{where}: needs a string `program` (or `code`)")
    if "inputs" in row and row["inputs"] is not None:
        inputs = list(row["inputs"])
        if not inputs or not all(isinstance(text, str) for text in inputs):
            raise RowFileError(f"{where}: `inputs` must be a non-empty list of argument texts")
        return program, inputs, False
    if not isinstance(row.get("input"), str):
        raise RowFileError(f"{where}: needs `input` (argument text) or `inputs` (a list of them)")
    return program, [row["input"]], True
