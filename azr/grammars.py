"""Grammars for constrained decoding: what a field of an answer may look like (EBNF, as xgrammar and
vLLM's structured outputs read it).

Each grammar covers one *field* the model writes, including the closing fence (`\\n```` or ````` after
a program's last line), so the model's decision to end the field is one of its own tokens. Every
string a grammar accepts is valid Python of the field's kind: a program parses, a literal is a
literal, an argument list has exactly the arity asked for. What a grammar
cannot promise (that the program runs on the input, that it is deterministic) is graded instead,
by the sandbox and the rewards.

Sizes are bounded (a literal's digits, characters and elements; a program's statements, operands
and string lengths), so a small model cannot ramble until it runs out of tokens.

Programs are written in two fields: a signature (parameters from fixed lists by position, so that
no two share a name) and a body whose grammar is built from that signature: it reads only its own
parameters and a few locals (unknown names were a third of the runtime errors of real SmolLM2
programs). The body grammar is a small subset of Python: statements at three indentation levels
(assignment, augmented assignment, method call, `if` / `else`, `for`) and a final `return`; no
imports, no `while` (no unbounded loops), no `break`/`continue` (a syntax error outside a loop), no
method call on a number literal (`1.real` is a syntax error); brackets nest at most two deep, and the
header of an `if` or a `for` is a simpler expression than a statement's (real SmolLM2 `for` headers
ran on for a hundred tokens). Calls are restricted to pure builtins and common methods of the
builtin types.
"""

from __future__ import annotations

import ast

FENCE_END = '"\\n```"'

# Parameter names by position: disjoint lists, so that no two parameters share a name (a syntax error).
PARAMETERS = (
    ("s", "x", "n", "a", "nums", "lst", "arr", "text", "word", "words", "items", "data", "string", "numbers"),
    ("k", "m", "b", "y", "c", "t", "key", "value", "count", "size", "step"),
    ("z", "p", "q", "d", "w", "v", "prefix", "suffix", "low", "high"),
    ("e", "g", "h", "u", "extra"),
)
# Local names a program may bind, besides its parameters. No keyword and no builtin is among them.
LOCALS = (
    "i", "j", "r", "num", "item", "ch", "chars", "values", "total", "result", "res", "acc", "seen",
    "pairs", "parts", "left", "right", "idx",
)
BUILTINS = (
    "len", "sum", "min", "max", "sorted", "reversed", "abs", "range", "list", "set", "tuple", "dict",
    "str", "int", "float", "bool", "enumerate", "zip", "any", "all", "round", "ord", "chr", "divmod",
)
METHODS = (
    "append", "extend", "insert", "pop", "remove", "index", "count", "sort", "reverse", "copy",
    "keys", "values", "items", "get", "update", "setdefault", "upper", "lower", "strip", "lstrip",
    "rstrip", "split", "join", "replace", "find", "startswith", "endswith", "isdigit", "isalpha",
    "isupper", "islower", "title", "capitalize", "swapcase", "zfill", "center", "add", "discard",
    "union", "intersection", "difference",
)


def _alternatives(words: tuple[str, ...]) -> str:
    # Longest first: xgrammar does not need it, but it keeps the grammar text readable as a list.
    return " | ".join(f'"{w}"' for w in sorted(set(words), key=lambda w: (-len(w), w)))


# Literals: what `repr` writes for builtin data values, minus the specials (nan, inf) a model cannot mean.
LITERAL_RULES = r"""
literal ::= number | string | "True" | "False" | "None" | list | tuple | dict | set
number ::= "-"? ("0" | [1-9] [0-9]{0,5}) ("." [0-9]{1,3})?
string ::= "'" [^'\\\n]{0,24} "'" | "\"" [^"\\\n]{0,24} "\""
list ::= "[" (literal (", " literal){0,7})? "]"
tuple ::= "()" | "(" literal ",)" | "(" literal (", " literal){1,4} ")"
dict ::= "{}" | "{" key ": " literal (", " key ": " literal){0,4} "}"
set ::= "set()" | "{" key (", " key){0,5} "}"
key ::= number | string | "True" | "False" | "None"
"""

STATEMENT_RULES = rf"""
body ::= stmt1{{0,4}} "    return " expr0 "\n"
stmt1 ::= "    " simple "\n" | "    if " expr1 ":\n" block2 ("    else:\n" block2)? | "    for " target " in " postfix1 ":\n" block2
block2 ::= stmt2{{1,3}}
stmt2 ::= "        " simple "\n" | "        if " expr1 ":\n" block3 ("        else:\n" block3)? | "        for " target " in " postfix1 ":\n" block3
block3 ::= ("            " simple "\n"){{1,2}}
simple ::= "return " expr0 | assign | name augop expr0 | name "." method "(" args1? ")"
assign ::= target " = " expr0 | name "[" expr1 "] = " expr0
augop ::= " += " | " -= " | " *= "
target ::= name | name ", " name
cmpop ::= " == " | " != " | " < " | " > " | " <= " | " >= " | " in " | " not in "
builtin ::= {_alternatives(BUILTINS)}
method ::= {_alternatives(METHODS)}
number ::= "0" | [1-9] [0-9]? [0-9]?
string ::= "'" [^'\\\n]{{0,16}} "'"
"""
EXPRESSION_DEPTH = 2  # brackets nest at most this deep: `a[b[c]]`, `len(sorted(x))`, not `k[k[k[...]]]`


def _expression_rules(depth: int) -> str:
    """Expressions at bracket depth `depth`: what is inside a bracket is one level deeper, and the
    deepest level holds names and constants only, so that nesting is bounded. Operand counts are
    small too: a real SmolLM2 expression otherwise grows until the field runs out of tokens."""
    inner = f"expr{depth + 1}"
    atoms = 'name | number | string | "True" | "False" | "None"'
    if depth == EXPRESSION_DEPTH:
        return f"expr{depth} ::= {atoms}\nargs{depth} ::= expr{depth} (\", \" expr{depth}){{0,2}}\n"
    d = depth
    conditional = f' | disj{d} " if " disj{d} " else " disj{d}' if depth == 0 else ""
    return f"""expr{d} ::= disj{d}{conditional}
disj{d} ::= conj{d} (" or " conj{d})?
conj{d} ::= neg{d} (" and " neg{d})?
neg{d} ::= "not "? comp{d}
comp{d} ::= arith{d} | arith{d} cmpop arith{d}
arith{d} ::= term{d} ((" + " | " - ") term{d}){{0,2}}
term{d} ::= factor{d} ((" * " | " // " | " % ") factor{d})?
factor{d} ::= "-"? postfix{d}
postfix{d} ::= primary{d} trailer{d}{{0,2}} | number | "True" | "False" | "None"
trailer{d} ::= "[" {inner} "]" | "[" {inner}? ":" {inner}? "]" | "[::-1]" | "." method "(" args{d + 1}? ")"
primary{d} ::= name | string | "(" {inner} ")" | builtin "(" args{d + 1}? ")" | "sorted(" {inner} ", reverse=True)" | "[" args{d + 1}? "]" | "[" {inner} " for " target " in " {inner} (" if " {inner})? "]" | "{{}}" | "{{" {inner} ": " {inner} (", " {inner} ": " {inner}){{0,2}} "}}"
args{d} ::= expr{d} (", " expr{d}){{0,2}}
"""


BODY_RULES = STATEMENT_RULES + "".join(_expression_rules(d) for d in range(EXPRESSION_DEPTH + 1))


def signature_grammar(arity: int | None = None) -> str:
    """A signature's parameters and its end, ``x, y):\\n``: exactly `arity` distinct names, or one to
    three when `arity` is None (a proposer choosing its own)."""
    if arity is not None and not 1 <= arity <= len(PARAMETERS):
        raise ValueError(f"a signature has 1 to {len(PARAMETERS)} parameters, not {arity}")
    arities = [arity] if arity is not None else [1, 2, 3]
    lists = " | ".join(' ", " '.join(f"param{i + 1}" for i in range(n)) for n in arities)
    rules = "".join(f"param{i + 1} ::= {_alternatives(PARAMETERS[i])}\n" for i in range(max(arities)))
    return f'root ::= ({lists}) "):\\n"\n' + rules


def body_grammar(parameters: tuple[str, ...]) -> str:
    """A function body whose names are its `parameters` and a few locals, then the closing fence.

    Scoping the names to the signature removes most NameErrors: real SmolLM2 bodies read parameters
    the signature never declared.
    """
    return 'root ::= body "```"\n' + f"name ::= {_alternatives(tuple(parameters) + LOCALS)}\n" + BODY_RULES


def signature_parameters(signature: str) -> tuple[str, ...] | None:
    """The names of a signature field (``x, y):``), or None when it is not one (cut off, say)."""
    try:
        tree = ast.parse(f"def f({signature.strip()}\n    pass")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return tuple(a.arg for a in tree.body[0].args.args)


def argument_count(arguments: str) -> int | None:
    """How many arguments an argument list (``[1, 2], 'a'``) has, read with `ast`; None when it does not parse."""
    try:
        call = ast.parse(f"f({arguments}\n)", mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return len(call.args) + len(call.keywords)


def literal_grammar() -> str:
    """One literal (an output), then the closing fence."""
    return f"root ::= literal {FENCE_END}\n" + LITERAL_RULES


def arguments_grammar(arity: int) -> str:
    """Exactly ``arity`` literal arguments of a call, comma separated, then the closing fence."""
    if arity < 0:
        raise ValueError(f"an argument list cannot have {arity} arguments")
    if arity == 0:
        return 'root ::= "```"\n'  # nothing to write but the fence
    rest = ' ", " literal' * (arity - 1)
    return f"root ::= literal{rest} {FENCE_END}\n" + LITERAL_RULES


def message_grammar() -> str:
    """One line of prose without backticks, then the closing fence."""
    return f'root ::= [^`\\n] [^`\\n]* {FENCE_END}\n'


def parameter_count(program: str) -> int | None:
    """Positional parameters of the program's first function (parsed, never run); None without a function."""
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            count = len(args.posonlyargs) + len(args.args)  # defaulted ones too: inputs usually give them
            return count or (1 if args.vararg else 0)
    return None
