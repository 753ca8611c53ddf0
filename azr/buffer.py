"""The task buffer: verified triplets that proposers take references from and top-ups come from.

A buffer is a DataFrame with the columns of ``BUFFER_COLUMNS`` (DESIGN.md section 11), stored as
``buffer/iter-NNNN.parquet``. Every task keeps all its input/output pairs in ``inputs``/``outputs``;
``input``/``output`` are the first pair (the deduction/abduction view of the task).
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pandas as pd

from azr.dedup import task_key
from azr.schemas import BUFFER

BUFFER_COLUMNS = BUFFER.names


def seed_programs() -> list[dict]:
    """The seed set shipped with azr: the identity triplet first, then a dozen varied programs."""
    text = resources.files("azr.data").joinpath("seed_tasks.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def add_tasks(buffer: pd.DataFrame, tasks: pd.DataFrame, max_size: int) -> pd.DataFrame:
    """Append tasks that are not already in the buffer (`azr.dedup.task_key`: the same type, program and
    input(s) by value); cap at ``max_size``.

    A known program with a new input is a new task, and so is an induction task on a buffer program.
    The cap drops the oldest non-seed tasks first, so the seed set always stays.
    """
    seen = {task_key(task) for task in buffer.to_dict("records")}
    keep = []
    for _, task in tasks.iterrows():
        key = task_key(task)
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
