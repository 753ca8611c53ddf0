"""Checking solver answers: parse each response, then check its answer in the sandbox, batched by type.

One checking path for self-play (the solve stage), held-out evaluation (`azr eval`) and `azr check`,
so an answer counts as right in the same way in all three. Answers follow the literal rule
(`azr.literals`): anything else is `not_literal`, wrong, and a format error for the reward.
"""

from __future__ import annotations

from typing import Any

from azr import task_types

CHECK_COLUMNS = ("correct", "check_status", "check_error")  # what `check_rows` adds to each row


def check_answers(sandbox, problems: list[dict[str, Any]], answers: list[str | None]) -> list[Any]:
    """Sandbox CheckResults for each (problem, answer text) pair, one batch per task type; None where
    the answer is None."""
    results: list[Any] = [None] * len(problems)
    batches: dict[str, list[int]] = {}
    for i, (problem, answer) in enumerate(zip(problems, answers, strict=True)):
        if answer is not None:
            batches.setdefault(problem["task_type"], []).append(i)
    for name, indices in batches.items():
        checked = task_types.get(name).check(sandbox, [problems[i] for i in indices], [answers[i] for i in indices])
        for i, result in zip(indices, checked):
            results[i] = result
    return results


def score_responses(sandbox, problems: list[dict[str, Any]], texts: list[str], strict: bool) -> list[dict[str, Any]]:
    """Parse each response text and check its answer in the sandbox: the columns parsed,
    parse_reason, answer, correct, check_status, check_error for each (problem, text) pair."""
    parsed = [task_types.get(p["task_type"]).parse_answer(text, strict) for p, text in zip(problems, texts, strict=True)]
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
    name = row.get("task_type")
    if name not in task_types.names():
        raise RowError(f"{where}: `task_type` must be one of {', '.join(task_types.names())}, not {name!r}")
    if not isinstance(row.get("program"), str):
        raise RowError(f"{where}: needs the task's `program` as a string")
    kind = task_types.get(name)
    if not kind.shows_pairs:  # the answer is checked against the gold output
        if not isinstance(row.get("output"), str):
            raise RowError(f"{where}: a {name} row needs the gold `output` (a repr) as a string")
        return {"task_type": name, "program": row["program"], "output": row["output"]}
    inputs, outputs = (_texts(row.get(key), key, where) for key in ("inputs", "outputs"))
    if len(inputs) != len(outputs):
        raise RowError(f"{where}: {len(inputs)} `inputs` but {len(outputs)} `outputs`")
    shown = row.get("shown")
    shown = [] if shown is None else list(shown)
    if not all(isinstance(i, int) or hasattr(i, "__index__") for i in shown) or any(not 0 <= int(i) < len(inputs) for i in shown):
        raise RowError(f"{where}: `shown` must list indices of `inputs` (0 to {len(inputs) - 1})")
    return {"task_type": name, "program": row["program"], "inputs": inputs, "outputs": outputs, "shown": [int(i) for i in shown]}


def _texts(value: Any, key: str, where: str) -> list[str]:
    texts = None if value is None or isinstance(value, str) else list(value)
    if not texts or not all(isinstance(text, str) for text in texts):
        raise RowError(f"{where}: an induction row needs `{key}`, a non-empty list of strings")
    return texts
