"""Checking solver answers: parse each response, then check its answer in the sandbox, batched by type.

One checking path for self-play (the solve stage), held-out evaluation (`azr eval`) and `azr check`,
so an answer counts as right in the same way in all three. Answers follow the literal rule
(`azr.literals`): anything else is `not_literal`, wrong, and a format error for the reward.
"""

from __future__ import annotations

from typing import Any

from azr.config import TASK_TYPES
from azr.data_construction import hidden_pairs
from azr.parsing import parse_answer
from azr.sandbox.client import CheckResult

CHECK_COLUMNS = ("correct", "check_status", "check_error")  # what `check_rows` adds to each row


def check_answers(sandbox, problems: list[dict[str, Any]], answers: list[str | None]) -> list[Any]:
    """Sandbox CheckResults for each (problem, answer text) pair; None where the answer is None."""
    results: list[Any] = [None] * len(problems)
    batches: dict[str, list[tuple[int, tuple]]] = {t: [] for t in TASK_TYPES}
    for i, (problem, answer) in enumerate(zip(problems, answers, strict=True)):
        if answer is None:
            continue
        if problem["task_type"] == "deduction":
            batches["deduction"].append((i, (problem["output"], answer)))
        elif problem["task_type"] == "abduction":
            batches["abduction"].append((i, (problem["program"], answer, problem["output"])))
        else:
            inputs, outputs = hidden_pairs(problem)
            if not inputs:  # every pair shown, or hidden ones that repeat a shown input: nothing to check
                results[i] = CheckResult(False, "malformed", "the task has no hidden pair whose input differs from the shown ones")
                continue
            batches["induction"].append((i, (answer, inputs, outputs)))
    checkers = {"deduction": sandbox.check_deduction, "abduction": sandbox.check_abduction,
                "induction": sandbox.check_induction}
    for task_type, batch in batches.items():
        if batch:
            for (i, _), result in zip(batch, checkers[task_type]([item for _, item in batch])):
                results[i] = result
    return results


def score_responses(sandbox, problems: list[dict[str, Any]], texts: list[str], strict: bool) -> list[dict[str, Any]]:
    """Parse each response text and check its answer in the sandbox: the columns parsed,
    parse_reason, answer, correct, check_status, check_error for each (problem, text) pair."""
    parsed = [parse_answer(p["task_type"], text, strict=strict) for p, text in zip(problems, texts, strict=True)]
    checks = check_answers(sandbox, problems, [a.answer if a.ok else None for a in parsed])
    return [
        {"parsed": a.ok, "parse_reason": a.reason, "answer": a.answer, "correct": bool(c and c.correct),
         "check_status": c.status if c else "unparsed", "check_error": c.error if c else None}
        for a, c in zip(parsed, checks)
    ]


class RowError(ValueError):
    """A row `check_rows` cannot check; the message names the row and the field."""


def check_rows(sandbox, rows: list[dict[str, Any]], where: str = "row") -> list[dict[str, Any]]:
    """`azr check`: every row with its `answer` checked as the solve stage checks it; each row keeps its
    fields and gains `correct`, `check_status` and `check_error`. A row needs `task_type`, `program`
    and `answer` (null: unparsed), and `output` (deduction, abduction) or `inputs` and `outputs`, with
    `shown` (indices of the pairs the solver saw; none when absent), for induction."""
    problems = [_row_problem(row, f"{where} {number}") for number, row in enumerate(rows, 1)]
    answers = [row.get("answer") for row in rows]
    for number, answer in enumerate(answers, 1):
        if answer is not None and not isinstance(answer, str):
            raise RowError(f"{where} {number}: `answer` must be a string or null, not {type(answer).__name__}")
    checks = check_answers(sandbox, problems, answers)
    return [
        {**row, "correct": bool(c and c.correct), "check_status": c.status if c else "unparsed", "check_error": c.error if c else None}
        for row, c in zip(rows, checks)
    ]


def _row_problem(row: dict[str, Any], where: str) -> dict[str, Any]:
    task_type = row.get("task_type")
    if task_type not in TASK_TYPES:
        raise RowError(f"{where}: `task_type` must be one of {', '.join(TASK_TYPES)}, not {task_type!r}")
    if not isinstance(row.get("program"), str):
        raise RowError(f"{where}: needs the task's `program` as a string")
    if task_type != "induction":
        if not isinstance(row.get("output"), str):
            raise RowError(f"{where}: a {task_type} row needs the gold `output` (a repr) as a string")
        return {"task_type": task_type, "program": row["program"], "output": row["output"]}
    inputs, outputs = (_texts(row.get(key), key, where) for key in ("inputs", "outputs"))
    if len(inputs) != len(outputs):
        raise RowError(f"{where}: {len(inputs)} `inputs` but {len(outputs)} `outputs`")
    shown = row.get("shown")
    shown = [] if shown is None else list(shown)
    if not all(isinstance(i, int) or hasattr(i, "__index__") for i in shown) or any(not 0 <= int(i) < len(inputs) for i in shown):
        raise RowError(f"{where}: `shown` must list indices of `inputs` (0 to {len(inputs) - 1})")
    return {"task_type": task_type, "program": row["program"], "inputs": inputs, "outputs": outputs, "shown": [int(i) for i in shown]}


def _texts(value: Any, key: str, where: str) -> list[str]:
    texts = None if value is None or isinstance(value, str) else list(value)
    if not texts or not all(isinstance(text, str) for text in texts):
        raise RowError(f"{where}: an induction row needs `{key}`, a non-empty list of strings")
    return texts
