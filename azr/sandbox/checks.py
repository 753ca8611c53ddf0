"""The batched sandbox operations: validate proposals, check deduction/abduction/induction answers.

Each one checks its items on the host first (shape, parse, banned imports, impure builtins, the
literal rule for answers, without running anything), sends the rest to the sandbox in one batch, and
returns one result per item, in order. The host skips the parse where it could find nothing the
runner's own compile does not report with the same status: ASCII text without a telltale word
(`safety.could_escape`), and for a program, one that already starts with `def f(` (no rename to do).

Answers follow the literal rule (`azr.literals`; status `not_literal` otherwise) unless a check is
asked for `expressions=True`, CRUXEval's own rule, under which an answer may be any expression.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from azr.literals import parse_arguments, parse_literal
from azr.sandbox.results import CheckResult, ValidationResult
from azr.sandbox.safety import check_expression, check_program, could_escape, program_status

if TYPE_CHECKING:
    from azr.sandbox.client import Sandbox


def _texts(value: Any, what: str, index: int) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"item {index}: {what} must be a list of strings, got {value!r:.200}")
    return list(value)


def _text(value: Any, what: str, index: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"item {index}: {what} must be a string, got {type(value).__name__}")
    return value


def _unpack(item: Any, size: int, shape: str, index: int) -> tuple:
    if not isinstance(item, (list, tuple)) or len(item) != size:
        raise ValueError(f"item {index}: expected a tuple {shape}, got {item!r:.200}")
    return tuple(item)


def _gate_program(program: str, banned: list[str]) -> tuple[str | None, str | None]:
    if program.startswith("def f(") and not could_escape(program, banned):
        return program, None  # nothing to rename, nothing banned; a syntax error is the runner's to report
    return check_program(program, banned)


def _gate_expression(text: str, banned: list[str], what: str) -> str | None:
    return check_expression(text, banned, what) if could_escape(text, banned) else None


def _first_problem(texts: list[str], banned: list[str], what: str) -> str | None:
    for number, text in enumerate(texts):
        reason = _gate_expression(text, banned, f"{what} {number}")
        if reason:
            return reason
    return None


def _banned_field(sandbox: "Sandbox", banned: list[str]) -> dict[str, list[str]]:
    """Nothing when `banned` is the pool's own list (the runners have it), else the list itself."""
    return {} if list(banned) == list(sandbox.config.banned_modules) else {"banned": list(banned)}


def _run(sandbox: "Sandbox", jobs: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Run the jobs that passed the host checks; keyed by item index."""
    indices = list(jobs)
    return dict(zip(indices, sandbox.run([jobs[i] for i in indices])))


def validate(sandbox: "Sandbox", items: list[tuple[str, list[str]]], banned: list[str]) -> list[ValidationResult]:
    results: dict[int, ValidationResult] = {}
    jobs: dict[int, dict[str, Any]] = {}
    normalised: dict[int, str] = {}
    banned_field = _banned_field(sandbox, banned)
    for index, item in enumerate(items):
        program, inputs = _unpack(item, 2, "(program, inputs)", index)
        program, inputs = _text(program, "program", index), _texts(inputs, "inputs", index)
        if not inputs:
            raise ValueError(f"item {index}: needs at least one input")
        normalised[index], reason = _gate_program(program, banned)
        reason = reason or _first_problem(["f(" + text + "\n)" for text in inputs], banned, "input")
        if reason:
            results[index] = ValidationResult(program_status(reason), normalised[index] or program, [], reason, 0.0)
            continue
        jobs[index] = {"kind": "validate", "program": normalised[index], "inputs": inputs, "runs": sandbox.config.determinism_runs, **banned_field}
    for index, answer in _run(sandbox, jobs).items():
        results[index] = ValidationResult(
            answer["status"], normalised[index], answer.get("outputs", []), answer.get("error"), answer.get("seconds", 0.0)
        )
    return [results[i] for i in range(len(items))]


def _checks(sandbox: "Sandbox", jobs: dict[int, dict[str, Any]], refused: dict[int, CheckResult], count: int) -> list[CheckResult]:
    for index, answer in _run(sandbox, jobs).items():
        refused[index] = CheckResult(bool(answer.get("correct")) and answer["status"] == "ok", answer["status"], answer.get("error"), answer.get("seconds", 0.0))
    return [refused[i] for i in range(count)]


def _gold_refusal(golds: list[str]) -> CheckResult | None:
    """A gold output that is not a literal makes the request malformed (no answer can equal it)."""
    for gold in golds:
        parsed = parse_literal(gold)
        if not parsed.ok:
            return CheckResult(False, "malformed", f"gold output {gold[:80]!r} is {parsed.reason}")
    return None


def _literal_refusal(answer: str, golds: list[str], arguments: bool) -> CheckResult | None:
    """Why a check cannot pass under the literal rule before anything runs: a gold output that is not a
    literal (malformed) or an answer that is not one (`not_literal`); else None."""
    parsed = parse_arguments(answer) if arguments else parse_literal(answer)
    return _gold_refusal(golds) or (None if parsed.ok else CheckResult(False, "not_literal", f"answer is {parsed.reason}"))


def check_deduction(sandbox: "Sandbox", items: list[tuple[str, str]], expressions: bool = False) -> list[CheckResult]:
    banned = sandbox.config.banned_modules
    refused: dict[int, CheckResult] = {}
    jobs: dict[int, dict[str, Any]] = {}
    for index, item in enumerate(items):
        gold, answer = (_text(v, w, index) for v, w in zip(_unpack(item, 2, "(gold output, answer)", index), ("gold output", "answer")))
        if expressions:
            reason = _gate_expression(answer, banned, "answer")
            refusal = CheckResult(False, program_status(reason), reason) if reason else None
        else:
            refusal = _literal_refusal(answer, [gold], arguments=False)
        if refusal:
            refused[index] = refusal
        else:
            jobs[index] = {"kind": "deduction", "gold": gold, "answer": answer, **({"expressions": True} if expressions else {})}
    return _checks(sandbox, jobs, refused, len(items))


def check_abduction(sandbox: "Sandbox", items: list[tuple[str, str, str]], expressions: bool = False) -> list[CheckResult]:
    banned = sandbox.config.banned_modules
    refused: dict[int, CheckResult] = {}
    jobs: dict[int, dict[str, Any]] = {}
    for index, item in enumerate(items):
        program, answer, gold = (
            _text(v, w, index) for v, w in zip(_unpack(item, 3, "(program, answer, gold output)", index), ("program", "answer", "gold output"))
        )
        program, reason = _gate_program(program, banned)
        if not reason and expressions:
            reason = _gate_expression(answer, banned, "answer")
        refusal = CheckResult(False, program_status(reason), reason) if reason else None
        refusal = refusal or (None if expressions else _literal_refusal(answer, [gold], arguments=True))
        if refusal:
            refused[index] = refusal
        else:
            jobs[index] = {"kind": "abduction", "program": program, "answer": answer, "gold": gold, **({"expressions": True} if expressions else {})}
    return _checks(sandbox, jobs, refused, len(items))


def check_induction(sandbox: "Sandbox", items: list[tuple[str, list[str], list[str]]]) -> list[CheckResult]:
    banned = sandbox.config.banned_modules
    refused: dict[int, CheckResult] = {}
    jobs: dict[int, dict[str, Any]] = {}
    for index, item in enumerate(items):
        program, inputs, golds = _unpack(item, 3, "(program, inputs, gold outputs)", index)
        program, inputs, golds = _text(program, "program", index), _texts(inputs, "inputs", index), _texts(golds, "gold outputs", index)
        if len(inputs) != len(golds):
            raise ValueError(f"item {index}: {len(inputs)} inputs but {len(golds)} gold outputs")
        program, reason = _gate_program(program, banned)
        reason = reason or _first_problem(["f(" + text + "\n)" for text in inputs], banned, "input")
        refusal = CheckResult(False, program_status(reason), reason) if reason else None
        refusal = refusal or _gold_refusal(golds)
        if refusal:
            refused[index] = refusal
        else:
            jobs[index] = {"kind": "induction", "program": program, "inputs": inputs, "golds": golds}
    return _checks(sandbox, jobs, refused, len(items))
