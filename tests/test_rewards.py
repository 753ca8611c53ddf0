"""Reward functions against hand-computed values (DESIGN.md section 6)."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from azr import rewards
from azr.config import RewardsConfig


@pytest.mark.parametrize("rate, expected", [(0.0, 0.0), (1 / 8, 0.875), (0.5, 0.5), (1.0, 0.0)])
def test_learnability_paper_rule(rate, expected):
    assert rewards.learnability(rate) == pytest.approx(expected)


def test_learnability_extremes_knob_matches_reference_code():
    assert rewards.learnability(0.0, at_extremes=-0.5) == -0.5
    assert rewards.learnability(1.0, at_extremes=-0.5) == -0.5
    assert rewards.learnability(0.25, at_extremes=-0.5) == 0.75


def test_solver_reward_with_format_penalties_on_and_off():
    cfg = RewardsConfig()
    # under force acceptance: no format penalties
    assert rewards.solver_reward(True, True, forced=True, config=cfg) == (1.0, 0.0)
    assert rewards.solver_reward(False, True, forced=True, config=cfg) == (0.0, 0.0)
    assert rewards.solver_reward(False, False, forced=True, config=cfg) == (0.0, 0.0)
    # after it: -0.5 wrong but well formed, -1 malformed
    assert rewards.solver_reward(True, True, forced=False, config=cfg) == (1.0, 0.0)
    assert rewards.solver_reward(False, True, forced=False, config=cfg) == (0.0, -0.5)
    assert rewards.solver_reward(False, False, forced=False, config=cfg) == (0.0, -1.0)


def test_proposer_reward_weights_and_invalid_penalty():
    cfg = RewardsConfig(learnability_weight=1.0, diversity_weight=0.5, complexity_weight=0.25)
    # 1 - 3/8 = 0.625; + 0.5 * 0.4 + 0.25 * 0.8 = 0.625 + 0.2 + 0.2
    assert rewards.proposer_reward(True, 3 / 8, 0.4, 0.8, cfg) == pytest.approx(1.025)
    assert rewards.proposer_reward(True, 1.0, 0.0, 0.0, cfg) == 0.0
    assert rewards.proposer_reward(False, 0.5, 1.0, 1.0, cfg) == -1.0  # no reason: a format error


def test_a_duplicate_gets_a_milder_penalty_than_any_invalid_proposal():
    cfg = RewardsConfig()
    duplicate = rewards.rejection_reward("duplicate", False, cfg)
    assert duplicate == rewards.rejection_reward("near_duplicate", False, cfg) == cfg.duplicate_penalty == -0.25
    # Duplicates are rejected only outside force acceptance (a quality check), where invalid ones get
    # the paper's penalties: -0.5 for a readable proposal that is not a task, -1 for a format error.
    for reason in ["syntax", "impure", "not_literal", "repeated_inputs", "too_simple"]:
        assert rewards.rejection_reward(reason, False, cfg) == -0.5 < duplicate
    for reason in ["no_answer_tag", "no_input", "unparsed"]:
        assert rewards.rejection_reward(reason, False, cfg) == -1.0


def test_an_answer_that_is_not_a_literal_is_a_format_error():
    assert rewards.well_formed(True, "ok") and rewards.well_formed(True, "error")
    assert not rewards.well_formed(True, "not_literal") and not rewards.well_formed(False, "unparsed")


def test_the_score_stage_penalises_a_non_literal_answer_as_malformed():
    from azr.config import AZRConfig
    from stages.score import _solver_rows

    base = {"run": "r", "iteration": 1, "task_id": "t", "task_type": "deduction", "sample": 0, "prompt_ids": [1],
            "response_ids": [2], "response_mask": [True], "logprobs": [-0.1], "correct": False, "parsed": True}
    rows = _solver_rows([{**base, "check_status": "ok"}, {**base, "check_status": "not_literal"}], False, AZRConfig())
    assert [r["format"] for r in rows] == [-0.5, -1.0]


def test_complexity_grows_with_branching_and_is_bounded():
    simple = rewards.complexity("def f(a):\n    return a")
    branchy = rewards.complexity(
        "def f(xs):\n    t = 0\n    for x in xs:\n        if x > 2 and x % 2:\n            t += x * 3\n"
        "        elif x < 0:\n            t -= x\n        else:\n            t ^= x\n    return t"
    )
    assert 0.0 <= simple < branchy <= 1.0
    assert simple == pytest.approx(0.0)  # one path, no operators: radon gives cc 1, volume 0
    assert rewards.complexity("def f(:") == 0.0


def test_value_type_reads_without_evaluating():
    assert rewards.value_type("'abc'") == "str"
    assert rewards.value_type("-3") == "int"
    assert rewards.value_type("[1, 2]") == "list"
    assert rewards.value_type("{'a': 1}") == "dict"
    assert rewards.value_type("__import__('os').system('true')") == "call"


def test_diversity_from_distance_and_surprise():
    program = "def f(a):\n    return a"
    types = Counter({"str": 3, "list": 1})
    # identical to its reference (distance 0), output type str has p = 3/4: 0.5*0 + 0.5*(1/4)
    assert rewards.diversity(program, "'x'", [program], types) == pytest.approx(0.125)
    # no references: distance 1; unseen type: surprise 1
    assert rewards.diversity(program, "3", [], types) == pytest.approx(1.0)


def test_diversity_tells_apart_programs_that_call_other_functions():
    """The distance uses dedup's fingerprints: renamed locals are the same program, another call is not."""
    types = Counter({"int": 1})
    length = "def f(xs):\n    return len(xs)"
    assert rewards.diversity("def f(items):\n    return len(items)", "3", [length], types) == pytest.approx(0.0)
    assert rewards.diversity("def f(xs):\n    return sum(xs)", "3", [length], types) > 0.1


def test_trr_advantages_mean_zero_unit_spread_in_each_of_six_groups():
    rng = np.random.default_rng(0)
    rows = []
    for task_type in ["abduction", "deduction", "induction"]:
        for role in ["propose", "solve"]:
            scale = {"propose": 3.0, "solve": 1.0}[role]
            for r in rng.normal(loc=2.0, scale=scale, size=7):
                rows.append({"task_type": task_type, "role": role, "reward": float(r)})
    frame = pd.DataFrame(rows)
    frame["advantage"] = rewards.trr_advantages(frame)
    for _, group in frame.groupby(["task_type", "role"]):
        assert group["advantage"].mean() == pytest.approx(0.0, abs=1e-9)
        assert np.std(group["advantage"], ddof=0) == pytest.approx(1.0, abs=1e-5)


def test_trr_advantages_hand_computed_and_constant_group_is_zero():
    frame = pd.DataFrame({
        "task_type": ["deduction"] * 4 + ["abduction"] * 2,
        "role": ["solve"] * 4 + ["propose"] * 2,
        "reward": [1.0, 0.0, 0.0, 1.0, -1.0, -1.0],
    })
    adv = rewards.trr_advantages(frame, eps=0.0 + 1e-12)
    # mean 0.5, population std 0.5: (1-0.5)/0.5 = 1, (0-0.5)/0.5 = -1
    assert list(adv[:4].round(6)) == [1.0, -1.0, -1.0, 1.0]
    assert list(adv[4:]) == [0.0, 0.0]


def test_a_group_of_one_is_normalised_with_its_roles_statistics():
    frame = pd.DataFrame({
        "task_type": ["deduction", "deduction", "abduction", "induction"],
        "role": ["propose"] * 4,
        "reward": [1.0, -1.0, 0.5, -0.5],
    })
    adv = rewards.trr_advantages(frame, eps=1e-12)
    assert list(adv[:2].round(6)) == [1.0, -1.0]  # a group of two: its own statistics
    # Alone in their groups: the propose role's mean 0 and population std sqrt(0.625).
    assert adv[2] == pytest.approx(0.5 / 0.625 ** 0.5) and adv[3] == pytest.approx(-0.5 / 0.625 ** 0.5)


@pytest.mark.parametrize("reason, forced, expected", [
    ("no_code_block", True, -1.0), ("no_input", False, -1.0),  # cannot be read: a format error either way
    ("syntax", True, -0.75), ("error", True, -0.5), ("timeout", True, -0.5),  # how far it got, forced
    ("nondeterministic", True, -0.25), ("bad_output", True, -0.25),
    ("syntax", False, -0.5), ("error", False, -0.5), ("nondeterministic", False, -0.5),  # the paper's rule after
    ("too_simple", False, -0.5),
])
def test_invalid_proposals_climb_a_ladder_under_force_acceptance(reason, forced, expected):
    cfg = RewardsConfig()
    assert rewards.rejection_reward(reason, forced, cfg) == expected
    assert rewards.proposer_reward(False, 0.0, 0.0, 0.0, cfg, reason, forced) == expected
