"""Strict and lenient parsing against a corpus of realistic (often malformed) generations."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from azr import task_types
from azr.parsing import REASONS, ParsedAnswer, ParsedProposal

DATA = Path(__file__).parent / "data"
CORPUS_FILES = sorted(DATA.glob("parsing_corpus*.yaml"))
CASES = [case for path in CORPUS_FILES for case in yaml.safe_load(path.read_text())]


def _parse(case: dict, strict: bool) -> ParsedProposal | ParsedAnswer:
    if case["parse"] == "proposal":
        return task_types.get(case["task_type"]).parse_proposal(case["text"], strict, case.get("n_inputs", 10))
    return task_types.get(case["task_type"]).parse_answer(case["text"], strict)


def _expected(case: dict, mode: str) -> dict:
    return case.get(mode, case.get("expect"))


def test_corpus_is_large_and_well_formed() -> None:
    assert len(CASES) >= 40
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert any(c.get("source", "").startswith("smollm2") for c in CASES), "no real SmolLM2 outputs in the corpus"
    for case in CASES:
        for mode in ("strict", "lenient"):
            expected = _expected(case, mode)
            assert expected is not None, f"{case['id']}: no expectation for {mode}"
            assert expected["ok"] or expected["reason"] in REASONS, f"{case['id']}: unknown reason"


@pytest.mark.parametrize("mode", ["strict", "lenient"])
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_corpus(case: dict, mode: str) -> None:
    expected = _expected(case, mode)
    result = _parse(case, strict=mode == "strict")
    assert result.ok == expected["ok"], f"{mode}: {result}"
    assert result.reason == expected.get("reason")
    for field, value in expected.items():
        if field not in ("ok", "reason"):
            assert getattr(result, field) == value, f"{mode}: field {field}"


def test_strict_success_is_lenient_success() -> None:
    for case in CASES:
        strict, lenient = _parse(case, strict=True), _parse(case, strict=False)
        if strict.ok:
            assert lenient == strict, case["id"]


def test_unknown_task_type_is_named() -> None:
    with pytest.raises(ValueError, match="'deduct'"):
        task_types.get("deduct").parse_answer("<answer>1</answer>", True)
    with pytest.raises(ValueError, match="'inductive'"):
        task_types.get("inductive").parse_proposal("", False, 10)


def test_induction_inputs_keep_their_text_exactly() -> None:
    text = "<answer>\n```input\n'a  b', {'k': [1,\n 2]}\n```\n```input\n\"\\n\"\n```\n```message\nm\n```\n</answer>"
    parsed = task_types.get("induction").parse_proposal(text, True, 2)
    assert parsed.inputs == ["'a  b', {'k': [1,\n 2]}", '"\\n"']


def test_lenient_proposal_takes_the_input_from_a_call_of_f():
    text = "```python\ndef g(xs, k):\n    return xs[k:]\n\nprint(g([1, 2, 3], k=1))\n```"
    lenient = task_types.get("deduction").parse_proposal(text, False, 10)
    assert lenient.ok and lenient.input == "[1, 2, 3], k=1"
    assert not task_types.get("deduction").parse_proposal(text, True, 10).ok


def test_lenient_induction_collects_distinct_calls_of_f():
    text = ("```python\ndef f(n):\n    return n * 2\n\nassert f(1) == 2\nassert f(5) == 10\nassert f(1) == 2\n```\n"
            "It doubles.")
    parsed = task_types.get("induction").parse_proposal(text, False, 10)
    assert parsed.ok and parsed.inputs == ["1", "5"]


def test_calls_of_f_ignores_calls_inside_functions_and_bad_code():
    from azr.parsing import calls_of_f

    assert calls_of_f("def f(x):\n    return f(x - 1) if x else 0\n") == []
    assert calls_of_f("def f(:\n") == []
    assert calls_of_f("def f(a):\n    return a\nx = [f('a'), f('b')]\n") == ["'a'", "'b'"]


def test_lenient_proposal_reads_an_unfenced_function_and_an_inline_call():
    """A real SmolLM2 shape: the function in prose, the input in an inline `f(7)`."""
    text = ("This checks a number.\n\ndef f(num):\n    if num < 0:\n        return -1\n    return 1\n\n"
            "For example, calling `f(7)` would return 1.")
    lenient = task_types.get("deduction").parse_proposal(text, False, 10)
    assert lenient.ok
    assert lenient.program == "def f(num):\n    if num < 0:\n        return -1\n    return 1"
    assert lenient.input == "7"
    assert task_types.get("deduction").parse_proposal(text, True, 10).reason == "no_answer_tag"
