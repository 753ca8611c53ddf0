"""Held-out evaluation: does self-play make the model reason better?

A benchmark is a JSONL file of problems. Two formats are read directly:

- CRUXEval (`code`, `input`, `output`, `id`; `program` is accepted for `code`): serves two modes,
  deduction (output prediction, CRUXEval-O) and abduction (input prediction, CRUXEval-I).
- Induction: `program` (or `code`), `inputs` (a list of argument texts, at least 2), optional
  `message` and `id`. The hidden outputs are computed by running the program in the sandbox.

The project ships its own small sets, one per task type, in `azr/data/heldout/` (set name
`heldout`); they are what evaluation uses unless told otherwise, so it works offline.

The model answers each problem with the solver prompt of its task type (greedy, or `eval.samples`
sampled answers for pass@k); answers are parsed and checked in the sandbox, exactly as in solve.
`score_responses` is that checking path on its own, so given answer texts (e.g. the gold ones)
can be scored without a model.
"""

from __future__ import annotations

import json
import math
import re
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from azr import schemas, task_types
from azr.task_types import BenchmarkError  # noqa: F401  (re-exported: raised by the registry and here)
from azr.config import AZRConfig, SamplingConfig
from azr.seeding import stage_seed
from azr.solving import answer_problems

HELDOUT = "heldout"
HELDOUT_DIR = Path(__file__).parent / "data" / "heldout"

EVAL = schemas.EVAL  # the rows of eval/iter-NNNN.parquet and of `azr eval --out`


Progress = Callable[[int, int], None]  # (answers done, answers in all)




# ---------------------------------------------------------------- reading benchmarks


def benchmark_path(set_name: str, task_type: str) -> Path:
    """The JSONL file of `set_name` for `task_type`: the shipped set for `heldout`, else the path itself."""
    _check_task_type(task_type)
    if set_name == HELDOUT:
        return HELDOUT_DIR / f"{task_type}.jsonl"
    path = Path(set_name).expanduser()
    if not path.is_file():
        raise BenchmarkError(f"{set_name}: benchmark file not found (use '{HELDOUT}' for the shipped sets)")
    return path


def set_label(set_name: str) -> str:
    """The name a set has in metric keys and the `set` column: `heldout`, or the file's stem
    (characters MLflow refuses in metric names become `_`)."""
    return HELDOUT if set_name == HELDOUT else re.sub(r"[^\w\-.]", "_", Path(set_name).stem)


def benchmark_task_types(set_name: str) -> tuple[str, ...]:
    """The modes a set serves: every registered type for `heldout` (one file each); for a file, the
    types whose keys its first row holds (a CRUXEval row: deduction and abduction)."""
    if set_name == HELDOUT:
        return task_types.names()
    path = benchmark_path(set_name, task_types.names()[0])
    with open(path) as fh:
        first = next((line for line in fh if line.strip()), None)
    if first is None:
        raise BenchmarkError(f"{path}: benchmark file is empty")
    row = _json_row(first, path, 1)
    return tuple(name for name in task_types.names() if all(key in row for key in task_types.get(name).benchmark_keys))


def read_problems(path: str | Path, task_type: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` problems of a JSONL benchmark, as tasks (keys task_id, task_type, program,
    input, output; for induction inputs and message, outputs still to be computed)."""
    _check_task_type(task_type)
    path = Path(path)
    problems = []
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            if limit is not None and len(problems) >= limit:
                break
            if line.strip():
                problems.append(_problem(_json_row(line, path, number), task_type, f"{path}:{number}"))
    if not problems:
        raise BenchmarkError(f"{path}: no problems in the file")
    ids = [p["task_id"] for p in problems]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise BenchmarkError(f"{path}: duplicate problem ids {', '.join(duplicates[:5])}")
    return problems


def _json_row(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}:{number}: not valid JSON: {exc}") from None
    if not isinstance(row, dict):
        raise BenchmarkError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
    return row


def _problem(row: dict[str, Any], task_type: str, where: str) -> dict[str, Any]:
    program = row.get("code", row.get("program"))
    if not isinstance(program, str) or not program.strip():
        raise BenchmarkError(f"{where}: needs the program as a string in 'code' or 'program'")
    try:
        return task_types.get(task_type).problem(row, str(row.get("id", where.rsplit(":", 1)[-1])), program, where)
    except ValueError as exc:
        raise BenchmarkError(str(exc)) from None


def load_set(sandbox, set_name: str, task_type: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The problems of one set in one mode, ready to prompt (what a row does not hold, such as
    induction outputs, computed in the sandbox)."""
    problems = read_problems(benchmark_path(set_name, task_type), task_type, limit)
    try:
        return task_types.get(task_type).complete(sandbox, problems)
    except ValueError as exc:
        raise BenchmarkError(str(exc)) from None


# ---------------------------------------------------------------- checking answers


def gold_answer(problem: dict[str, Any]) -> str:
    """The reference answer: its task type's `gold_key` (the output, the input, the program)."""
    return problem[task_types.get(problem["task_type"]).gold_key]


def answer_response(task_type: str, answer: str) -> str:
    """A response that gives `answer` in the format the solver prompt asks for."""
    return f"<think>known answer</think>\n<answer>\n```{task_types.get(task_type).answer_label}\n{answer}\n```\n</answer>"


# ---------------------------------------------------------------- running the model


def eval_sampling(config: AZRConfig) -> SamplingConfig:
    """Generation settings for evaluation: greedy for one sample, `sampling` otherwise."""
    update: dict[str, Any] = {}
    if config.eval.samples == 1:
        update["temperature"] = 0.0
    if config.eval.max_new_tokens is not None:
        update["max_new_tokens"] = config.eval.max_new_tokens
    return config.sampling.model_copy(update=update)


def evaluate_problems(model, tokenizer, sandbox, problems: list[dict[str, Any]], config: AZRConfig, seed: int,
                      progress: Progress | None = None) -> list[dict[str, Any]]:
    """`eval.samples` answers per problem from the model, scored: one row per answer (no run keys).

    `progress(done, total)` reports the fields written so far (azr.solving)."""
    started = time.perf_counter()
    answers = answer_problems(config, (model, tokenizer), sandbox, problems, samples=config.eval.samples,
                              sampling=eval_sampling(config), seed=seed, strict=config.eval.strict,
                              progress=(lambda done, total, tokens: progress(done, total)) if progress else None)
    seconds = (time.perf_counter() - started) / max(len(answers), 1)
    return [
        {"task_id": a.problem["task_id"], "task_type": a.problem["task_type"], "sample": a.sample, "prompt": a.prompt,
         "response": a.generation.text, "response_tokens": sum(a.generation.response_mask),
         "finish_reason": a.generation.finish_reason, **a.score, "gold": gold_answer(a.problem), "eval_seconds": seconds}
        for a in answers
    ]


def run_evaluation(model, tokenizer, config: AZRConfig, *, sets: list[str] | None = None,
                   task_types: list[str] | None = None, run: str = "", iteration: int = 0,
                   progress: Callable[[str, int, int], None] | None = None) -> pd.DataFrame:
    """Evaluate a loaded model on every (set, mode) pair a set serves; one row per answer.

    Defaults come from `config.eval` (sets, task_types, limit, samples). The sampling seed comes
    from (config.seed, iteration, set and mode), so a re-run gives the same rows.
    `progress("<set>/<mode>", done, total)` reports answers generated so far."""
    from azr.sandbox import open_sandbox

    sets = sets if sets is not None else config.eval.sets
    task_types = task_types if task_types is not None else config.eval.task_types
    rows = []
    with open_sandbox(config.executor) as sandbox:
        for set_name in sets:
            served = benchmark_task_types(set_name)
            for task_type in [t for t in task_types if t in served]:
                problems = load_set(sandbox, set_name, task_type, config.eval.limit)
                seed = stage_seed(config.seed, iteration, f"eval/{set_label(set_name)}/{task_type}")
                label = f"{set_label(set_name)}/{task_type}"
                report = partial(progress, label) if progress else None
                for row in evaluate_problems(model, tokenizer, sandbox, problems, config, seed, report):
                    rows.append({"run": run, "iteration": iteration, "set": set_label(set_name), **row})
    if not rows:
        raise BenchmarkError(f"no set among {sets} serves the modes {task_types}")
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al., 2021): 1 - C(n-c, k) / C(n, k), for n >= k."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def eval_metrics(frame: pd.DataFrame, ks: list[int] = (1,)) -> dict[str, float]:
    """`{"eval/<set>/<type>/pass_at_<k>": value, "eval/<set>/<type>/parse_rate": value}` from eval rows.

    pass@k is averaged over problems, for every k in `ks` that every problem has enough samples for.
    (The key says `pass_at_1`, not `pass@1`: MLflow refuses `@` in metric names.)"""
    metrics: dict[str, float] = {}
    for (set_name, task_type), group in frame.groupby(["set", "task_type"], sort=True):
        per_problem = group.groupby("task_id")["correct"].agg(["size", "sum"])
        prefix = f"eval/{set_name}/{task_type}"
        for k in sorted(set(ks)):
            if k <= per_problem["size"].min():
                values = [pass_at_k(int(n), int(c), k) for n, c in zip(per_problem["size"], per_problem["sum"])]
                metrics[f"{prefix}/pass_at_{k}"] = float(np.mean(values))
        metrics[f"{prefix}/parse_rate"] = float(group["parsed"].mean())
    return metrics


def _check_task_type(task_type: str) -> None:
    if task_type not in task_types.names():
        raise BenchmarkError(f"unknown mode {task_type!r}; expected one of {', '.join(task_types.names())}")


# ---------------------------------------------------------------- comparing two evaluations


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame, *, resamples: int = 10_000, seed: int = 0) -> list[dict[str, Any]]:
    """pass@1 of two evaluations on the same problems, per (set, task type), with the paired difference
    B - A and a two-sided p-value for "no difference".

    With one answer per problem (greedy), the exact McNemar test ("McNemar"): a binomial test on the
    problems only one of the two solved. With several, a paired bootstrap ("bootstrap", `resamples`
    draws of the problems) of the difference in mean pass@1. Only problems both evaluations answered
    count."""
    from scipy.stats import binomtest

    def per_problem(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.groupby(["set", "task_type", "task_id"])["correct"].agg(["mean", "size"])

    joined = per_problem(a).join(per_problem(b), lsuffix="_a", rsuffix="_b", how="inner")
    if joined.empty:
        raise BenchmarkError("the two evaluations share no problem (same set, mode and problem id)")
    rows = []
    for (set_name, task_type), group in joined.groupby(level=[0, 1], sort=True):
        pa, pb = group["mean_a"].to_numpy(), group["mean_b"].to_numpy()
        greedy = bool((group["size_a"] == 1).all() and (group["size_b"] == 1).all())
        only_a, only_b = int(((pa == 1) & (pb == 0)).sum()), int(((pa == 0) & (pb == 1)).sum())
        if greedy:
            test = "McNemar"
            p_value = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        else:
            test = "bootstrap"
            rng = np.random.default_rng(seed)
            picks = rng.integers(0, len(pa), size=(resamples, len(pa)))
            diffs = (pb[picks] - pa[picks]).mean(axis=1)
            p_value = min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean()))
        rows.append({"set": set_name, "task_type": task_type, "problems": len(group), "pass_at_1_a": float(pa.mean()),
                     "pass_at_1_b": float(pb.mean()), "difference": float(pb.mean() - pa.mean()),
                     "only_a": only_a, "only_b": only_b, "p_value": float(p_value), "test": test})
    return rows
