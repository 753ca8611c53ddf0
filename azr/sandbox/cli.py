"""Sandbox commands: `azr validate`, `azr check`, `azr score cruxeval`, `azr sandbox build`.

Registered on the library app by one import at the end of azr/cli.py.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from azr.cli import ConfigOption, SetOption, app, console, err_console, resolve_config
from azr.evaluation import pass_at_k

sandbox_app = typer.Typer(no_args_is_help=True, help="Build and inspect the execution sandbox.")
score_app = typer.Typer(no_args_is_help=True, help="Score generations against benchmarks.")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(score_app, name="score")


def fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(2)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or Parquet file, with errors that name the file and line."""
    if not path.is_file():
        raise fail(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pandas as pd

        rows = pd.read_parquet(path).to_dict("records")  # a missing string reads as NaN: make it None again
        return [{k: None if isinstance(v, float) and v != v else v for k, v in row.items()} for row in rows]
    if path.suffix not in (".jsonl", ".json"):
        raise fail(f"{path}: expected a .jsonl or .parquet file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise fail(f"{path} line {number}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise fail(f"{path} line {number}: expected a JSON object")
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
        raise fail(f"{where}: needs a string `program` (or `code`)")
    if "inputs" in row and row["inputs"] is not None:
        inputs = list(row["inputs"])
        if not inputs or not all(isinstance(text, str) for text in inputs):
            raise fail(f"{where}: `inputs` must be a non-empty list of argument texts")
        return program, inputs, False
    if not isinstance(row.get("input"), str):
        raise fail(f"{where}: needs `input` (argument text) or `inputs` (a list of them)")
    return program, [row["input"]], True


@app.command("validate")
def validate_command(
    file: Annotated[Path, typer.Argument(help="JSONL or Parquet rows with `program` (or `code`) and `input` or `inputs`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the rows plus status, output(s), error, seconds (.jsonl or .parquet).")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Run every row's program on its input(s) in the sandbox (ground truth, determinism, safety).

    Rows keep every field; a row that already has `output` keeps it as `expected_output`, next to
    `matches_expected`.
    """
    from azr.sandbox import SandboxError, open_sandbox

    cfg = resolve_config(config, set_)
    rows = read_rows(file)
    tasks = [row_task(row, f"{file} row {number}") for number, row in enumerate(rows, 1)]
    started = time.monotonic()
    try:
        with open_sandbox(cfg.executor) as sandbox:
            results = sandbox.validate([(program, inputs) for program, inputs, _ in tasks])
            backend = sandbox.backend
    except SandboxError as exc:
        raise fail(str(exc)) from None
    for row, (_, _, single), result in zip(rows, tasks, results):
        ok = result.status == "ok"
        if single and "output" in row:  # a row that came with an output (CRUXEval's gold) keeps it, compared
            row["expected_output"] = row.pop("output")
            row["matches_expected"] = ok and result.outputs[0] == row["expected_output"]
        if single:
            row["output"] = result.outputs[0] if ok else None
        else:
            row["outputs"] = result.outputs if ok else None
        row.update(status=result.status, error=result.error, seconds=result.seconds)
    write_rows(out, rows)
    counts = Counter(result.status for result in results)
    summary = ", ".join(f"{status} {count}" for status, count in counts.most_common())
    console.print(f"{len(rows)} rows validated in {time.monotonic() - started:.1f} s ({backend}): {summary} -> {out}")


@app.command("check")
def check_command(
    file: Annotated[Path, typer.Argument(help="JSONL or Parquet rows with task_type, program, answer, and output (deduction, abduction) or inputs, outputs, shown (induction).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the rows plus correct, check_status, check_error (.jsonl or .parquet).")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Check solver answers exactly as the solve stage and `azr eval` do: why was this answer marked wrong?

    Every row keeps every field it came with. `check_status` is ok when the check ran (then `correct`
    says the verdict), else why it could not: not_literal (the answer is not a literal, or for abduction
    not one literal argument list), syntax, banned, impure, timeout, ...; `check_error` says more.
    """
    from azr.answers import RowError, check_rows
    from azr.sandbox import SandboxError, open_sandbox

    cfg = resolve_config(config, set_)
    if out.suffix not in (".jsonl", ".json", ".parquet"):
        raise fail(f"{out}: --out must end in .jsonl or .parquet")
    rows = read_rows(file)
    started = time.monotonic()
    try:
        with open_sandbox(cfg.executor) as sandbox:
            checked = check_rows(sandbox, rows, where=f"{file} row")
    except RowError as exc:
        raise fail(str(exc)) from None
    except SandboxError as exc:
        raise fail(str(exc)) from None
    write_rows(out, checked)
    counts = Counter(row["check_status"] for row in checked)
    right = sum(row["correct"] for row in checked)
    summary = ", ".join(f"{status} {count}" for status, count in counts.most_common())
    console.print(f"{len(rows)} answers checked in {time.monotonic() - started:.1f} s: {right} correct; {summary} -> {out}")


def read_generations(path: Path) -> dict[str, list[str]]:
    """id -> list of generations; a scored CRUXEval file (with raw_generations) also works."""
    if not path.is_file():
        raise fail(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise fail(f"{path}: not JSON: {exc}") from None
    if isinstance(data, dict) and "raw_generations" in data:
        data = data["raw_generations"]
    if not isinstance(data, dict):
        raise fail(f"{path}: expected a JSON object of id -> list of generations")
    for key, generations in data.items():
        if not isinstance(generations, list) or not all(isinstance(g, str) for g in generations):
            raise fail(f"{path}: generations for {key!r} must be a list of strings")
    return data


def score_generations(sandbox: Any, problems: dict[str, dict[str, Any]], generations: dict[str, list[str]], mode: str) -> dict[str, list[bool]]:
    """CRUXEval's verdicts: output mode compares values, input mode runs f on the answer.

    CRUXEval's own rule, not azr's literal rule (so its published numbers are reproduced): an answer
    may be any expression. As in CRUXEval's evaluator, an output answer that contains the call
    ``f(<input>)`` and an input answer that contains no ``f(`` are wrong without running anything.
    """
    items: list[tuple] = []
    where: list[tuple[str, int]] = []
    scored = {key: [False] * len(gens) for key, gens in generations.items()}
    for key, gens in generations.items():
        problem = problems[key]
        for number, generation in enumerate(gens):
            if mode == "output" and f"f({problem['input']})" in generation:
                continue
            if mode == "input" and "f(" not in generation:
                continue
            items.append((problem["output"], generation) if mode == "output" else (problem["program"], generation, problem["output"]))
            where.append((key, number))
    checks = sandbox.check_deduction(items, expressions=True) if mode == "output" else sandbox.check_abduction(items, expressions=True)
    for (key, number), check in zip(where, checks):
        scored[key][number] = check.correct
    return scored


@score_app.command("cruxeval")
def score_cruxeval(
    data: Annotated[Path, typer.Option("--data", help="cruxeval.jsonl (rows with id, code or program, input, output).")],
    generations: Annotated[Path, typer.Option("--generations", help="JSON: id -> list of generations (a scored file works too).")],
    mode: Annotated[str, typer.Option("--mode", help="output: generations are literals; input: generations are f(...) calls.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Scored JSON in CRUXEval's format.")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Score CRUXEval generations in the sandbox; writes raw_generations, raw_scored_generations, pass_at_1, pass_at_5."""
    from azr.sandbox import SandboxError, open_sandbox

    if mode not in ("input", "output"):
        raise fail(f"--mode must be input or output, not {mode!r}")
    cfg = resolve_config(config, set_)
    problems = {}
    for number, row in enumerate(read_rows(data), 1):
        program = row.get("program", row.get("code"))
        if not all(isinstance(v, str) for v in (row.get("id"), program, row.get("input"), row.get("output"))):
            raise fail(f"{data} row {number}: needs string id, code (or program), input and output")
        problems[row["id"]] = {"program": program, "input": row["input"], "output": row["output"]}
    gens = read_generations(generations)
    unknown = [key for key in gens if key not in problems]
    if unknown:
        raise fail(f"{generations}: ids not in {data}: {', '.join(unknown[:5])}")
    try:
        with open_sandbox(cfg.executor) as sandbox:
            scored = score_generations(sandbox, problems, gens, mode)
    except SandboxError as exc:
        raise fail(str(exc)) from None
    result = {"raw_generations": gens, "raw_scored_generations": scored}
    for k in (1, 5):
        values = [pass_at_k(len(v), sum(v), k) for v in scored.values()]
        result[f"pass_at_{k}"] = sum(values) / len(values) * 100 if values else 0.0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))
    console.print(f"{len(scored)} problems, pass@1 {result['pass_at_1']:.2f}, pass@5 {result['pass_at_5']:.2f} -> {out}")


@sandbox_app.command("build")
def sandbox_build(
    base_image: Annotated[Optional[str], typer.Option("--base-image", help="Base image with python3 (default: python:3.11-slim).")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Base the image on this machine's Python; needs no registry.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Build the sandbox image (executor.image) from containers/executor/Dockerfile."""
    from azr.sandbox import SandboxError
    from azr.sandbox.docker_backend import image_ref
    from azr.sandbox.image import build_image

    cfg = resolve_config(config, set_)
    image = image_ref(cfg.executor.image)
    started = time.monotonic()
    try:
        image_id = build_image(image, base_image=base_image, offline=offline)
    except SandboxError as exc:
        raise fail(str(exc)) from None
    console.print(f"built {image} ({image_id[:19]}) in {time.monotonic() - started:.1f} s")
