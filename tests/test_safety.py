"""Host-side AST checks of model-written code (azr/sandbox/safety.py): nothing here runs it."""

from __future__ import annotations

import pytest

from azr.config import DEFAULT_BANNED_MODULES
from azr.sandbox.safety import check_expression, check_program, could_escape

ESCAPING = [
    "def f(x):\n    import os\n    return x",
    "def f(x):\n    return __import__('o' + 's').getcwd()",
    "def f(x):\n    return ().__class__.__bases__[0].__subclasses__()",
    "def f(x):\n    return ｅｘｅｃ('x = 1')",  # fullwidth letters: Python reads the name as exec
    "def f(x):\n    return ｅval('1')",
]


@pytest.mark.parametrize("program", ESCAPING)
def test_escapes_are_refused_however_they_are_spelled(program: str) -> None:
    normalised, reason = check_program(program, DEFAULT_BANNED_MODULES)
    assert normalised is None and reason, program
    assert could_escape(program, DEFAULT_BANNED_MODULES)


def test_plain_ascii_code_skips_the_walk_and_passes() -> None:
    program = "def g(xs):\n    return sorted(set(xs), reverse=True)"
    assert not could_escape(program, DEFAULT_BANNED_MODULES)
    assert check_program(program, DEFAULT_BANNED_MODULES) == ("def f(xs):\n    return sorted(set(xs), reverse=True)", None)
    assert check_expression("[3, 1, 2], 'evaluate'", DEFAULT_BANNED_MODULES) is None


def test_an_escape_inside_an_input_is_refused() -> None:
    assert check_expression("[c for c in ().__class__.__base__.__subclasses__()]", DEFAULT_BANNED_MODULES)
    assert check_expression("ｅｘｅｃ('1')", DEFAULT_BANNED_MODULES)
