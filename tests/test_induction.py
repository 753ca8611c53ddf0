"""Induction tasks are honest: inputs distinct by value, and no hidden pair repeats a shown input."""

from __future__ import annotations

import numpy as np

from azr.data_construction import hidden_pairs, split_induction


def test_a_hidden_pair_that_repeats_a_shown_input_by_value_is_not_hidden():
    task = {"inputs": ["[1, 2]", "[1,2]", "[1.0, 2]", "3"], "outputs": ["a", "a", "a", "b"], "shown": [0]}
    assert hidden_pairs(task) == (["3"], ["b"])  # a lookup table of the shown pair cannot pass


def test_inputs_are_kept_once_per_value_and_leave_a_hidden_pair():
    from azr.data_construction import proposal_inputs

    assert proposal_inputs("induction", ["[1, 2]", "[1,2]", "'a'", "[2, 1]"]) == (["[1, 2]", "'a'", "[2, 1]"], None)
    assert proposal_inputs("induction", ["[1, 2]", "[1,2]", "[1.0, 2.0]"]) == (["[1, 2]", "[1,2]", "[1.0, 2.0]"], "repeated_inputs")
    assert proposal_inputs("induction", ["1", "sorted([1])"])[1] == "not_literal"
    assert proposal_inputs("deduction", ["1) or open('x') or (1"])[1] == "not_literal"
    for n in range(2, 12):
        shown = split_induction(n, np.random.default_rng(n))
        assert 1 <= len(shown) < n  # at least one pair shown and one hidden
