"""Induction tasks are honest: inputs distinct by value, and no hidden pair repeats a shown input."""

from __future__ import annotations

import numpy as np

from azr import task_types
from azr.task_types import hidden_pairs


def test_a_hidden_pair_that_repeats_a_shown_input_by_value_is_not_hidden():
    task = {"inputs": ["[1, 2]", "[1,2]", "[1.0, 2]", "3"], "outputs": ["a", "a", "a", "b"], "shown": [0]}
    assert hidden_pairs(task) == (["3"], ["b"])  # a lookup table of the shown pair cannot pass


def test_inputs_are_kept_once_per_value_and_leave_a_hidden_pair():

    assert task_types.get("induction").check_inputs(["[1, 2]", "[1,2]", "'a'", "[2, 1]"]) == (["[1, 2]", "'a'", "[2, 1]"], None)
    assert task_types.get("induction").check_inputs(["[1, 2]", "[1,2]", "[1.0, 2.0]"]) == (["[1, 2]", "[1,2]", "[1.0, 2.0]"], "repeated_inputs")
    assert task_types.get("induction").check_inputs(["1", "sorted([1])"])[1] == "not_literal"
    assert task_types.get("deduction").check_inputs(["1) or open('x') or (1"])[1] == "not_literal"
    for n in range(2, 12):
        shown = task_types.get("induction").shown_pairs(n, np.random.default_rng(n))
        assert 1 <= len(shown) < n  # at least one pair shown and one hidden
