"""The task-type registry: a new type is one registered entry plus its prompts, and every stage runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from azr import task_types
from azr.artifacts import read_table
from azr.config import ConfigError, load_config
from azr.literals import parse_literal
from azr.rewards import value_type
from azr.sandbox.client import CheckResult
from stages.propose import propose
from stages.score import score
from stages.setup import setup_run
from stages.solve import solve
from stages.validate import validate

ROOT = Path(__file__).resolve().parents[1]

OUTPUT_TYPE_PROMPT = """\
Which type of value does the Python function `f` return for the input below?

```python
{program}
```
```input
{input}
```

{answer_format}"""
ENDING = "Answer with the type's name as a string literal, such as 'list', inside <answer> </answer>."


class OutputType(task_types.Deduction):
    """A toy fourth type: the proposer writes a program and an input (as for deduction); the solver
    names the type of value it returns; the check needs no sandbox."""

    name = "output_type"
    solve_template = OUTPUT_TYPE_PROMPT
    solve_endings = (ENDING, ENDING)

    def check(self, sandbox, tasks, answers):
        results = []
        for task, answer in zip(tasks, answers):
            parsed = parse_literal(answer)
            results.append(CheckResult(parsed.ok and parsed.value == value_type(task["output"]), "ok" if parsed.ok else "not_literal"))
        return results


@pytest.fixture
def toy():
    task_types.register(OutputType())
    yield
    task_types.unregister("output_type")


def test_a_registered_type_runs_through_propose_validate_solve_and_score(toy, tmp_path):
    config = load_config(ROOT / "configs" / "smoke.yaml", [
        f"orchestration.runs_dir={tmp_path}", "task_types=[output_type, deduction]", "task_distribution=[0.75, 0.25]",
        "tasks_per_iteration=4",
    ])
    run = setup_run(config, tmp_path)
    proposals = read_table(propose(config, run, 1))
    tasks = read_table(validate(config, run, 1))
    solutions = read_table(solve(config, run, 1))
    rewards = read_table(score(config, run, 1))
    assert "output_type" in set(proposals["task_type"])
    posed = tasks[tasks["accepted"] & (tasks["task_type"] == "output_type")]
    assert len(posed), "a buffer top-up or a proposal should be posed as the new type"
    asked = solutions[solutions["task_type"] == "output_type"]
    assert len(asked) == len(posed) * config.rewards.n_samples
    assert asked["prompt"].str.contains("Which type of value does the Python function").all()
    # The toy's own check judged them: a literal answer is checked, anything else is not_literal.
    assert set(asked["check_status"]) <= {"ok", "not_literal", "unparsed"}
    assert set(rewards.loc[rewards["task_type"] == "output_type", "role"]) == {"solve"} | (
        {"propose"} if "output_type" in set(proposals["task_type"]) else set())


def test_an_unregistered_type_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="unknown task type 'output_type'; expected one of abduction, deduction, induction"):
        load_config(None, ["task_types=[output_type]", "task_distribution=[1.0]"])
    with pytest.raises(ValueError, match="unknown task type 'output_type'"):
        task_types.get("output_type")


def test_every_registered_type_has_its_pieces():
    for name in task_types.names():
        kind = task_types.get(name)
        assert kind.name == name and kind.answer_label and kind.gold_key and kind.solve_layout
        assert kind.propose_layout(3) and "{answer_format}" in kind.solve_template
