"""Prompt templates: golden files for the six roles, and what every prompt must contain.

After an intended wording change, regenerate the golden files with
`AZR_UPDATE_GOLDEN=1 pytest tests/test_prompts.py` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from azr import prompts
from azr.config import DEFAULT_BANNED_MODULES
from azr.model import tiny_random_tokenizer
from azr import task_types

GOLDEN = Path(__file__).parent / "golden"

REFERENCES = [
    {"program": "def f(a, b):\n    return [x * b for x in a if x % 2 == 0]\n", "input": "[1, 2, 3, 4], 3", "output": "[6, 12]"},
    {"program": "def f(s):\n    return {c: s.count(c) for c in sorted(set(s))}", "input": "'abca'", "output": "{'a': 2, 'b': 1, 'c': 1}"},
]
INDUCTION_REFERENCE = {"program": "def f(n):\n    return sum(int(d) for d in str(n))", "input": "123", "output": "6",
                       "inputs": [], "outputs": [], "message": ""}
TASKS = {
    "deduction": {"program": REFERENCES[0]["program"], "input": "[5, 8, 10], 2", "output": "[16, 20]"},
    "abduction": {"program": REFERENCES[1]["program"], "input": "'aab'", "output": "{'a': 2, 'b': 1}"},
    "induction": {"inputs": ["12", "999", "0"], "outputs": ["3", "27", "0"], "message": "Look at the digits."},
}


def rendered_roles() -> dict[str, str]:
    roles = {}
    for task_type in task_types.names():
        refs = [INDUCTION_REFERENCE] if task_type == "induction" else REFERENCES
        roles[f"propose_{task_type}"] = task_types.get(task_type).proposer_prompt(refs, DEFAULT_BANNED_MODULES, 10)
        roles[f"solve_{task_type}"] = task_types.get(task_type).solver_prompt(TASKS[task_type])
    roles["propose_deduction_no_references"] = task_types.get("deduction").proposer_prompt([], ["os"], 10)
    roles["chat_solve_deduction"] = prompts.render_chat(tiny_random_tokenizer(), roles["solve_deduction"])
    return roles


@pytest.mark.parametrize("role", sorted(rendered_roles()))
def test_golden(role: str) -> None:
    text = rendered_roles()[role]
    path = GOLDEN / f"{role}.txt"
    if os.environ.get("AZR_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run AZR_UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text()


@pytest.mark.parametrize("task_type", task_types.names())
def test_proposer_prompts_state_the_banned_modules_and_format(task_type: str) -> None:
    refs = [INDUCTION_REFERENCE] if task_type == "induction" else REFERENCES
    text = task_types.get(task_type).proposer_prompt(refs, ["pickle", "socket"], 7)
    assert "pickle, socket" in text
    assert "<think>" in text and "<answer>" in text and "</answer>" in text
    if task_type == "induction":
        assert INDUCTION_REFERENCE["program"] in text
        assert "7 different inputs" in text and "```message" in text
    else:
        for ref in REFERENCES:
            assert ref["program"].strip() in text and ref["input"] in text and ref["output"] in text
        assert "```python" in text and "```input" in text


def test_induction_solver_sees_only_the_given_pairs_and_message() -> None:
    text = task_types.get("induction").solver_prompt(TASKS["induction"])
    for i, o in zip(TASKS["induction"]["inputs"], TASKS["induction"]["outputs"]):
        assert f"```input\n{i}\n```\n```output\n{o}\n```" in text
    assert "Look at the digits." in text
    assert "def f(n)" not in text  # the program itself is what the solver must find


@pytest.mark.parametrize(
    "task_type, answer",
    [("deduction", "```output\n[16, 20]\n```"), ("abduction", "```input\n'aab'\n```"),
     ("induction", "```python\ndef f(n):\n    return n\n```")],
)
def test_an_answer_in_the_requested_format_parses_strictly(task_type: str, answer: str) -> None:
    assert "exactly like this" in task_types.get(task_type).solver_prompt(TASKS[task_type])
    parsed = task_types.get(task_type).parse_answer(f"<think>ok</think>\n<answer>\n{answer}\n</answer>", True)
    assert parsed.ok and parsed.answer == answer.split("\n", 1)[1].rsplit("\n", 1)[0]


def test_a_proposal_in_the_requested_format_parses_strictly() -> None:
    text = "<think>x</think>\n<answer>\n```python\ndef f(x):\n    return x\n```\n```input\n1\n```\n</answer>"
    assert task_types.get("deduction").parse_proposal(text, True, 10).ok
    inputs = "".join(f"```input\n{i}\n```\n" for i in range(3))
    text = f"<answer>\n{inputs}```message\nidentity\n```\n</answer>"
    assert task_types.get("induction").parse_proposal(text, True, 3).inputs == ["0", "1", "2"]


def test_braces_in_programs_are_kept_verbatim() -> None:
    text = task_types.get("deduction").solver_prompt({"program": "def f(d):\n    return {k: '{x}' for k in d}", "input": "{1: 2}"})
    assert "return {k: '{x}' for k in d}" in text and "{1: 2}" in text


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="'deduct'"):
        task_types.get("deduct").proposer_prompt([], [], 10)
    with pytest.raises(ValueError, match="'summary'"):
        task_types.get("summary").solver_prompt({})
    with pytest.raises(ValueError, match="reference 2 has no 'output'"):
        task_types.get("abduction").proposer_prompt([REFERENCES[0], {"program": "def f(): pass", "input": ""}], [], 10)
    with pytest.raises(ValueError, match="references\\[0\\]"):
        task_types.get("induction").proposer_prompt([], [], 10)
    with pytest.raises(ValueError, match="3 inputs but 2 outputs"):
        task_types.get("induction").solver_prompt({"inputs": ["1", "2", "3"], "outputs": ["1", "2"], "message": "m"})


def test_render_chat_without_a_template_is_the_bare_prompt() -> None:
    tokenizer = tiny_random_tokenizer()
    tokenizer.chat_template = None
    assert prompts.render_chat(tokenizer, "hello") == "hello"
    assert prompts.render_chat(tiny_random_tokenizer(), "hello") == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"


def test_the_induction_proposer_sees_two_known_pairs_of_its_program():
    reference = {**INDUCTION_REFERENCE, "inputs": ["12", "999", "7"], "outputs": ["3", "27", "7"]}
    text = task_types.get("induction").proposer_prompt([reference], DEFAULT_BANNED_MODULES, 6, "grammar")
    assert "```input\n12\n```\n```output\n3\n```" in text and "```input\n999\n```\n```output\n27\n```" in text
    assert "```input\n7\n```" not in text  # two at most
    assert text.index(reference["program"]) < text.index("```input\n12")
