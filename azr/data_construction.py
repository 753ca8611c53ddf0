"""Task construction: what a proposer is shown, what a solver is shown, and what counts as a good task.

This is the place to edit the validation criteria (DESIGN.md section 5). The prompt wording itself
lives in ``azr.prompts``; this module decides which references and pairs go into it.
Ground-truth checks are the literal rule for inputs (here, `proposal_inputs`) and what the sandbox
checks (parse, banned imports, purity, runs, determinism); quality checks are `quality_reason`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable

import numpy as np
import pandas as pd

from azr import prompts
from azr.buffer import induction_candidates, sample_references
from azr.config import AZRConfig
from azr.dedup import TaskIndex
from azr.literals import arguments_key, parse_arguments
from azr.rewards import complexity

MIN_INDUCTION_INPUTS = 2  # distinct inputs an induction task needs: one shown pair and one hidden pair
# Seed and top-up tasks have no proposer message; the induction solver still gets a hint of the job.
DEFAULT_INDUCTION_MESSAGE = "Find the function that maps each input to its output."


def _triplet(task: pd.Series) -> dict:
    return {
        "program": task["program"], "input": task["input"], "output": task["output"],
        "inputs": list(task["inputs"]), "outputs": list(task["outputs"]), "message": task["message"],
    }


def proposer_request(task_type: str, buffer: pd.DataFrame, config: AZRConfig, rng: np.random.Generator,
                     fits: Callable[[str], bool] = lambda prompt: True) -> tuple[str, list[str], str | None]:
    """(prompt, reference task ids, program) for one proposal.

    Deduction and abduction proposers see K references and write a new program; the induction proposer
    gets one buffer program (returned as ``program``) and writes inputs and a message for it. A prompt
    that does not `fit` drops its last reference until it does (never its instructions).
    """
    banned = config.executor.banned_modules
    n_inputs = config.validation.induction_num_inputs
    mode = config.generation.answer_format
    if task_type == "induction":
        chosen = sample_references(buffer, 1, rng)
        task = chosen.iloc[0]
        prompt = prompts.proposer_prompt(task_type, [_triplet(task)], banned, n_inputs, mode)
        if not fits(prompt):
            raise ValueError(f"the induction proposer prompt for buffer task {task['task_id']} is longer than "
                             "sampling.max_prompt_tokens; raise it")
        return prompt, [task["task_id"]], task["program"]
    refs = sample_references(buffer, config.buffer.references, rng)
    for k in range(len(refs), -1, -1):
        prompt = prompts.proposer_prompt(task_type, [_triplet(t) for _, t in refs.iloc[:k].iterrows()], banned, n_inputs, mode)
        if fits(prompt):
            return prompt, list(refs["task_id"].iloc[:k]), None
    raise ValueError(f"a {task_type} proposer prompt without references is longer than sampling.max_prompt_tokens; raise it")


def split_induction(n_pairs: int, rng: np.random.Generator) -> list[int]:
    """Indices of the induction pairs shown to the solver (half, at random); the rest are hidden."""
    order = rng.permutation(n_pairs)
    return sorted(int(i) for i in order[: max(1, n_pairs // 2)])


def solver_view(task: dict) -> dict:
    """The task as the solver prompt sees it: induction shows only the ``shown`` pairs."""
    if task["task_type"] != "induction":
        return task
    shown = list(task["shown"])
    return {
        **task,
        "inputs": [task["inputs"][i] for i in shown],
        "outputs": [task["outputs"][i] for i in shown],
        "message": task["message"] or DEFAULT_INDUCTION_MESSAGE,
    }


def hidden_pairs(task: dict) -> tuple[list[str], list[str]]:
    """The induction pairs the solver did not see, without any whose input equals (by value) a shown
    one: its program must reproduce them, and a lookup table of the shown pairs cannot."""
    shown = set(task["shown"])
    seen = {arguments_key(task["inputs"][i]) or task["inputs"][i] for i in shown}
    hidden = [i for i in range(len(task["inputs"])) if i not in shown and (arguments_key(task["inputs"][i]) or task["inputs"][i]) not in seen]
    return [task["inputs"][i] for i in hidden], [task["outputs"][i] for i in hidden]


def distinct_inputs(inputs: list[str]) -> list[int]:
    """Indices of the first occurrence of each input value (`[1,2]` and `[1, 2]` are one input)."""
    first: dict[str, int] = {}
    for index, text in enumerate(inputs):
        first.setdefault(arguments_key(text) or text, index)
    return sorted(first.values())


def proposal_inputs(task_type: str, inputs: list[str]) -> tuple[list[str], str | None]:
    """(the inputs to validate, None), or (the inputs as given, the ground-truth reason to reject them).

    Every input must be a literal argument list (`not_literal`). Induction inputs are kept once per
    value; fewer than two distinct ones leave no hidden pair (`repeated_inputs`). Force acceptance
    waives neither: without them the task has no honest answer.
    """
    if not all(parse_arguments(text).ok for text in inputs):
        return inputs, "not_literal"
    if task_type != "induction":
        return inputs, None
    kept = [inputs[i] for i in distinct_inputs(inputs)]
    return (kept, None) if len(kept) >= MIN_INDUCTION_INPUTS else (inputs, "repeated_inputs")


def single_top_level_function(program: str) -> bool:
    tree = ast.parse(program)
    functions = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return len(functions) == 1


def quality_reason(task: dict, index: TaskIndex, config: AZRConfig) -> str | None:
    """Why a valid task fails the quality checks (None when it passes). Waived under force acceptance.

    Checks: single top-level function, minimum complexity, not a duplicate or near duplicate of a
    task in `index` (the buffer's, `azr.dedup`), output size.
    """
    program = task["program"]
    if not single_top_level_function(program):
        return "not_single_function"
    if complexity(program) < config.validation.min_complexity:
        return "too_simple"
    duplicate = index.reason(task)
    if duplicate:
        return duplicate
    outputs = task["outputs"] if task["task_type"] == "induction" else [task["output"]]
    if any(len(o) > config.validation.max_output_chars for o in outputs):
        return "output_too_large"
    return None


def topup_candidates(buffer: pd.DataFrame, task_type: str, min_pairs: int) -> pd.DataFrame:
    """Buffer tasks that can be posed as ``task_type`` when proposals fall short (induction: enough
    distinct inputs)."""
    return induction_candidates(buffer, min_pairs) if task_type == "induction" else buffer
