"""`azr report RUN`: does the run learn? Its curves per iteration, drawn into `RUN/report.png`.

Everything comes from the run directory's files (through `azr.runs.iteration_metrics` and the
evaluation files), so a report can be drawn while the run goes on, or long after, without MLflow.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from azr import runs
from azr.artifacts import RunDir, manifest_path, read_table
from azr import task_types
from azr.config import load_config
from azr.evaluation import eval_metrics
from azr.pipeline import EVALUATE

ROLES = ("propose", "solve")
STAGES = ("propose", "validate", "solve", "score", "train", "buffer")
REPORT_FILE = "report.png"


def report_frame(run: RunDir) -> pd.DataFrame:
    """One row per iteration with finished files (index: iteration; 0 holds the base model's evaluation)."""
    rows = {}
    for iteration in range(1, runs.iterations_done(run) + 1):  # finished iterations only
        rows[iteration] = runs.iteration_metrics(run, iteration)
    config = load_config(run.config_path)
    for iteration in [0, *rows]:
        path = EVALUATE.output(run, iteration)
        if manifest_path(path).exists():
            rows.setdefault(iteration, {}).update(eval_metrics(read_table(path), config.eval.pass_k))
    return pd.DataFrame.from_dict(rows, orient="index").sort_index()


def _columns(frame: pd.DataFrame, prefix: str) -> dict[str, pd.Series]:
    return {c.removeprefix(prefix): frame[c] for c in frame.columns if c.startswith(prefix) and "/" not in c.removeprefix(prefix)}


def draw_report(frame: pd.DataFrame, title: str, out: Path) -> Path:
    """Eight panels: validity, rejection reasons, solve rates, rewards, non-zero advantages, held-out
    pass@1, training signal, seconds per stage."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train = frame.drop(index=0, errors="ignore")
    fig, axes = plt.subplots(4, 2, figsize=(13, 15), constrained_layout=True)
    fig.suptitle(title)

    def lines(ax, series: dict[str, pd.Series], name: str, ylim=(0, 1.02), marker=None):
        for label, values in series.items():
            values = values.dropna()
            if len(values):
                ax.plot(values.index, values.values, marker=marker or ("o" if len(values) < 12 else None), label=label)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ylim:
            ax.set_ylim(*ylim)
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    valid = {t: train.get(f"tasks/valid_rate/{t}") for t in task_types.names() if f"tasks/valid_rate/{t}" in train}
    lines(axes[0, 0], {"all": train.get("tasks/valid_rate", pd.Series(dtype=float)), **valid},
          "valid proposals (ground-truth checks passed)")
    reasons = train[[c for c in train.columns if c.startswith("tasks/rejected/")]].fillna(0)
    ax = axes[0, 1]
    bottom = pd.Series(0.0, index=train.index)
    for column in reasons.columns:
        ax.bar(train.index, reasons[column], bottom=bottom, label=column.removeprefix("tasks/rejected/"))
        bottom += reasons[column]
    ax.set_title("rejected proposals by reason")
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(reasons.columns):
        ax.legend(fontsize=7, ncol=2)
    lines(axes[1, 0], {"all": train.get("solve_rate/all", pd.Series(dtype=float)),
                       **{t: train[f"solve_rate/{t}"] for t in task_types.names() if f"solve_rate/{t}" in train}},
          "self-play solve rate")
    lines(axes[1, 1], {r: train[f"reward/{r}/reward"] for r in ROLES if f"reward/{r}/reward" in train},
          "mean reward by role", ylim=(-1.05, 1.05))
    lines(axes[2, 0], {r: train[f"advantage/{r}/nonzero"] for r in ROLES if f"advantage/{r}/nonzero" in train},
          "samples with a non-zero advantage")
    evals = {c.removeprefix("eval/").removesuffix("/pass_at_1"): frame[c]
             for c in frame.columns if c.startswith("eval/") and c.endswith("/pass_at_1")}
    lines(axes[2, 1], evals, "held-out pass@1 (iteration 0: the base model)", ylim=None, marker="o")
    lines(axes[3, 0], {k: train[f"train/{k}"] for k in ("entropy", "clip_fraction", "grad_norm") if f"train/{k}" in train},
          "training signal", ylim=None)
    ax = axes[3, 1]
    seconds = train[[f"seconds/{s}" for s in STAGES if f"seconds/{s}" in train]].fillna(0)
    ax.stackplot(train.index, *[seconds[c] for c in seconds.columns], labels=[c.removeprefix("seconds/") for c in seconds.columns])
    ax.set_title("seconds per stage")
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(seconds.columns):
        ax.legend(fontsize=8, loc="upper left")
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def summary_rows(frame: pd.DataFrame) -> list[dict[str, float | int | None]]:
    """The report as table rows: what the picture shows, one row per iteration."""
    def value(row, key):
        v = row.get(key)
        return None if v is None or pd.isna(v) else float(v)

    def eval_mean(row, task_type):
        found = [value(row, c) for c in frame.columns if c.startswith("eval/") and c.endswith(f"/{task_type}/pass_at_1")]
        found = [v for v in found if v is not None]
        return sum(found) / len(found) if found else None

    rows = []
    for iteration, row in frame.iterrows():
        rows.append({
            "iter": int(iteration),
            "valid": value(row, "tasks/valid_rate"),
            **{f"v {t[:3]}": value(row, f"tasks/valid_rate/{t}") for t in task_types.names()},
            "solved": value(row, "solve_rate/all"),
            "R prop": value(row, "reward/propose/reward"),
            "R solv": value(row, "reward/solve/reward"),
            "A!=0 p": value(row, "advantage/propose/nonzero"),
            "A!=0 s": value(row, "advantage/solve/nonzero"),
            **{f"e {t[:3]}": eval_mean(row, t) for t in task_types.names()},
            "s": value(row, "seconds/iteration"),
        })
    return rows
