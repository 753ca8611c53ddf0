"""CRUXEval as an external oracle for the sandbox: its 800 programs and CodeLlama's scored generations.

The data lives outside the project, in ../shared/data/cruxeval/ relative to the repository root.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.test_sandbox import BACKENDS, open_backend

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cruxeval"
PROBLEMS = DATA / "cruxeval.jsonl"
OUTPUT_SCORED = DATA / "codellama-7b-temp0.2-output-scored.json"
INPUT_SCORED = DATA / "codellama-7b-temp0.2-input-scored.first200.json"

pytestmark = pytest.mark.skipif(not PROBLEMS.is_file(), reason=f"CRUXEval data not found at {DATA}")


def problems() -> list[dict]:
    return [json.loads(line) for line in PROBLEMS.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    with open_backend(request.param):  # skips (or fails under AZR_REQUIRE_DOCKER) when docker is unusable
        pass
    return request.param


def test_all_800_programs_validate_and_reproduce_the_gold_output(backend):
    rows = problems()
    assert len(rows) == 800
    with open_backend(backend) as sandbox:
        results = sandbox.validate([(row["code"], [row["input"]]) for row in rows])
    wrong = {row["id"]: (r.status, r.error, r.outputs) for row, r in zip(rows, results) if (r.status, r.outputs) != ("ok", [row["output"]])}
    assert wrong == {}


def score(tmp_path: Path, backend: str, scored: Path, mode: str) -> tuple[dict, dict]:
    out = tmp_path / f"scored-{mode}.json"
    args = ["score", "cruxeval", "--data", str(PROBLEMS), "--generations", str(scored), "--mode", mode, "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--set", f"executor.backend={backend}", "--set", "executor.timeout_seconds=3"])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), json.loads(scored.read_text())


def disagreements(ours: dict, theirs: dict) -> list[tuple[str, int, str]]:
    return [
        (key, number, generations[number])
        for key, generations in theirs["raw_generations"].items()
        for number, verdict in enumerate(theirs["raw_scored_generations"][key])
        if ours["raw_scored_generations"][key][number] != verdict
    ]


def test_score_output_mode_agrees_with_every_codellama_verdict(tmp_path, backend):
    ours, theirs = score(tmp_path, backend, OUTPUT_SCORED, "output")
    assert set(ours) == {"raw_generations", "raw_scored_generations", "pass_at_1", "pass_at_5"}
    assert disagreements(ours, theirs) == []
    assert round(ours["pass_at_1"], 2) == 34.21
    assert ours["pass_at_1"] == pytest.approx(theirs["pass_at_1"]) and ours["pass_at_5"] == pytest.approx(theirs["pass_at_5"])


def test_score_input_mode_agrees_with_every_codellama_verdict(tmp_path, backend):
    ours, theirs = score(tmp_path, backend, INPUT_SCORED, "input")
    assert disagreements(ours, theirs) == []
    verdicts = [v for vs in theirs["raw_scored_generations"].values() for v in vs]
    assert ours["pass_at_1"] == pytest.approx(100 * sum(verdicts) / len(verdicts))  # n = 10 per problem


def test_validate_command_keeps_every_field_and_adds_the_verdict(tmp_path):
    rows = problems()[:20]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"id": r["id"], "program": r["code"], "input": r["input"], "gold": r["output"]}) + "\n" for r in rows))
    out = tmp_path / "validated.parquet"
    result = CliRunner().invoke(app, ["validate", str(source), "--out", str(out), "--set", "executor.backend=process"])
    assert result.exit_code == 0, result.output
    import pandas as pd

    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["id", "program", "input", "gold", "output", "status", "error", "seconds"]
    assert (frame["status"] == "ok").all() and (frame["output"] == frame["gold"]).all()
    assert list(frame["id"]) == [r["id"] for r in rows]


def test_validate_command_on_cruxeval_keeps_the_gold_output(tmp_path):
    out = tmp_path / "validated.jsonl"
    result = CliRunner().invoke(app, ["validate", str(PROBLEMS), "--out", str(out), "--set", "executor.backend=process"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 800 and all(r["matches_expected"] and r["output"] == r["expected_output"] for r in rows)
    assert set(rows[0]) == {"code", "input", "expected_output", "id", "matches_expected", "output", "status", "error", "seconds"}


def test_validate_command_reads_parquet_with_input_lists(tmp_path):
    import pandas as pd

    source = tmp_path / "rows.parquet"
    pd.DataFrame({"task_id": ["a", "b"], "code": ["def f(x):\n    return x * 2", "def f(x):\n    while True:\n        pass"], "inputs": [["1", "'a'"], ["1"]]}).to_parquet(source)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["validate", str(source), "--out", str(out), "--set", "executor.backend=process", "--set", "executor.timeout_seconds=1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["task_id"], r["status"], r["outputs"]) for r in rows] == [("a", "ok", ["2", "'aa'"]), ("b", "timeout", None)]


def test_bad_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"program": "def f(x):\\n    return x"}\n')
    result = CliRunner().invoke(app, ["validate", str(bad), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "row 1: needs `input`" in result.output
    gens = tmp_path / "gens.json"
    gens.write_text(json.dumps({"sample_9999": ["1"]}))
    args = ["score", "cruxeval", "--data", str(PROBLEMS), "--generations", str(gens), "--mode", "output", "--out", str(tmp_path / "s.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "sample_9999" in result.output
    result = CliRunner().invoke(app, [*args[:-4], "--mode", "sideways", "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 2 and "--mode must be input or output" in result.output


EXPRESSION_INPUTS = {"sample_152", "sample_239", "sample_258", "sample_344", "sample_364", "sample_378", "sample_459",
                     "sample_522", "sample_694", "sample_720", "sample_760", "sample_770"}


def test_cruxeval_programs_are_tasks_but_for_the_inputs_that_are_expressions():
    """Every program passes the task rules (purity included, see the 800 validated above); 12 of CRUXEval's
    inputs are expressions (`''.join(['A'] * 20)`, lambdas, range(...)), which a task may not have."""
    from azr import task_types
    from azr.sandbox.safety import check_program
    from azr.config import DEFAULT_BANNED_MODULES

    rows = problems()
    assert all(check_program(row["code"], DEFAULT_BANNED_MODULES)[1] is None for row in rows)
    refused = {row["id"] for row in rows if task_types.get("deduction").check_inputs([row["input"]])[1] == "not_literal"}
    assert refused == EXPRESSION_INPUTS


def test_the_near_duplicate_rule_on_cruxeval_pairs_only_renamed_copies():
    """9 pairs of CRUXEval's 800 programs are near duplicates, each the same program with other local names;
    as tasks (each with its own input) none is a duplicate of another."""
    from itertools import combinations

    from azr.dedup import NEAR_DUPLICATE_JACCARD, TaskIndex, fingerprint, jaccard

    rows = problems()
    buckets: dict = {}
    for row in rows:
        buckets.setdefault(fingerprint(row["code"]).vocabulary, []).append(fingerprint(row["code"]))
    scores = [jaccard(a, b) for group in buckets.values() for a, b in combinations(group, 2)]
    assert sum(score >= NEAR_DUPLICATE_JACCARD for score in scores) == 9
    assert all(score == 1.0 for score in scores if score >= NEAR_DUPLICATE_JACCARD)
    index = TaskIndex()
    tasks = [{"task_type": "deduction", "program": row["code"], "input": row["input"]} for row in rows]
    assert [t for t in tasks if index.reason(t) or index.add(t)] == []
