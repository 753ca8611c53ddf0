"""Task construction: what a proposer is shown, what a solver is shown, and what counts as a good task.

This is the place to edit the validation criteria (DESIGN.md section 5). The prompt wording itself
lives in ``azr.prompts``; this module decides which references and pairs go into it.
Ground-truth checks (parse, banned imports, runs, determinism) are done by the sandbox.
"""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd

from azr import prompts
from azr.buffer import induction_candidates, normalised, sample_references
from azr.config import AZRConfig
from azr.rewards import complexity, max_similarity

NEAR_DUPLICATE_SIMILARITY = 0.95  # AST-shape similarity at which a program counts as a copy
# Seed and top-up tasks have no proposer message; the induction solver still gets a hint of the job.
DEFAULT_INDUCTION_MESSAGE = "Find the function that maps each input to its output."


def _triplet(task: pd.Series) -> dict:
    return {
        "program": task["program"], "input": task["input"], "output": task["output"],
        "inputs": list(task["inputs"]), "outputs": list(task["outputs"]), "message": task["message"],
    }


def proposer_request(task_type: str, buffer: pd.DataFrame, config: AZRConfig, rng: np.random.Generator) -> tuple[str, list[str], str | None]:
    """(prompt, reference task ids, program) for one proposal.

    Deduction and abduction proposers see K references and write a new program; the induction proposer
    gets one buffer program (returned as ``program``) and writes inputs and a message for it.
    """
    banned = config.executor.banned_modules
    n_inputs = config.validation.induction_num_inputs
    if task_type == "induction":
        chosen = sample_references(buffer, 1, rng)
        task = chosen.iloc[0]
        prompt = prompts.proposer_prompt(task_type, [_triplet(task)], banned, n_inputs)
        return prompt, [task["task_id"]], task["program"]
    refs = sample_references(buffer, config.buffer.references, rng)
    prompt = prompts.proposer_prompt(task_type, [_triplet(t) for _, t in refs.iterrows()], banned, n_inputs)
    return prompt, list(refs["task_id"]), None


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
    """The induction pairs the solver did not see; its program must reproduce them."""
    shown = set(task["shown"])
    hidden = [i for i in range(len(task["inputs"])) if i not in shown]
    return [task["inputs"][i] for i in hidden], [task["outputs"][i] for i in hidden]


def single_top_level_function(program: str) -> bool:
    tree = ast.parse(program)
    functions = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return len(functions) == 1


# Every reason quality_reason gives, in the order it checks them.
QUALITY_REASONS = ("not_single_function", "too_simple", "repeated_inputs", "duplicate", "near_duplicate", "output_too_large")


def quality_reason(task: dict, buffer_programs: list[str], config: AZRConfig) -> str | None:
    """Why a valid task fails the quality checks (None when it passes). Waived under force acceptance.

    Checks: single top-level function, minimum complexity, not a (near-)duplicate of a buffer
    program, output size.
    """
    program = task["program"]
    if not single_top_level_function(program):
        return "not_single_function"
    if complexity(program) < config.validation.min_complexity:
        return "too_simple"
    if task["task_type"] == "induction" and len(set(task["inputs"])) < len(task["inputs"]):
        return "repeated_inputs"
    if task["task_type"] != "induction":
        key = normalised(program)
        if any(normalised(p) == key for p in buffer_programs):
            return "duplicate"
        if max_similarity(program, buffer_programs) >= NEAR_DUPLICATE_SIMILARITY:
            return "near_duplicate"
    outputs = task["outputs"] if task["task_type"] == "induction" else [task["output"]]
    if any(len(o) > config.validation.max_output_chars for o in outputs):
        return "output_too_large"
    return None


def topup_candidates(buffer: pd.DataFrame, task_type: str, min_pairs: int) -> pd.DataFrame:
    """Buffer tasks that can be posed as ``task_type`` when proposals fall short."""
    return induction_candidates(buffer, min_pairs) if task_type == "induction" else buffer
