"""`azr check`: solver answers checked by the solve stage's path, every row kept, the verdict added."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from cli.main import app

PROGRAM = "def f(xs):\n    return xs[::-1]"
ROWS = [
    {"id": "right", "task_type": "deduction", "program": PROGRAM, "input": "[1, 2, 3]", "output": "[3, 2, 1]", "answer": "[3,2,1]"},
    {"id": "computed", "task_type": "deduction", "program": PROGRAM, "input": "[1, 2, 3]", "output": "[3, 2, 1]", "answer": "sorted([1, 2, 3])[::-1]"},
    {"id": "injected", "task_type": "abduction", "program": PROGRAM, "input": "[1, 2, 3]", "output": "[3, 2, 1]", "answer": ") if 0 else ([3, 2, 1]"},
    {"id": "inverse", "task_type": "abduction", "program": PROGRAM, "input": "[1, 2, 3]", "output": "[3, 2, 1]", "answer": "[1, 2, 3]"},
    {"id": "table", "task_type": "induction", "program": "def f(x):\n    return x * 2", "inputs": ["1", "2", "3"],
     "outputs": ["2", "4", "6"], "shown": [0, 1], "answer": "def f(x):\n    return {1: 2, 2: 4}.get(x)"},
    {"id": "unparsed", "task_type": "deduction", "program": PROGRAM, "input": "[1]", "output": "[1]", "answer": None},
]
VERDICTS = [("right", True, "ok"), ("computed", False, "not_literal"), ("injected", False, "not_literal"),
            ("inverse", True, "ok"), ("table", False, "ok"), ("unparsed", False, "unparsed")]


def check(tmp_path, source, out, *extra):
    return CliRunner().invoke(app, ["check", str(source), "--out", str(out), "--set", "executor.backend=process", *extra])


def test_check_jsonl_keeps_every_field_and_says_why(tmp_path):
    source = tmp_path / "answers.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    result = check(tmp_path, source, tmp_path / "checked.jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "checked.jsonl").read_text().splitlines()]
    assert [(r["id"], r["correct"], r["check_status"]) for r in rows] == VERDICTS
    assert all({k: r[k] for k in ROWS[i]} == ROWS[i] for i, r in enumerate(rows))
    assert "subscripting" in rows[1]["check_error"] and "not the argument list of one call" in rows[2]["check_error"]
    assert "2 correct" in result.output


def test_check_parquet_in_parquet_out(tmp_path):
    source = tmp_path / "answers.parquet"
    pd.DataFrame(ROWS).to_parquet(source)
    result = check(tmp_path, source, tmp_path / "checked.parquet")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(tmp_path / "checked.parquet")
    assert list(frame.columns) == [*ROWS[0].keys(), "inputs", "outputs", "shown", "correct", "check_status", "check_error"]
    assert list(zip(frame["id"], frame["correct"], frame["check_status"])) == VERDICTS


def test_check_names_the_row_that_it_cannot_check(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({**ROWS[0], "task_type": "guessing"}) + "\n")
    result = check(tmp_path, source, tmp_path / "out.jsonl")
    assert result.exit_code == 2 and "row 2: `task_type` must be one of" in result.output
    source.write_text(json.dumps({**ROWS[4], "shown": [7]}) + "\n")
    result = check(tmp_path, source, tmp_path / "out.jsonl")
    assert result.exit_code == 2 and "row 1: `shown` must list indices" in result.output
    assert not (tmp_path / "out.jsonl").exists()
