"""Reward functions (DESIGN.md section 6): the place to edit how proposer and solver are scored.

Every function here is pure: values in, numbers out. The score stage calls them and writes each
component to its own column of ``rewards.parquet``, so a change here shows up column by column.
"""

from __future__ import annotations

import ast
from collections import Counter
from typing import Sequence

import numpy as np
import pandas as pd
from radon.complexity import cc_visit
from radon.metrics import h_visit

from azr.config import RewardsConfig
from azr.dedup import max_similarity

# Scales that map raw code metrics into [0, 1]; a program at or past them counts as fully complex.
CYCLOMATIC_SCALE = 10.0
HALSTEAD_VOLUME_SCALE = 500.0


def learnability(solve_rate: float, at_extremes: float = 0.0) -> float:
    """Proposer reward for a valid task: ``1 - r`` when ``0 < r < 1``; ``at_extremes`` when r is 0 or 1.

    A task every rollout solves, or none does, teaches the solver nothing.
    """
    if 0.0 < solve_rate < 1.0:
        return 1.0 - solve_rate
    return at_extremes


# Check statuses that make an answer malformed for the reward, though it parsed: not a literal.
FORMAT_ERROR_STATUSES = frozenset({"not_literal"})
DUPLICATE_REASONS = frozenset({"duplicate", "near_duplicate"})


def well_formed(parsed: bool, check_status: str | None) -> bool:
    """A solver answer that parsed and is of the right kind (a literal where one is due)."""
    return parsed and check_status not in FORMAT_ERROR_STATUSES


def solver_reward(correct: bool, parsed: bool, forced: bool, config: RewardsConfig) -> tuple[float, float]:
    """(correctness, format) for one solver rollout; the reward is their sum.

    Correct = 1. Otherwise 0 under force acceptance; outside it, a well-formed wrong answer gets
    ``wrong_format_penalty`` and a malformed one ``malformed_penalty``. ``parsed``: `well_formed`.
    """
    if correct:
        return 1.0, 0.0
    if forced:
        return 0.0, 0.0
    return 0.0, config.wrong_format_penalty if parsed else config.malformed_penalty


# How far an invalid proposal got, by its rejection reason (tasks.parquet `reason`): the rungs of the
# ladder that grades invalid proposals under force acceptance. Anything not listed here is a parse
# reason (no program or input could be read: the bottom rung), a duplicate or a quality reason.
LADDER_RUNGS = {
    "syntax": "syntax", "not_literal": "syntax",  # the program does not parse, or an input is not a literal
    "error": "runtime", "timeout": "runtime", "memory": "runtime", "killed": "runtime",
    "nondeterministic": "impure", "impure": "impure", "banned": "impure", "bad_output": "impure",
    "repeated_inputs": "impure",  # it is no task: too few distinct induction inputs for a hidden pair
}
# Every reason a quality check gives (azr.data_construction.quality_reason, and prompt_too_long).
QUALITY_REASONS = ("not_single_function", "too_simple", "duplicate", "near_duplicate", "output_too_large",
                   "prompt_too_long")


def rejection_reward(reason: str, forced: bool, config: RewardsConfig) -> float:
    """Proposer reward for a rejected proposal.

    A (near) duplicate is a real task the buffer already holds: `duplicate_penalty`, milder than any
    invalid one. Under force acceptance, the ladder (`config.ladder`): a proposal that cannot be read
    gets `invalid_penalty`, then by how far it got: does not parse < fails on its input < runs but is
    not a task (nondeterministic, impure, not plain data). Outside it, the paper's rule:
    `invalid_penalty` for a format error, `wrong_task_penalty` for a readable proposal that is not a
    valid task.
    """
    if reason in DUPLICATE_REASONS:
        return config.duplicate_penalty
    rung = LADDER_RUNGS.get(reason) or ("quality" if reason in QUALITY_REASONS else "unparsed")
    if rung == "unparsed":
        return config.invalid_penalty
    if not forced or rung == "quality":
        return config.wrong_task_penalty
    return getattr(config.ladder, rung)


def proposer_reward(
    valid: bool, solve_rate: float, diversity: float, complexity: float, config: RewardsConfig,
    reason: str | None = None, forced: bool = False,
) -> float:
    """Total proposer reward: weighted learnability + diversity + complexity for a valid task, else
    `rejection_reward(reason, forced)`."""
    if not valid:
        return rejection_reward(reason or "unparsed", forced, config)
    return (
        config.learnability_weight * learnability(solve_rate, config.learnability_at_extremes)
        + config.diversity_weight * diversity
        + config.complexity_weight * complexity
    )


def complexity(program: str) -> float:
    """Code complexity in [0, 1]: the mean of scaled cyclomatic complexity and Halstead volume (radon)."""
    try:
        blocks = cc_visit(program)
        volume = h_visit(program).total.volume or 0.0
    except (SyntaxError, ValueError):
        return 0.0
    cyclomatic = max((b.complexity for b in blocks), default=1)
    cc_part = min(1.0, (cyclomatic - 1) / CYCLOMATIC_SCALE)
    volume_part = min(1.0, volume / HALSTEAD_VOLUME_SCALE)
    return 0.5 * cc_part + 0.5 * volume_part


def value_type(output_repr: str | None) -> str:
    """Type name of a value from its repr, read by parsing (never evaluating) the text."""
    if not output_repr:
        return "none"
    try:
        node = ast.parse(output_repr, mode="eval").body
    except SyntaxError:
        return "unknown"
    if isinstance(node, ast.Constant):
        return type(node.value).__name__
    if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
        return type(node.operand.value).__name__
    return type(node).__name__.lower()


def diversity(program: str, output_repr: str | None, references: Sequence[str], buffer_output_types: Counter) -> float:
    """Diversity in [0, 1]: mean of the distance from the closest reference and answer-type surprise.

    The distance is ``1 - jaccard`` over the programs' cached fingerprints, the representation the
    near-duplicate rule uses (`azr.dedup`): names, constants and called functions count, local names
    and formatting do not. Surprise is ``1 - p(type)`` where p is the share of buffer outputs with this
    answer's type.
    """
    distance = 1.0 - max_similarity(program, references)
    total = sum(buffer_output_types.values())
    surprise = 1.0 - (buffer_output_types[value_type(output_repr)] / total if total else 0.0)
    return 0.5 * distance + 0.5 * surprise


def trr_advantages(rewards: pd.DataFrame, eps: float = 1e-6) -> pd.Series:
    """Task-Relative REINFORCE++: normalise ``reward`` within each (task_type, role) group.

    ``A = (r - mean_g) / (std_g + eps)`` with the population std, so each group has mean 0 and
    (for groups whose rewards differ) unit spread. A group of one sample has no statistics of its
    own (its advantage would always be 0): it is normalised with its role's mean and std over every
    task type instead.
    """
    def statistics(keys: list[str]) -> tuple[pd.Series, pd.Series]:
        grouped = rewards.groupby(keys)["reward"]
        return grouped.transform("mean"), grouped.transform(lambda r: float(np.std(r.to_numpy(), ddof=0)))

    mean, std = statistics(["task_type", "role"])
    alone = rewards.groupby(["task_type", "role"])["reward"].transform("size") == 1
    role_mean, role_std = statistics(["role"])
    mean, std = mean.where(~alone, role_mean), std.where(~alone, role_std)
    return (rewards["reward"] - mean) / (std + eps)
