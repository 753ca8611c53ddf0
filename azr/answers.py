"""Checking solver answers: parse each response, then check its answer in the sandbox, batched by type.

One checking path for self-play (the solve stage) and for held-out evaluation, so an answer
counts as right in the same way in both.
"""

from __future__ import annotations

from typing import Any

from azr.config import TASK_TYPES
from azr.data_construction import hidden_pairs
from azr.parsing import parse_answer


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
            batches["induction"].append((i, (answer, *hidden_pairs(problem))))
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
