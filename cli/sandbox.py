"""Sandbox commands: `azr validate`, `azr check`, `azr score cruxeval`, `azr sandbox build`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import ConfigOption, SetOption, console, fail, resolve_config
from azr.cruxeval import cruxeval_result, read_generations, read_problems, score_generations
from azr.evaluation import BenchmarkError
from azr.row_files import RowFileError, read_rows, row_task, write_rows

sandbox_app = typer.Typer(no_args_is_help=True, help="Build and inspect the execution sandbox.")
score_app = typer.Typer(no_args_is_help=True, help="Score generations against benchmarks.")
commands = typer.Typer()  # wired into `azr` by cli/main.py
commands.add_typer(sandbox_app, name="sandbox")
commands.add_typer(score_app, name="score")


@commands.command("validate")
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
    try:
        rows = read_rows(file)
        tasks = [row_task(row, f"{file} row {number}") for number, row in enumerate(rows, 1)]
    except RowFileError as exc:
        fail(exc)
    started = time.monotonic()
    try:
        with open_sandbox(cfg.executor) as sandbox:
            results = sandbox.validate([(program, inputs) for program, inputs, _ in tasks])
            backend = sandbox.backend
    except SandboxError as exc:
        fail(str(exc))
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


@commands.command("check")
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
        fail(f"{out}: --out must end in .jsonl or .parquet")
    try:
        rows = read_rows(file)
    except RowFileError as exc:
        fail(exc)
    started = time.monotonic()
    try:
        with open_sandbox(cfg.executor) as sandbox:
            checked = check_rows(sandbox, rows, where=f"{file} row")
    except RowError as exc:
        fail(str(exc))
    except SandboxError as exc:
        fail(str(exc))
    write_rows(out, checked)
    counts = Counter(row["check_status"] for row in checked)
    right = sum(row["correct"] for row in checked)
    summary = ", ".join(f"{status} {count}" for status, count in counts.most_common())
    console.print(f"{len(rows)} answers checked in {time.monotonic() - started:.1f} s: {right} correct; {summary} -> {out}")


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
        fail(f"--mode must be input or output, not {mode!r}")
    cfg = resolve_config(config, set_)
    try:
        problems, gens = read_problems(data), read_generations(generations)
    except (BenchmarkError, RowFileError) as exc:
        fail(exc)
    unknown = [key for key in gens if key not in problems]
    if unknown:
        fail(f"{generations}: ids not in {data}: {', '.join(unknown[:5])}")
    try:
        with open_sandbox(cfg.executor) as sandbox:
            scored = score_generations(sandbox, problems, gens, mode)
    except SandboxError as exc:
        fail(exc)
    result = cruxeval_result(gens, scored)
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
        fail(str(exc))
    console.print(f"built {image} ({image_id[:19]}) in {time.monotonic() - started:.1f} s")
