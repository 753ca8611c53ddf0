"""Duplicate and near-duplicate tasks (azr/dedup.py) and the buffer's use of the same task key."""

from __future__ import annotations

import pandas as pd
import pytest

from azr.buffer import BUFFER_COLUMNS, add_tasks
from azr.dedup import TaskIndex, fingerprint, jaccard, task_key

SORTED = "def f(xs):\n    ys = sorted(xs)\n    return ys[0] if ys else None"


def task(program: str, input: str = "[3, 1, 2]", task_type: str = "deduction", **extra) -> dict:
    return {"task_type": task_type, "program": program, "input": input, "inputs": [input], **extra}


@pytest.mark.parametrize("other", [
    SORTED.replace("sorted(", "len(").replace("ys[0] if ys else None", "ys"),  # another called function
    SORTED.replace("sorted(", "reversed("),
    SORTED.replace("ys[0]", "ys[1]"),  # another constant
    SORTED.replace("None", "0"),
    "def f(s):\n    return s.lower()",
])
def test_programs_that_call_or_hold_something_else_are_new(other):
    index = TaskIndex([task(SORTED), task("def f(s):\n    return s.upper()")])
    assert index.reason(task(other)) is None


@pytest.mark.parametrize("copy", [
    SORTED.replace("xs", "values").replace("ys", "result"),  # renamed locals
    "def f(xs):  # a comment\n    ys = sorted(\n        xs)\n\n    return (ys[0] if ys else None)",  # reformatted
])
def test_renamed_or_reformatted_copies_are_near_duplicates(copy):
    assert TaskIndex([task(SORTED)]).reason(task(copy)) in ("duplicate", "near_duplicate")
    assert TaskIndex([task(SORTED)]).reason(task(copy, input="[9]")) is None  # a new input: a new task


def test_a_dead_statement_more_in_a_real_program_is_a_near_duplicate():
    program = ("def f(s):\n    counts = {}\n    for ch in s:\n        counts[ch] = counts.get(ch, 0) + 1\n"
               "    return max(counts, key=lambda c: (counts[c], c)) if counts else ''")
    padded = program.replace("    for ch", "    seen = counts\n    for ch")
    assert TaskIndex([task(program, "'banana'")]).reason(task(padded, "'banana'")) == "near_duplicate"


def test_exact_duplicates_key_on_the_task_with_inputs_by_value():
    index = TaskIndex([task(SORTED, "[3, 1, 2]")])
    assert index.reason(task(SORTED + "\n", "[3,1,2]")) == "duplicate"
    assert index.reason(task(SORTED, "[3, 1, 2.0]")) == "duplicate"  # equal values
    assert index.reason(task(SORTED, "[3, 1, 2, 4]")) is None
    assert index.reason(task(SORTED, task_type="abduction")) is None  # posed another way
    assert index.reason(task(SORTED.replace("xs", "v"), "[3,1,2]")) == "near_duplicate"


def test_induction_tasks_key_on_their_set_of_inputs():
    inputs = ["[1]", "[2, 3]", "[]"]
    index = TaskIndex([task(SORTED, task_type="induction", inputs=inputs)])
    assert index.reason(task(SORTED, task_type="induction", inputs=["[2,3]", "[]", "[1]"])) == "duplicate"
    assert index.reason(task(SORTED, task_type="induction", inputs=inputs + ["[4]"])) is None


def test_similarity_counts_names_and_constants():
    a, b = fingerprint("def f(xs):\n    return sorted(xs)"), fingerprint("def f(xs):\n    return len(xs)")
    assert a.vocabulary != b.vocabulary and jaccard(a, b) < 1.0
    assert jaccard(a, fingerprint("def f(items):\n    return sorted(items)")) == 1.0
    assert fingerprint("def f(:").shingles == frozenset()


def test_the_buffer_adds_a_known_program_with_a_new_input_but_not_the_same_task_twice():
    row = {c: None for c in BUFFER_COLUMNS}
    buffer = pd.DataFrame([{**row, **task(SORTED), "task_id": "a", "origin_iteration": 0}])
    new = pd.DataFrame([
        {**row, **task(SORTED, "[3,1,2]"), "task_id": "same", "origin_iteration": 1},
        {**row, **task(SORTED, "[5, 4]"), "task_id": "new-input", "origin_iteration": 1},
        {**row, **task(SORTED, "[5,4]"), "task_id": "new-input-again", "origin_iteration": 1},
    ])
    merged = add_tasks(buffer, new, max_size=10)
    assert list(merged["task_id"]) == ["a", "new-input"]
    assert task_key(merged.iloc[1].to_dict()) == task_key(task(SORTED, "[5, 4]"))
