"""CRUXEval's own scoring (`azr score cruxeval`): its verdicts and pass@k, to reproduce published numbers.

Self-play and `azr eval` check answers by azr's strict rule (literals only, azr/answers.py); this
module keeps CRUXEval's, under which an answer may be any expression.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from azr.evaluation import BenchmarkError, pass_at_k


def read_problems(path: Path) -> dict[str, dict[str, str]]:
    """id -> {program, input, output} of a cruxeval.jsonl (rows with id, code or program, input, output)."""
    from azr.row_files import read_rows

    problems = {}
    for number, row in enumerate(read_rows(path), 1):
        program = row.get("program", row.get("code"))
        if not all(isinstance(v, str) for v in (row.get("id"), program, row.get("input"), row.get("output"))):
            raise BenchmarkError(f"{path} row {number}: needs string id, code (or program), input and output")
        problems[row["id"]] = {"program": program, "input": row["input"], "output": row["output"]}
    return problems


def read_generations(path: Path) -> dict[str, list[str]]:
    """id -> list of generations; a scored CRUXEval file (with raw_generations) also works."""
    if not path.is_file():
        raise BenchmarkError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise BenchmarkError(f"{path}: not JSON: {exc}") from None
    if isinstance(data, dict) and "raw_generations" in data:
        data = data["raw_generations"]
    if not isinstance(data, dict):
        raise BenchmarkError(f"{path}: expected a JSON object of id -> list of generations")
    for key, generations in data.items():
        if not isinstance(generations, list) or not all(isinstance(g, str) for g in generations):
            raise BenchmarkError(f"{path}: generations for {key!r} must be a list of strings")
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


def cruxeval_result(generations: dict[str, list[str]], scored: dict[str, list[bool]]) -> dict[str, Any]:
    """CRUXEval's scored-file format: the generations, their verdicts, and pass@1 and pass@5 in percent."""
    result: dict[str, Any] = {"raw_generations": generations, "raw_scored_generations": scored}
    for k in (1, 5):
        values = [pass_at_k(len(v), sum(v), k) for v in scored.values()]
        result[f"pass_at_{k}"] = sum(values) / len(values) * 100 if values else 0.0
    return result
