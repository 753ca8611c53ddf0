"""The task buffer: verified triplets that proposers take references from and top-ups come from.

A buffer is a DataFrame with the columns of ``BUFFER_COLUMNS`` (DESIGN.md section 11), stored as
``buffer/iter-NNNN.parquet``. Every task keeps all its input/output pairs in ``inputs``/``outputs``;
``input``/``output`` are the first pair (the deduction/abduction view of the task).
"""

from __future__ import annotations

import ast
import json
from importlib import resources

import numpy as np
import pandas as pd

from azr.schemas import BUFFER

BUFFER_COLUMNS = BUFFER.names


def seed_programs() -> list[dict]:
    """The seed set shipped with azr: the identity triplet first, then a dozen varied programs."""
    text = resources.files("azr.data").joinpath("seed_tasks.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def normalised(program: str) -> str:
    """Program text with formatting and comments removed, for exact-duplicate detection."""
    try:
        return ast.dump(ast.parse(program))
    except SyntaxError:
        return program.strip()


def add_tasks(buffer: pd.DataFrame, tasks: pd.DataFrame, max_size: int) -> pd.DataFrame:
    """Append tasks whose program is not already in the buffer as the same task type; cap at ``max_size``.

    An induction task reuses a buffer program with new inputs, so it may join beside that program's
    deduction triplet once; the same program never joins twice as the same type.
    The cap drops the oldest non-seed tasks first, so the seed set always stays.
    """
    seen = {(t, normalised(p)) for t, p in zip(buffer["task_type"], buffer["program"])}
    keep = []
    for _, task in tasks.iterrows():
        key = (task["task_type"], normalised(task["program"]))
        if key not in seen:
            seen.add(key)
            keep.append({column: task.get(column) for column in BUFFER_COLUMNS})
    merged = pd.concat([buffer, pd.DataFrame(keep, columns=BUFFER_COLUMNS)], ignore_index=True) if keep else buffer
    if len(merged) > max_size:
        seeds = merged[merged["origin_iteration"] == 0]
        rest = merged[merged["origin_iteration"] != 0]
        merged = pd.concat([seeds, rest.tail(max(0, max_size - len(seeds)))], ignore_index=True)
    return merged.reset_index(drop=True)


def sample_references(buffer: pd.DataFrame, k: int, rng: np.random.Generator) -> pd.DataFrame:
    """K tasks drawn uniformly without replacement (all of them when the buffer is smaller)."""
    k = min(k, len(buffer))
    return buffer.iloc[sorted(rng.choice(len(buffer), size=k, replace=False))] if k else buffer.iloc[:0]


def induction_candidates(buffer: pd.DataFrame, min_pairs: int) -> pd.DataFrame:
    """Tasks with enough input/output pairs to be posed as induction tasks."""
    return buffer[buffer["inputs"].map(lambda xs: xs is not None and len(xs) >= min_pairs)]
