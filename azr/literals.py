"""The literal rule: what an answer, a proposed input or an induction input may be (design.md section 5).

A literal is Python literal syntax as `ast.literal_eval` accepts it, plus `set()`, `frozenset(<literal>)`
and the float specials `float('nan')`, `float('inf')`, `float('-inf')` (signed). An argument list is what
goes between the parentheses of one call `f(...)`: literal arguments, positional and keyword, nothing
unpacked. Texts are parsed with `ast`, never evaluated; size and nesting are bounded.

`canonical_text` writes a value so that two literals are equal (`==`) exactly when their texts are:
it is how inputs are compared by value (deduplication) rather than by spelling.
"""

from __future__ import annotations

import ast
import functools
import math
from dataclasses import dataclass
from typing import Any

MAX_LITERAL_CHARS = 100_000  # longer texts are refused before they are parsed
MAX_NESTING = 200  # containers nested deeper than Python's parser accepts brackets (it refuses past 200)
FLOAT_SPECIALS = frozenset({"nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"})
_NODE_WORDS = {
    ast.BoolOp: "a boolean operator", ast.Compare: "a comparison",
    ast.IfExp: "a conditional expression", ast.Lambda: "a lambda", ast.Call: "a call", ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension", ast.DictComp: "a comprehension", ast.GeneratorExp: "a generator expression",
    ast.NamedExpr: "an assignment expression (:=)", ast.Starred: "*-unpacking", ast.Subscript: "subscripting",
    ast.JoinedStr: "an f-string", ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
    ast.Slice: "a slice", ast.FormattedValue: "an f-string",
}


@dataclass(frozen=True)
class Parsed:
    """A parsed literal (`value`) or argument list (`value` = (args tuple, kwargs dict)), or why not."""

    ok: bool
    value: Any = None
    reason: str | None = None


class NotLiteral(ValueError):
    pass


def parse_literal(text: str) -> Parsed:
    """The value of a literal text, or the reason it is not one (never evaluates anything)."""
    try:
        return Parsed(True, literal_node(_parse(text, text.strip() if isinstance(text, str) else text, "a literal").body))
    except NotLiteral as exc:
        return Parsed(False, reason=f"not a literal: {exc}")


def parse_arguments(text: str) -> Parsed:
    """(args, kwargs) of an argument list: the text must make `f(<text>)` exactly one call of f."""
    try:
        call = _parse(text, "f(" + text + "\n)", "an argument list").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"):
            raise NotLiteral("it is not the argument list of one call f(...): it closes the call and adds code")
        args = tuple(literal_node(arg) for arg in call.args)
        kwargs = {}
        for keyword in call.keywords:
            if keyword.arg is None:
                raise NotLiteral("it uses **-unpacking")
            if keyword.arg in kwargs:
                raise NotLiteral(f"it repeats the keyword {keyword.arg!r}")
            kwargs[keyword.arg] = literal_node(keyword.value)
        return Parsed(True, (args, kwargs))
    except NotLiteral as exc:
        return Parsed(False, reason=f"not a literal argument list: {exc}")


def literal_key(text: str) -> str | None:
    """Canonical text of a literal's value (equal values, equal keys), or None when it is not a literal."""
    parsed = parse_literal(text)
    return canonical_text(parsed.value) if parsed.ok else None


@functools.lru_cache(maxsize=20_000)  # buffer inputs are keyed again every iteration
def arguments_key(text: str) -> str | None:
    """Canonical text of an argument list's values, or None when it is not a literal argument list."""
    parsed = parse_arguments(text)
    if not parsed.ok:
        return None
    args, kwargs = parsed.value
    return canonical_text(args) + "**" + canonical_text(kwargs)


def canonical_text(value: Any) -> str:
    """A text that two literal values share exactly when they are equal: 1, 1.0 and True share one;
    sets and dicts are written in sorted order; lists and tuples stay apart, as `==` keeps them."""
    kind = type(value)
    if kind in (bool, int, float, complex):
        return _number(value)
    if kind in (str, bytes) or value is None or value is Ellipsis:
        return repr(value)
    if kind in (list, tuple):
        return ("L[" if kind is list else "T[") + ",".join(canonical_text(v) for v in value) + "]"
    if kind in (set, frozenset):
        return "S{" + ",".join(sorted(canonical_text(v) for v in value)) + "}"
    if kind is dict:
        return "D{" + ",".join(sorted(canonical_text(k) + ":" + canonical_text(v) for k, v in value.items())) + "}"
    raise TypeError(f"not a literal value: {kind.__name__}")


def _number(value: complex | float | int) -> str:
    if isinstance(value, complex):
        if value.imag != 0 or math.isnan(value.imag):
            return f"C({_number(value.real)},{_number(value.imag)})"
        value = value.real
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer():
            return str(int(value))  # the exact integer of the float: equal values, equal texts
        return repr(value)
    return str(int(value))


def _parse(original: str, source: str, what: str) -> ast.Expression:
    if not isinstance(original, str):
        raise NotLiteral(f"expected text, got {type(original).__name__}")
    if len(original) > MAX_LITERAL_CHARS:
        raise NotLiteral(f"{len(original)} characters, more than {MAX_LITERAL_CHARS}")
    try:
        return ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise NotLiteral(f"it does not parse as {what}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise NotLiteral(f"it does not parse as {what}: {type(exc).__name__}: {exc}") from None


def literal_node(node: ast.AST, depth: int = 0) -> Any:
    """The value of one expression node that is a literal, else NotLiteral naming what it holds."""
    if depth > MAX_NESTING:
        raise NotLiteral(f"containers nested more than {MAX_NESTING} deep")
    kind = type(node)
    try:
        if kind is ast.Tuple or kind is ast.List or kind is ast.Set:
            items = [literal_node(e, depth + 1) for e in node.elts]
            return tuple(items) if kind is ast.Tuple else items if kind is ast.List else set(items)
        if kind is ast.Dict:
            if any(key is None for key in node.keys):
                raise NotLiteral("it uses **-unpacking")
            return {literal_node(k, depth + 1): literal_node(v, depth + 1) for k, v in zip(node.keys, node.values)}
        if kind is ast.Call:
            return _call(node, depth)
        if kind is ast.UnaryOp and type(node.op) in (ast.USub, ast.UAdd) and type(node.operand) is ast.Call:
            value = _call(node.operand, depth)
            if type(value) is not float:
                raise NotLiteral("a sign applies to a number only")
            return -value if type(node.op) is ast.USub else value
    except TypeError as exc:  # an unhashable set element or dict key
        raise NotLiteral(f"it holds an unhashable key or set element ({exc})") from None
    if kind is ast.Constant or kind is ast.UnaryOp or kind is ast.BinOp:
        try:
            return ast.literal_eval(node)  # constants, signed numbers, complex sums: literal_eval's own rule
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            raise NotLiteral("it uses an operator (only a sign on a number, or a real plus an imaginary number)") from None
    if kind is ast.Name:
        raise NotLiteral(f"it uses the name {node.id!r}")
    if kind is ast.Attribute:
        raise NotLiteral(f"it uses attribute access (.{node.attr})")
    raise NotLiteral(f"it uses {_NODE_WORDS.get(kind, type(node).__name__)}")


def _call(node: ast.Call, depth: int) -> Any:
    name = node.func.id if isinstance(node.func, ast.Name) else None
    if node.keywords or name not in ("set", "frozenset", "float"):
        shown = repr(name) if name else f"the result of {_NODE_WORDS.get(type(node.func), type(node.func).__name__)}"
        raise NotLiteral(f"it calls {shown} (only set(), frozenset(<literal>) and float('nan'/'inf'/'-inf') are literals)")
    if name == "set" and not node.args:
        return set()
    if name == "frozenset" and len(node.args) <= 1:
        return frozenset(literal_node(node.args[0], depth + 1)) if node.args else frozenset()
    if name == "float" and len(node.args) == 1 and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str) and node.args[0].value.strip().lower() in FLOAT_SPECIALS:
        return float(node.args[0].value)
    raise NotLiteral(f"{name}(...) is a literal only as set(), frozenset(<literal>) or float('nan'/'inf'/'-inf')")
