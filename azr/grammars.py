"""Grammars for constrained decoding: what a field of an answer may look like (EBNF, as xgrammar and
vLLM's structured outputs read it).

Each grammar covers one *field* the model writes, including the closing fence (`\\n```` or ````` after
a program's last line), so the model's decision to end the field is one of its own tokens. Every
string a grammar accepts is valid Python of the field's kind: a program parses, a literal is a
literal (`azr.literals` reads it), an argument list has exactly the arity asked for. What a grammar
cannot promise (that the program runs on the input, that it is deterministic) is graded instead,
by the sandbox and the rewards.

Sizes are bounded (a literal's digits, characters and elements; a program's statements, operands
and string lengths), so a small model cannot ramble until it runs out of tokens.

The program grammar is a small subset of Python chosen so that a 135M-parameter model writes
programs that parse and mostly run: a function of one to three parameters (distinct names, from
fixed lists), statements at three indentation levels (assignment, augmented assignment, method call, `if`
/ `else`, `for`), and a final `return`. No imports, no `while` (no unbounded loops), no
`break`/`continue` (a syntax error outside a loop), no method call on a number literal (`1.real`
is a syntax error). Calls are restricted to pure builtins and common methods of the builtin types.
"""

from __future__ import annotations

import ast

FENCE_END = '"\\n```"'

# Parameter names by position: disjoint lists, so that no two parameters share a name (a syntax error).
PARAMETERS = (
    ("s", "x", "n", "a", "nums", "lst", "arr", "text", "word", "words", "items", "data", "string", "numbers"),
    ("k", "m", "b", "y", "c", "t", "key", "value", "count", "size", "step"),
    ("z", "p", "q", "d", "w", "v", "prefix", "suffix", "low", "high"),
)
# Names a program may bind or read: the parameters and a few locals. No keyword and no builtin is among them.
NAMES = tuple(name for names in PARAMETERS for name in names) + (
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

PROGRAM_RULES = rf"""
params ::= param1 | param1 ", " param2 | param1 ", " param2 ", " param3
param1 ::= {_alternatives(PARAMETERS[0])}
param2 ::= {_alternatives(PARAMETERS[1])}
param3 ::= {_alternatives(PARAMETERS[2])}
body ::= stmt1{{0,4}} "    return " expr "\n"
stmt1 ::= "    " simple "\n" | "    if " expr ":\n" block2 ("    else:\n" block2)? | "    for " target " in " expr ":\n" block2
block2 ::= stmt2{{1,3}}
stmt2 ::= "        " simple "\n" | "        if " expr ":\n" block3 ("        else:\n" block3)? | "        for " target " in " expr ":\n" block3
block3 ::= ("            " simple "\n"){{1,2}}
simple ::= "return " expr | assign | name augop expr | name "." method "(" args? ")"
assign ::= target " = " expr | name "[" expr "] = " expr
augop ::= " += " | " -= " | " *= "
target ::= name | name ", " name
expr ::= disj | disj " if " disj " else " disj
disj ::= conj (" or " conj){{0,2}}
conj ::= neg (" and " neg){{0,2}}
neg ::= "not " neg | comp
comp ::= arith | arith cmpop arith
cmpop ::= " == " | " != " | " < " | " > " | " <= " | " >= " | " in " | " not in "
arith ::= term ((" + " | " - ") term){{0,3}}
term ::= factor ((" * " | " // " | " % ") factor){{0,2}}
factor ::= "-" factor | postfix
postfix ::= primary trailer{{0,3}} | number | "True" | "False" | "None"
trailer ::= "[" expr "]" | "[" expr? ":" expr? "]" | "[::-1]" | "." method "(" args? ")"
primary ::= name | string | "(" expr ")" | call | list | listcomp | dict
call ::= builtin "(" args? ")" | "sorted(" expr ", reverse=True)"
args ::= expr (", " expr){{0,3}}
list ::= "[" args? "]"
listcomp ::= "[" expr " for " target " in " expr (" if " expr)? "]"
dict ::= "{{}}" | "{{" expr ": " expr (", " expr ": " expr){{0,3}} "}}"
name ::= {_alternatives(NAMES)}
builtin ::= {_alternatives(BUILTINS)}
method ::= {_alternatives(METHODS)}
number ::= "0" | [1-9] [0-9]? [0-9]?
string ::= "'" [^'\\\n]{{0,16}} "'"
"""


def program_grammar() -> str:
    """A program's text after ``def f(``: parameters, body, and the closing fence."""
    return 'root ::= params "):\\n" body "```"\n' + PROGRAM_RULES


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
