"""Task construction: what a proposer is shown, and what counts as a good task.

This is the place to edit the quality criteria (DESIGN.md section 5). The prompt wording lives in
``azr.prompts``, and what differs between task types (their inputs, what a solver is shown) in
``azr.task_types``; this module decides which references go into a proposer's prompt.
Ground-truth checks are the literal rule for inputs (`TaskType.check_inputs`) and what the sandbox
checks (parse, banned imports, purity, runs, determinism); quality checks are `quality_reason`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable

import numpy as np
import pandas as pd

from azr import task_types
from azr.buffer import sample_references
from azr.config import AZRConfig
from azr.dedup import TaskIndex
from azr.rewards import complexity


def _triplet(task: pd.Series) -> dict:
    return {
        "program": task["program"], "input": task["input"], "output": task["output"],
        "inputs": list(task["inputs"]), "outputs": list(task["outputs"]), "message": task["message"],
    }


def proposer_request(task_type: str, buffer: pd.DataFrame, config: AZRConfig, rng: np.random.Generator,
                     fits: Callable[[str], bool] = lambda prompt: True) -> tuple[str, list[str], str | None]:
    """(prompt, reference task ids, program) for one proposal.

    A proposer that writes a program sees K references; one given a program (induction) gets one
    buffer task, its program returned as ``program``. A prompt that does not `fit` drops its last
    reference until it does (never its instructions).
    """
    kind = task_types.get(task_type)
    banned, n_inputs, mode = config.executor.banned_modules, config.validation.induction_num_inputs, config.generation.answer_format
    if kind.given_program:
        task = sample_references(buffer, 1, rng).iloc[0]
        prompt = kind.proposer_prompt([_triplet(task)], banned, n_inputs, mode)
        if not fits(prompt):
            raise ValueError(f"the {task_type} proposer prompt for buffer task {task['task_id']} is longer than "
                             "sampling.max_prompt_tokens; raise it")
        return prompt, [task["task_id"]], task["program"]
    refs = sample_references(buffer, config.buffer.references, rng)
    for k in range(len(refs), -1, -1):
        prompt = kind.proposer_prompt([_triplet(t) for _, t in refs.iloc[:k].iterrows()], banned, n_inputs, mode)
        if fits(prompt):
            return prompt, list(refs["task_id"].iloc[:k]), None
    raise ValueError(f"a {task_type} proposer prompt without references is longer than sampling.max_prompt_tokens; raise it")


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
    if any(len(o) > config.validation.max_output_chars for o in task_types.get(task["task_type"]).outputs(task)):
        return "output_too_large"
    return None


def topup_candidates(buffer: pd.DataFrame, task_type: str) -> pd.DataFrame:
    """Buffer tasks that can be posed as ``task_type`` when proposals fall short."""
    can_pose = task_types.get(task_type).can_pose
    return buffer[buffer["inputs"].map(lambda inputs: can_pose(None if inputs is None else list(inputs)))]
