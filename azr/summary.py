"""What a run tells people: one line per finished stage, one summary row per iteration.

The terminal of `azr run`, the Prefect run logs and artifacts, and the MLflow summary artifact all
show these, made from the same numbers (`azr.runs.iteration_metrics`, read from the run's files).
Pure formatting: nothing here reads or writes files.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Callable

# The numbers a person checks first, as (column title, metric).
SUMMARY_COLUMNS = {
    "prop": "proposals/count", "valid": "tasks/valid_rate", "forced": "tasks/forced",
    "solved": "solve_rate/all", "R prop": "reward/propose/reward", "R solve": "reward/solve/reward",
    "loss": "train/loss", "tok/s": "train/tokens_per_second", "s": "seconds/iteration",
}


def fmt(value: Any, digits: int = 3) -> str:
    """A number as a short string; missing or NaN as '-'."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def summary_row(metrics: dict[str, float]) -> list[str]:
    """The SUMMARY_COLUMNS of one iteration, formatted."""
    return [fmt(metrics.get(key)) for key in SUMMARY_COLUMNS.values()]


def rejections(metrics: dict[str, float]) -> dict[str, int]:
    """Rejected proposals by reason, the reasons that occurred only, most frequent first."""
    prefix = "tasks/rejected/"
    counts = {k.removeprefix(prefix): int(v) for k, v in metrics.items() if k.startswith(prefix) and v}
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _rate(rows: float | None, seconds: float | None) -> str:
    return f", {rows / seconds:.2f} samples/s" if rows and seconds else ""


def _validate_details(m: dict[str, float]) -> str:
    reasons = ", ".join(f"{reason} {count}" for reason, count in rejections(m).items())
    return (f"{fmt(m.get('tasks/accepted'))} accepted ({fmt(m.get('tasks/forced'))} forced), "
            f"{fmt(m.get('tasks/rejected'))} rejected{f' ({reasons})' if reasons else ''}, "
            f"{fmt(m.get('tasks/from_buffer'))} from the buffer")


def _evaluate_details(m: dict[str, float]) -> str:
    scores = [f"{key.removeprefix('eval/')} {fmt(value)}" for key, value in sorted(m.items())
              if key.startswith("eval/") and key.endswith("/pass_at_1")]
    return ", ".join(scores) or "no held-out scores"


STAGE_DETAILS: dict[str, Callable[[dict[str, float]], str]] = {
    "propose": lambda m: f"{fmt(m.get('proposals/count'))} proposals, {fmt(m.get('proposals/parsed'))} parsed"
                         + _rate(m.get("proposals/count"), m.get("seconds/propose")),
    "validate": _validate_details,
    "solve": lambda m: f"{fmt(m.get('solutions/count'))} rollouts, solve rate {fmt(m.get('solve_rate/all'))}"
                       + _rate(m.get("solutions/count"), m.get("seconds/solve")),
    "score": lambda m: f"mean reward: propose {fmt(m.get('reward/propose/reward'))}, solve {fmt(m.get('reward/solve/reward'))}",
    "train": lambda m: f"loss {fmt(m.get('train/loss'))}, grad norm {fmt(m.get('train/grad_norm'))}, "
                       f"{fmt(m.get('train/tokens_per_second'))} tokens/s",
    "buffer": lambda m: f"buffer holds {fmt(m.get('buffer/size'))} tasks",
    "evaluate": _evaluate_details,
}


def stage_line(step: str, iteration: int, num_iterations: int, metrics: dict[str, float]) -> str:
    """The line printed (and logged) when ``step`` of ``iteration`` has finished."""
    seconds = metrics.get(f"seconds/{step}")
    took = f"{seconds:6.1f}s" if seconds is not None else " " * 7
    return f"iteration {iteration}/{num_iterations}  {step:<8} {took}  {STAGE_DETAILS[step](metrics)}"


def iteration_line(iteration: int, num_iterations: int, metrics: dict[str, float]) -> str:
    """The summary row of a finished iteration as one line."""
    cells = "  ".join(f"{title} {value}" for title, value in zip(SUMMARY_COLUMNS, summary_row(metrics)))
    return f"iteration {iteration}/{num_iterations} done: {cells}"


def iteration_markdown(run_name: str, iteration: int, num_iterations: int, metrics: dict[str, float],
                       links: dict[str, str]) -> str:
    """A finished iteration as Markdown: its summary row, why proposals were rejected, where to look."""
    titles = ["iter", *SUMMARY_COLUMNS]
    reasons = rejections(metrics)
    lines = [
        f"### {run_name}: iteration {iteration} of {num_iterations}", "",
        "| " + " | ".join(titles) + " |",
        "|" + "---:|" * len(titles),
        "| " + " | ".join([str(iteration), *summary_row(metrics)]) + " |", "",
        "**Rejected proposals by reason**", "",
    ]
    if reasons:
        lines += ["| reason | proposals |", "|---|---:|", *(f"| {r} | {c} |" for r, c in reasons.items())]
    else:
        lines.append("none")
    lines += ["", *(f"- {label}: {where}" for label, where in links.items())]
    return "\n".join(lines) + "\n"


def summary_csv(iteration: int, metrics: dict[str, float]) -> str:
    """A finished iteration as a two-column CSV (metric, value) that MLflow's artifact view shows as a table."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric", "value"])
    writer.writerow(["iteration", iteration])
    for title, key in SUMMARY_COLUMNS.items():
        writer.writerow([title, fmt(metrics.get(key), digits=6)])
    for reason, count in rejections(metrics).items():
        writer.writerow([f"rejected: {reason}", count])
    return out.getvalue()
