"""The literal rule (azr/literals.py): what an answer or an input may be, parsed and never evaluated."""

from __future__ import annotations

import math

import pytest

from azr.literals import MAX_LITERAL_CHARS, arguments_key, canonical_text, literal_key, parse_arguments, parse_literal

LITERALS = {
    "[1, 2]": [1, 2], "(1, 'a')": (1, "a"), "{'k': [None, True]}": {"k": [None, True]}, "{1, 2}": {1, 2},
    "set()": set(), "frozenset()": frozenset(), "frozenset({1, 2})": frozenset({1, 2}), "frozenset([1])": frozenset({1}),
    "b'x'": b"x", "-3": -3, "+3.5": 3.5, "1e300": 1e300, "2j": 2j, "1-2j": 1 - 2j, "(-0-0j)": complex(-0.0, -0.0),
    "float('inf')": math.inf, "-float('inf')": -math.inf, "float('-inf')": -math.inf, "'a' 'b'": "ab", "0x10": 16,
    "...": Ellipsis, "  [1,\n 2]  # trailing comment": [1, 2], "{1: {2: frozenset()}}": {1: {2: frozenset()}},
}
NOT_LITERALS = {
    "sorted([1])": "calls 'sorted'", "1 + 1": "operator", "--1": "operator", "not 1": "operator", "x": "the name 'x'",
    "().__class__": "attribute access", "[*range(3)]": "*-unpacking", "{**{}}": "**-unpacking", "(y := 3)": ":=",
    "[i for i in (1,)]": "comprehension", "lambda: 1": "lambda", "1 if 1 else 2": "conditional", "f'{1}'": "f-string",
    "[1][0]": "subscripting", "set([1])": "set(...) is a literal only", "float('1.5')": "float(...) is a literal only",
    "{[1]: 2}": "unhashable", "{{1}}": "unhashable", "": "does not parse", "# only a comment": "does not parse",
    "[" * 201 + "]" * 201: "does not parse", "9" * 5000: "does not parse", "١٢٣": "does not parse",
    "sеt()": "calls 'sеt'", "(lambda: 1)()": "calls the result of a lambda", "1)\n(2": "does not parse",
}


@pytest.mark.parametrize("text, value", LITERALS.items())
def test_literals_parse_to_their_value(text, value):
    parsed = parse_literal(text)
    assert parsed.ok, parsed.reason
    assert parsed.value == value or (value != value and parsed.value != parsed.value)
    assert type(parsed.value) is type(value)


@pytest.mark.parametrize("text, why", NOT_LITERALS.items())
def test_everything_else_is_refused_with_a_reason_that_says_what(text, why):
    parsed = parse_literal(text)
    assert not parsed.ok and parsed.value is None
    assert parsed.reason.startswith("not a literal: ") and why in parsed.reason


def test_size_is_bounded_before_parsing():
    parsed = parse_literal("[" + "1, " * MAX_LITERAL_CHARS + "]")
    assert not parsed.ok and f"more than {MAX_LITERAL_CHARS}" in parsed.reason
    assert not parse_literal("-" * 50_000 + "1").ok  # a chain of signs the parser would recurse into


@pytest.mark.parametrize("text, args, kwargs", [
    ("1, 2", (1, 2), {}), ("[1, 2], k='a'", ([1, 2],), {"k": "a"}), ("", (), {}), ("1,", (1,), {}),
    ("1  # )", (1,), {}), ("ｘ=1", (), {"x": 1}), ("{1}, frozenset()", ({1}, frozenset()), {}),
])
def test_argument_lists(text, args, kwargs):
    assert parse_arguments(text).value == (args, kwargs)


@pytest.mark.parametrize("text, why", [
    (") if 0 else (6", "not the argument list of one call"), ("1), f(2", "not the argument list of one call"),
    ("f(3)", "calls 'f'"), ("*[1]", "*-unpacking"), ("**{'a': 1}", "**-unpacking"), ("y=1, 2", "does not parse"),
    ("x:=1", ":="), ("1)\nimport os\nf(1", "does not parse"), ("a=1, a=2", "repeats the keyword 'a'"),
])
def test_argument_lists_that_are_not_one_literal_call(text, why):
    parsed = parse_arguments(text)
    assert not parsed.ok and parsed.reason.startswith("not a literal argument list: ") and why in parsed.reason


def test_canonical_text_is_equal_exactly_when_values_are():
    same = [("[1,2]", "[1, 2]"), ("1", "1.0"), ("1", "True"), ("{1, 2}", "{2, 1}"), ("{'a': 1, 'b': 2}", "{'b': 2, 'a': 1}"),
            ("frozenset({1})", "{1}"), ("0", "-0.0"), ("1+0j", "1"), ("{1: 'x'}", "{True: 'x'}")]
    different = [("[1, 2]", "(1, 2)"), ("[1, 2]", "[2, 1]"), ("'1'", "1"), ("b'a'", "'a'"), ("0.1", "0.10000000000000002"),
                 ("[1, [2]]", "[1, [2, 2]]"), ("float('inf')", "1e300")]
    for a, b in same:
        assert parse_literal(a).value == parse_literal(b).value and literal_key(a) == literal_key(b), (a, b)
    for a, b in different:
        assert parse_literal(a).value != parse_literal(b).value and literal_key(a) != literal_key(b), (a, b)
    assert canonical_text(2 ** 60) == canonical_text(float(2 ** 60)) and canonical_text(10 ** 30) != canonical_text(1e30)


def test_argument_keys_compare_inputs_by_value():
    assert arguments_key("[1,2], 'a'") == arguments_key("[1, 2],'a'") == arguments_key("[1.0, 2], 'a'")
    assert arguments_key("[1, 2]") != arguments_key("[2, 1]") != arguments_key("[1, 2], k=1")
    assert arguments_key("sorted([1])") is None
