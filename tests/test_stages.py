"""Self-play stages on one iteration with tiny-random and the real sandbox (issue 5)."""

from pathlib import Path

import pandas as pd
import pytest

from azr.artifacts import ArtifactError, RunDir, manifest_path, read_table, write_table
from azr.config import load_config
from azr.pipeline import BUFFER
from stages.buffer import update_buffer
from stages.propose import propose
from stages.score import score
from stages.setup import setup_run
from stages.solve import solve
from stages.validate import validate

ROOT = Path(__file__).resolve().parents[1]

PROPOSAL_COLUMNS = {"run", "iteration", "task_id", "task_type", "prompt", "prompt_ids", "response", "response_ids",
                    "response_mask", "logprobs", "finish_reason", "parsed", "parse_reason", "program", "input", "inputs", "message",
                    "reference_ids", "generate_seconds"}
TASK_COLUMNS = {"run", "iteration", "task_id", "task_type", "source", "accepted", "forced", "reason", "program",
                "input", "output", "inputs", "outputs", "message", "shown", "complexity", "validate_seconds"}
SOLUTION_COLUMNS = {"run", "iteration", "task_id", "task_type", "sample", "prompt", "prompt_ids", "response",
                    "response_ids", "response_mask", "logprobs", "finish_reason", "parsed", "parse_reason", "answer", "correct",
                    "check_status", "solve_seconds"}
REWARD_COLUMNS = {"run", "iteration", "task_id", "task_type", "role", "sample", "prompt_ids", "response_ids",
                  "response_mask", "logprobs", "valid", "solve_rate", "learnability", "diversity", "complexity", "format",
                  "correctness", "reward", "advantage"}


def smoke_config(tmp_path, *overrides):
    return load_config(ROOT / "configs" / "smoke.yaml", [f"orchestration.runs_dir={tmp_path}", *overrides])


@pytest.fixture(scope="module")
def iteration_one(tmp_path_factory):
    """One full iteration (propose -> validate -> solve -> score), shared by the checks below."""
    tmp_path = tmp_path_factory.mktemp("runs")
    config = smoke_config(tmp_path, "tasks_per_iteration=6")
    run = setup_run(config, tmp_path)
    paths = {}
    for stage in (propose, validate, solve, score):
        paths[stage.__name__] = stage(config, run, 1)
    return config, run, paths


def test_seed_buffer_holds_identity_triplet_and_sandbox_outputs(iteration_one):
    _, run, _ = iteration_one
    buffer = read_table(BUFFER.output(run, 0))
    assert len(buffer) >= 13
    identity = buffer.iloc[0]
    assert identity["program"].strip() == "def f(a):\n    return a"
    assert identity["input"] == '"Hello world"' and identity["output"] == "'Hello world'"
    assert all(len(i) == len(o) == 10 for i, o in zip(buffer["inputs"], buffer["outputs"]))


def test_one_iteration_writes_every_column_and_row(iteration_one):
    config, run, paths = iteration_one
    proposals = read_table(paths["propose"])
    tasks = read_table(paths["validate"])
    solutions = read_table(paths["solve"])
    rewards = read_table(paths["score"])
    assert set(proposals.columns) == PROPOSAL_COLUMNS and len(proposals) == 6
    assert set(tasks.columns) == TASK_COLUMNS
    assert set(solutions.columns) == SOLUTION_COLUMNS
    assert set(rewards.columns) == REWARD_COLUMNS
    assert set(proposals["task_type"]) <= set(config.task_types)
    assert all(len(ids) == len(lp) for ids, lp in zip(proposals["response_ids"], proposals["logprobs"]))
    # every proposal is judged; the solve batch is full, topped up from the buffer when needed
    assert set(proposals["task_id"]) <= set(tasks["task_id"])
    assert tasks["accepted"].sum() == config.tasks_per_iteration
    assert (tasks.loc[~tasks["accepted"], "reason"].notna()).all()
    assert (tasks.loc[tasks["source"] == "buffer", "accepted"]).all()
    assert len(solutions) == tasks["accepted"].sum() * config.rewards.n_samples
    assert len(rewards) == len(proposals) + len(solutions)
    from azr.rewards import rejection_reward

    reasons = tasks.set_index("task_id")["reason"]
    for row in rewards[~rewards["valid"]].itertuples():  # each rejected proposal on the ladder, by its reason
        assert row.reward == rejection_reward(reasons[row.task_id], config.is_forced(1), config.rewards)


def test_second_call_of_each_stage_computes_nothing(iteration_one):
    config, run, paths = iteration_one
    before = {name: (p.stat().st_mtime_ns, manifest_path(p).read_text()) for name, p in paths.items()}
    for stage in (propose, validate, solve, score):
        assert stage(config, run, 1) == paths[stage.__name__]
    after = {name: (p.stat().st_mtime_ns, manifest_path(p).read_text()) for name, p in paths.items()}
    assert before == after


def test_buffer_update_adds_accepted_proposals_once(iteration_one):
    config, run, paths = iteration_one
    tasks = read_table(paths["validate"])
    new_buffer = read_table(update_buffer(config, run, 1))
    old_buffer = read_table(BUFFER.output(run, 0))
    added = new_buffer[new_buffer["origin_iteration"] == 1]
    proposed = tasks[tasks["accepted"] & (tasks["source"] == "proposed")]
    assert len(new_buffer) == len(old_buffer) + len(added)
    assert len(added) <= len(proposed)
    assert set(added["task_id"]) <= set(proposed["task_id"])


def hand_written_proposals(run: RunDir, iteration: int, buffer: pd.DataFrame) -> Path:
    """Proposals as the propose stage would write them, with known programs (a real input file, no model)."""
    base = {"run": run.name, "iteration": iteration, "prompt": "", "prompt_ids": [1], "response": "",
            "response_ids": [2], "response_mask": [True], "logprobs": [-0.1], "finish_reason": "stop", "inputs": None, "message": None,
            "reference_ids": [], "generate_seconds": 0.0}
    known = buffer.iloc[1]  # def f(nums): return sorted(set(nums), reverse=True), on [3, 1, 2, 3]
    renamed = known["program"].replace("nums", "values").replace("    return", "    # a comment\n    return")
    rows = [
        {**base, "task_id": "dup", "task_type": "deduction", "parsed": True, "parse_reason": None,
         "program": known["program"], "input": known["input"].replace(" ", "")},  # the same task, respelled
        {**base, "task_id": "near", "task_type": "deduction", "parsed": True, "parse_reason": None,
         "program": renamed, "input": known["input"]},
        {**base, "task_id": "new_input", "task_type": "deduction", "parsed": True, "parse_reason": None,
         "program": known["program"], "input": "[4, 4, 2]"},
        {**base, "task_id": "called", "task_type": "deduction", "parsed": True, "parse_reason": None,
         "program": known["program"].replace("sorted(", "list(").replace(", reverse=True", ""), "input": known["input"]},
        {**base, "task_id": "expression", "task_type": "deduction", "parsed": True, "parse_reason": None,
         "program": "def f(x):\n    return x * 3", "input": "sorted([3, 1])"},
        {**base, "task_id": "repeats", "task_type": "induction", "parsed": True, "parse_reason": None,
         "program": known["program"], "input": None, "inputs": ["[1, 2]", "[1,2]", "[1, 2]"], "message": "m"},
        {**base, "task_id": "io", "task_type": "deduction", "parsed": True, "parse_reason": None,
         "program": "def f(p):\n    return open(p).read()[:50]", "input": "'/etc/passwd'"},
        {**base, "task_id": "fresh", "task_type": "abduction", "parsed": True, "parse_reason": None,
         "program": "def g(s, n):\n    out = []\n    for i, ch in enumerate(s):\n        out.append(ch * ((i % n) + 1))\n    return '-'.join(out)",
         "input": "'abc', 2"},
        {**base, "task_id": "broken", "task_type": "deduction", "parsed": True, "parse_reason": None,
         "program": "def f(x):\n    return x +", "input": "1"},
        {**base, "task_id": "banned", "task_type": "deduction", "parsed": True, "parse_reason": None,
         "program": "import os\ndef f(x):\n    return os.getpid() + x", "input": "1"},
        {**base, "task_id": "unparsed", "task_type": "deduction", "parsed": False, "parse_reason": "no_answer_tag",
         "program": None, "input": None},
    ]
    return write_table(pd.DataFrame(rows), run.stage_file(iteration, "proposals.parquet"))


@pytest.mark.parametrize("iteration, threshold, forced", [(1, 1, True), (2, 1, False)])
def test_force_acceptance_before_and_after_threshold(tmp_path, iteration, threshold, forced):
    config = smoke_config(tmp_path, f"force_accept_threshold={threshold}", "tasks_per_iteration=5")
    run = setup_run(config, tmp_path)
    buffer = read_table(BUFFER.output(run, 0))
    write_table(buffer, BUFFER.output(run, iteration - 1))
    hand_written_proposals(run, iteration, buffer)
    tasks = read_table(validate(config, run, iteration)).set_index("task_id")
    # ground-truth failures are rejected either way, with their reason
    assert not tasks.at["broken", "accepted"] and tasks.at["broken", "reason"] == "syntax"
    assert not tasks.at["banned", "accepted"] and tasks.at["banned", "reason"] == "banned"
    assert not tasks.at["unparsed", "accepted"] and tasks.at["unparsed", "reason"] == "no_answer_tag"
    assert not tasks.at["expression", "accepted"] and tasks.at["expression", "reason"] == "not_literal"
    assert not tasks.at["repeats", "accepted"] and tasks.at["repeats", "reason"] == "repeated_inputs"
    assert not tasks.at["io", "accepted"] and tasks.at["io", "reason"] == "impure"
    assert tasks.at["fresh", "accepted"] and tasks.at["fresh", "forced"] == forced
    assert tasks.at["fresh", "program"].startswith("def f(")  # the first function is renamed f
    assert tasks.at["fresh", "output"] == "'a-bb-c'"
    # a copy of a buffer task: waived under force acceptance, rejected after it
    assert tasks.at["dup", "accepted"] == forced and tasks.at["near", "accepted"] == forced
    if forced:
        assert pd.isna(tasks.at["dup", "reason"]) and pd.isna(tasks.at["near", "reason"])
    else:
        assert tasks.at["dup", "reason"] == "duplicate" and tasks.at["near", "reason"] == "near_duplicate"
    # a known program on a new input, or another function called on the same input, is a new task
    assert tasks.at["new_input", "accepted"] and tasks.at["called", "accepted"]
    assert tasks["accepted"].sum() == 5  # topped up from the buffer
    assert (tasks.loc[tasks["source"] == "buffer", "forced"] == False).all()  # noqa: E712
    if not forced:  # a duplicate is a real task: the mildest penalty; the rest the paper's rule
        solve(config, run, iteration)
        rewards = read_table(score(config, run, iteration)).query("role == 'propose'").set_index("task_id")["reward"]
        assert rewards["dup"] == rewards["near"] == config.rewards.duplicate_penalty == -0.25
        readable = ["broken", "banned", "expression", "repeats", "io"]  # well formed, but no valid task
        assert (rewards[readable] == config.rewards.wrong_task_penalty).all() and rewards["unparsed"] == -1.0


def test_missing_or_corrupt_stage_input_is_named(tmp_path):
    config = smoke_config(tmp_path)
    run = setup_run(config, tmp_path)
    with pytest.raises(ArtifactError, match="proposals.parquet: file not found"):
        validate(config, run, 1)
    path = hand_written_proposals(run, 1, read_table(BUFFER.output(run, 0)))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ArtifactError, match="proposals.parquet: contents do not match its manifest"):
        validate(config, run, 1)


def test_proposer_prompts_drop_references_never_their_instructions(iteration_one):
    config, run, _ = iteration_one
    from azr.data_construction import proposer_request
    from azr.seeding import stage_rng

    buffer = read_table(BUFFER.output(run, 0))
    config = config.model_copy(update={"buffer": config.buffer.model_copy(update={"references": 3})})
    prompt, refs, _ = proposer_request("deduction", buffer, config, stage_rng(0, 1, "t"),
                                       fits=lambda text: text.count("Reference task") <= 1)
    assert len(refs) == 1 and prompt.count("Reference task") == 1
    assert prompt.startswith("Design a new Python reasoning task") and "<answer>" in prompt
    with pytest.raises(ValueError, match="without references is longer than sampling.max_prompt_tokens"):
        proposer_request("deduction", buffer, config, stage_rng(0, 1, "t"), fits=lambda text: False)


def test_a_task_whose_solver_prompt_is_too_long_is_rejected_even_when_forced(iteration_one):
    config, run, paths = iteration_one
    from stages.validate import _fits_solver, solver_prompt_fits

    tasks = read_table(paths["validate"])
    task = tasks[tasks["accepted"] & (tasks["task_type"] != "induction")].iloc[0].to_dict()
    tight = config.model_copy(update={"sampling": config.sampling.model_copy(update={"max_prompt_tokens": 10})})
    judged = _fits_solver(task, solver_prompt_fits(tight))
    assert not judged["accepted"] and judged["reason"] == "prompt_too_long"
    assert _fits_solver(task, solver_prompt_fits(config)) == task
