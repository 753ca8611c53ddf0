"""`azr eval` (a model on a benchmark) and `azr compare` (two runs' metrics side by side).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Column, Table

from cli.common import ConfigOption, SetOption, console, fail, resolve_config
from azr.config import AZRConfig, ConfigError, load_config

LOWER_IS_BETTER = ("loss", "seconds", "kl", "grad_norm", "memory")  # metric names where best = min


commands = typer.Typer()  # wired into `azr` by cli/main.py


def _is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def _load_eval_policy(model: Optional[str], iteration: Optional[int], config: Optional[Path],
                      overrides: list[str]) -> tuple[Any, Any, AZRConfig, str, int, str]:
    """(model, tokenizer, config, run name, iteration, what was loaded) for `azr eval --model`."""
    from azr.artifacts import RunDir
    from azr.checkpoint import latest_checkpoint, load_policy, meta_path

    path = Path(model).expanduser() if model else None
    if path is not None and _is_run_dir(path):
        cfg = resolve_config(config or path / "config.yaml", overrides)
        run = RunDir(path)
        checkpoint = latest_checkpoint(run, before_iteration=math.inf if iteration is None else iteration + 1)
        if iteration is None:
            iteration = int(checkpoint.parent.name.removeprefix("iter-")) if checkpoint else 0
        loaded, tokenizer = load_policy(cfg.model, checkpoint)
        return loaded, tokenizer, cfg, run.name, iteration, str(checkpoint or f"base model {cfg.model.name_or_path}")
    if iteration is not None:
        fail("--iteration needs --model to be a run directory (one with config.yaml)")
    if path is not None and meta_path(path).is_file():  # a checkpoint directory of a run
        cfg = resolve_config(config, overrides)
        loaded, tokenizer = load_policy(cfg.model, path)
        return loaded, tokenizer, cfg, "", 0, str(path)
    cfg = resolve_config(config, ([f"model.name_or_path={model}"] if model else []) + overrides)
    loaded, tokenizer = load_policy(cfg.model)
    return loaded, tokenizer, cfg, "", 0, cfg.model.name_or_path


@commands.command("eval")
def eval_command(
    mode: Annotated[str, typer.Option("--mode", help="A task type: deduction (output prediction), abduction (input prediction), induction, or one registered in azr.task_types.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write, one row per answer.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Built-in name, HF directory or hub id, a run's checkpoint directory, or a run directory; default: model.name_or_path.")] = None,
    iteration: Annotated[Optional[int], typer.Option("--iteration", min=0, help="With a run directory: the weights after this iteration (0 = base model); default: the newest.")] = None,
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="JSONL benchmark (CRUXEval format, or induction programs with inputs); default: the shipped held-out set.")] = "heldout",
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Evaluate the first N problems.")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", "-n", min=1, help="Answers per problem (1 = greedy); more gives pass@k.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Evaluate a model on a benchmark in one mode; write the answers to a Parquet file and print pass@k."""
    from azr.artifacts import write_table
    from azr.evaluation import EVAL, BenchmarkError, benchmark_task_types, eval_metrics, run_evaluation

    overrides = list(set_ or []) + [f"eval.{key}={value}" for key, value in (("limit", limit), ("samples", samples))
                                    if value is not None]
    try:
        if mode not in benchmark_task_types(benchmark):  # before the slow model load
            raise BenchmarkError(f"{benchmark} has no {mode} problems (it serves {', '.join(benchmark_task_types(benchmark))})")
        loaded, tokenizer, cfg, run_name, iteration, source = _load_eval_policy(model, iteration, config, overrides)
        console.print(f"model: {source}", highlight=False)
        with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=console) as bar:
            task = bar.add_task(mode, total=None)
            frame = run_evaluation(loaded, tokenizer, cfg, sets=[benchmark], task_types=[mode], run=run_name,
                                   iteration=iteration,
                                   progress=lambda label, done, total: bar.update(task, description=label,
                                                                                  completed=done, total=total))
    except (BenchmarkError, ConfigError) as exc:
        fail(str(exc))
    write_table(frame, out, schema=EVAL, config_hash=cfg.config_hash())
    metrics = eval_metrics(frame, cfg.eval.pass_k)
    table = Table("metric", "value", title=f"{frame['task_id'].nunique()} problems, {cfg.eval.samples} answer(s) each")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(f"wrote {out}", highlight=False)


def _run_metrics(run_path: Path) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    """(MLflow run id, {metric: [(step, value), ...]}) of a run directory, read from its tracking store."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from azr.tracking import RUN_ID_FILE, tracking_uri

    id_file = run_path / RUN_ID_FILE
    if not id_file.is_file():
        fail(f"{run_path}: no {RUN_ID_FILE} file; is it a run directory that logged to MLflow?")
    try:
        cfg = load_config(run_path / "config.yaml")
    except ConfigError:
        cfg = AZRConfig()  # an old or missing config: the default store, next to the run
    run_id = id_file.read_text().strip()
    client = MlflowClient(tracking_uri=tracking_uri(cfg, run_path.resolve().parent))
    try:
        keys = client.get_run(run_id).data.metrics
        history = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys}
    except MlflowException as exc:
        fail(f"{run_path}: cannot read MLflow run {run_id}: {exc}")
    return run_id, history


def final_and_best(points: list[tuple[int, float]], key: str) -> tuple[float, float]:
    """The value at the last step, and the best value (the lowest for loss-like metrics)."""
    final = max(points, key=lambda p: p[0])[1]
    values = [v for _, v in points]
    best = min(values) if any(word in key for word in LOWER_IS_BETTER) else max(values)
    return final, best


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _evaluation(path: Path):
    """The evaluation rows behind A or B: an `azr eval --out` Parquet file, or a run directory's newest
    held-out evaluation (eval/iter-NNNN.parquet); None for a run without one."""
    from azr.artifacts import ArtifactError, RunDir, read_table
    from azr.pipeline import evaluations

    if path.is_dir():
        files = evaluations(RunDir(path))
        return read_table(files[-1], verify=False) if files else None
    try:
        return read_table(path, verify=False)
    except ArtifactError as exc:
        fail(f"{path}: neither a run directory nor an evaluation Parquet file ({exc})")


def _paired_table(a, b, name_a: str, name_b: str) -> Table:
    from azr.evaluation import BenchmarkError, paired_comparison

    try:
        rows = paired_comparison(a, b)
    except BenchmarkError as exc:
        fail(str(exc), code=1)
    table = Table(*(Column(title, no_wrap=True) for title in ("set", "mode", "n", "A", "B", "B - A", "only A/B", "p", "test")),
                  title=f"pass@1 paired by problem: A = {name_a}, B = {name_b}", box=box.SIMPLE_HEAD, padding=(0, 1))
    for r in rows:
        table.add_row(r["set"], r["task_type"], str(r["problems"]), f"{r['pass_at_1_a']:.3f}", f"{r['pass_at_1_b']:.3f}",
                      f"{r['difference']:+.3f}", f"{r['only_a']}/{r['only_b']}", f"{r['p_value']:.3g}", r["test"])
    return table


@commands.command("compare")
def compare_command(
    run_a: Annotated[Path, typer.Argument(help="First run directory, or an evaluation Parquet file (azr eval --out).")],
    run_b: Annotated[Path, typer.Argument(help="Second run directory, or an evaluation Parquet file.")],
    prefix: Annotated[str, typer.Option("--prefix", "-p", help="Show metrics whose name starts with this; '' = all.")] = "eval/",
) -> None:
    """Compare two runs or evaluations: for two runs, the final and best value of each metric side by side
    (read from MLflow); for evaluations on the same problems (two `azr eval` files, or the runs' newest
    held-out evaluations), pass@1 problem by problem with the paired difference and its p-value."""
    if run_a.is_dir() and run_b.is_dir():  # run directories, read from MLflow
        _, metrics_a = _run_metrics(run_a)
        _, metrics_b = _run_metrics(run_b)
        keys = sorted(k for k in set(metrics_a) | set(metrics_b) if k.startswith(prefix))
        if not keys:
            fail(f"neither run has a metric starting with {prefix!r} (eval metrics need eval.every > 0)", code=1)
        table = Table(Column("metric", min_width=max(map(len, keys))), "A final", "A best", "B final", "B best", "B - A",
                      title=f"A = {run_a.name}, B = {run_b.name}", box=box.SIMPLE_HEAD)
        for key in keys:
            a = final_and_best(metrics_a[key], key) if key in metrics_a else (None, None)
            b = final_and_best(metrics_b[key], key) if key in metrics_b else (None, None)
            delta = b[0] - a[0] if a[0] is not None and b[0] is not None else None
            table.add_row(key, _cell(a[0]), _cell(a[1]), _cell(b[0]), _cell(b[1]), _cell(delta))
        console.print(table)
    a, b = _evaluation(run_a), _evaluation(run_b)
    if a is not None and b is not None:  # a table to read whole, in a log file too (rich squeezes it to 80 there)
        Console(width=max(console.width, 120), soft_wrap=False).print(_paired_table(a, b, run_a.name, run_b.name))
