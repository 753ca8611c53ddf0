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
import zlib
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from azr import prompts, schemas
from azr.config import TASK_TYPES, AZRConfig, SamplingConfig
from azr.answers import score_responses
from azr.data_construction import solver_view, split_induction
from azr.formats import solver_format
from azr.parsing import ANSWER_KIND
from azr.seeding import stage_seed

HELDOUT = "heldout"
HELDOUT_DIR = Path(__file__).parent / "data" / "heldout"
PAIR_TYPES = ("abduction", "deduction")  # the modes a CRUXEval-format file serves
GOLD_KEY = {"deduction": "output", "abduction": "input", "induction": "program"}

EVAL = pa.schema(schemas.KEYS + [
    ("set", schemas.STR), ("sample", schemas.INT), ("prompt", schemas.STR), ("response", schemas.STR),
    ("response_tokens", schemas.INT), ("finish_reason", schemas.STR), ("parsed", schemas.BOOL),
    ("parse_reason", schemas.STR), ("answer", schemas.STR), ("correct", schemas.BOOL), ("check_status", schemas.STR),
    ("check_error", schemas.STR), ("gold", schemas.STR), ("eval_seconds", schemas.FLOAT),
])


Progress = Callable[[int, int], None]  # (answers done, answers in all)


class BenchmarkError(ValueError):
    """A benchmark file or problem that cannot be evaluated; the message names the file and line."""


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
    """The modes a set serves: all three for `heldout`; from its first row's keys for a file."""
    if set_name == HELDOUT:
        return TASK_TYPES
    path = benchmark_path(set_name, "deduction")
    with open(path) as fh:
        first = next((line for line in fh if line.strip()), None)
    if first is None:
        raise BenchmarkError(f"{path}: benchmark file is empty")
    return ("induction",) if "inputs" in _json_row(first, path, 1) else PAIR_TYPES


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
    task_id = str(row.get("id", where.rsplit(":", 1)[-1]))
    task = {"task_id": task_id, "task_type": task_type, "program": program,
            "input": None, "output": None, "inputs": [], "outputs": [], "message": "", "shown": []}
    if task_type == "induction":
        inputs = row.get("inputs")
        if not isinstance(inputs, list) or len(inputs) < 2 or not all(isinstance(i, str) for i in inputs):
            raise BenchmarkError(f"{where}: induction needs 'inputs', a list of at least 2 argument strings")
        message = row.get("message", "")
        if not isinstance(message, str):
            raise BenchmarkError(f"{where}: 'message' must be a string")
        return {**task, "inputs": inputs, "message": message}
    for key in ("input", "output"):
        if not isinstance(row.get(key), str):
            raise BenchmarkError(f"{where}: {task_type} needs '{key}' as a string (CRUXEval format: code, input, output, id)")
    return {**task, "input": row["input"], "output": row["output"]}


def complete_induction(sandbox, problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Induction problems with their outputs (run in the sandbox) and a fixed half of the pairs shown.

    The shown half depends only on the problem id, so every model sees the same pairs."""
    results = sandbox.validate([(p["program"], list(p["inputs"])) for p in problems])
    completed = []
    for problem, result in zip(problems, results):
        if result.status != "ok":
            raise BenchmarkError(f"induction problem {problem['task_id']}: the program does not run on its "
                                 f"inputs in the sandbox ({result.status}: {result.error})")
        rng = np.random.default_rng(zlib.crc32(problem["task_id"].encode()))
        shown = split_induction(len(problem["inputs"]), rng)
        completed.append({**problem, "outputs": list(result.outputs), "shown": shown})
    return completed


def load_set(sandbox, set_name: str, task_type: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The problems of one set in one mode, ready to prompt (induction outputs computed)."""
    problems = read_problems(benchmark_path(set_name, task_type), task_type, limit)
    return complete_induction(sandbox, problems) if task_type == "induction" else problems


# ---------------------------------------------------------------- checking answers


def gold_answer(problem: dict[str, Any]) -> str:
    """The reference answer: the output (deduction), the input (abduction), the program (induction)."""
    return problem[GOLD_KEY[problem["task_type"]]]


def answer_response(task_type: str, answer: str) -> str:
    """A response that gives `answer` in the format the solver prompt asks for."""
    return f"<think>known answer</think>\n<answer>\n```{ANSWER_KIND[task_type]}\n{answer}\n```\n</answer>"


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

    `progress(done, total)` is called after each batch of `sampling.batch_size` answers."""
    from azr.generation import generate, open_backend  # torch is slow to import; reading and scoring do without it

    started = time.perf_counter()
    sampling = eval_sampling(config)
    backend = open_backend(config, model, tokenizer, sampling)
    mode = config.generation.answer_format
    rollouts = [(p, sample) for p in problems for sample in range(config.eval.samples)]
    rendered = [prompts.render_chat(tokenizer, prompts.solver_prompt(p["task_type"], solver_view(p), mode))
                for p, _ in rollouts]
    formats = [solver_format(config, p) for p, _ in rollouts]
    generations = []
    for start in range(0, len(rendered), sampling.batch_size):
        end = start + sampling.batch_size
        generations += generate(backend, tokenizer, rendered[start:end], formats[start:end], sampling, seed=seed + start)
        if progress is not None:
            progress(len(generations), len(rendered))
    scores = score_responses(sandbox, [p for p, _ in rollouts], [g.text for g in generations], config.eval.strict)
    seconds = (time.perf_counter() - started) / max(len(rollouts), 1)
    return [
        {"task_id": p["task_id"], "task_type": p["task_type"], "sample": sample, "prompt": prompt,
         "response": g.text, "response_tokens": sum(g.response_mask), "finish_reason": g.finish_reason,
         **score, "gold": gold_answer(p), "eval_seconds": seconds}
        for (p, sample), prompt, g, score in zip(rollouts, rendered, generations, scores)
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
    if task_type not in TASK_TYPES:
        raise BenchmarkError(f"unknown mode {task_type!r}; expected one of {', '.join(TASK_TYPES)}")


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
