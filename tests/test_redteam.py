"""The red-team corpus (tests/data/redteam.yaml) against both sandbox backends: every attempt to game
the answer checker or the task validator gets the verdict written next to it.

Answers go through `azr.answers.check_rows`, the solve stage's checking path; programs through the
validate stage's path (`proposal_inputs`, then `Sandbox.validate`). The runner's own literal rule is
tested apart from the host's: jobs sent straight to the runner get the same not_literal verdicts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from azr.answers import check_rows
from azr import task_types
from azr.literals import parse_arguments, parse_literal
from azr.sandbox import runner
from tests.test_sandbox import BACKENDS, open_backend

CORPUS = yaml.safe_load((Path(__file__).parent / "data" / "redteam.yaml").read_text())
ANSWERS, PROGRAMS = CORPUS["answers"], CORPUS["programs"]
VERDICT_KEYS = ("id", "status", "correct", "verdict")


def text(value: str | dict) -> str:
    """A corpus text: as written, or {prefix, middle, suffix, times} spelled out."""
    if isinstance(value, str):
        return value
    return value["prefix"] * value["times"] + value["middle"] + value["suffix"] * value["times"]


def answer_row(entry: dict) -> dict:
    return {**{k: v for k, v in entry.items() if k not in VERDICT_KEYS}, "answer": text(entry["answer"])}


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request):
    with open_backend(request.param) as box:
        yield box


def test_the_corpus_is_big_enough_and_named_once():
    ids = [entry["id"] for entry in ANSWERS + PROGRAMS]
    assert len(ANSWERS) >= 40 and len(PROGRAMS) >= 20
    assert len(ids) == len(set(ids))


def test_every_answer_gets_its_verdict(sandbox):
    checked = check_rows(sandbox, [answer_row(entry) for entry in ANSWERS])
    wrong = {
        entry["id"]: (row["check_status"], row["correct"], row["check_error"])
        for entry, row in zip(ANSWERS, checked)
        if (row["check_status"], row["correct"]) != (entry["status"], entry["correct"])
    }
    assert wrong == {}


def validator_verdict(sandbox, entry: dict) -> tuple[str, str | None]:
    inputs, reason = task_types.get(entry["task_type"]).check_inputs([text(i) for i in entry["inputs"]])
    if reason:
        return reason, None
    result = sandbox.validate([(entry["program"], inputs)])[0]
    return result.status, result.error


def test_every_program_gets_its_verdict(sandbox):
    got = {entry["id"]: validator_verdict(sandbox, entry) for entry in PROGRAMS}
    wrong = {name: verdict for name, verdict in got.items() if verdict[0] != next(e["verdict"] for e in PROGRAMS if e["id"] == name)}
    assert wrong == {}
    impure = [error for status, error in got.values() if status == "impure"]
    assert impure and all(error.endswith("a task must be a pure function of its input") for error in impure)


def runner_job(entry: dict) -> dict | None:
    """The corpus answer as a runner job that skips every host check (as a hand-written job would)."""
    answer = text(entry["answer"])
    if entry["task_type"] == "deduction":
        return {"kind": "deduction", "gold": entry["output"], "answer": answer}
    if entry["task_type"] == "abduction":
        return {"kind": "abduction", "program": entry["program"], "answer": answer, "gold": entry["output"]}
    return None


def test_the_runner_alone_refuses_what_is_not_a_literal(sandbox):
    entries = [e for e in ANSWERS if e["status"] == "not_literal" and runner_job(e)]
    answers = sandbox.run([runner_job(e) for e in entries])
    assert {e["id"]: a["status"] for e, a in zip(entries, answers) if a["status"] != "not_literal"} == {}


def test_the_runner_and_azr_literals_agree_on_every_corpus_answer():
    """The runner restates the literal rule (it imports nothing of azr): both must call the same texts literals."""
    for entry in ANSWERS:
        answer = text(entry["answer"])
        if entry["task_type"] == "deduction":
            try:
                runner.literal_value(answer, "answer")
                runner_ok = True
            except runner.Failure:
                runner_ok = False
            assert runner_ok == parse_literal(answer).ok, entry["id"]
        elif entry["task_type"] == "abduction":
            try:
                runner.literal_arguments(answer)
                runner_ok = True
            except runner.Failure:
                runner_ok = False
            assert runner_ok == parse_arguments(answer).ok, entry["id"]
