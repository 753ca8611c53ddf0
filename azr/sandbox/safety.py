"""Host-side checks of model-written code, on the AST only: nothing here executes it.

`check_program` is the ground-truth gate of design.md section 5 (parse, rename the first function to
`f`, no banned imports, nothing impure). The runner also refuses banned imports and impure actions at
run time, which catches what an AST cannot see (an import built from strings inside `exec`, a file
opened by an allowed module, say).
"""

from __future__ import annotations

import ast
import functools
import re

# Names that reach the import machinery or the interpreter's internals however the code is written.
ESCAPE_NAMES = frozenset({"__import__", "__builtins__", "__loader__", "__spec__", "exec", "eval", "compile", "breakpoint", "globals", "locals", "vars"})
ESCAPE_ATTRIBUTES = frozenset(
    {"__subclasses__", "__globals__", "__builtins__", "__code__", "__closure__", "__import__", "__loader__", "__spec__", "__bases__", "__mro__", "__base__", "f_globals", "f_locals", "f_builtins", "gi_frame", "tb_frame"}
)


# Builtins whose answer comes from outside the program and its input (status `impure`).
IMPURE_NAMES = {"open": "files", "input": "standard input", "help": "files and standard output"}
PURITY = "a task must be a pure function of its input"  # every impure reason ends with this

# Words without which an ASCII source can hold no import, escape or impure name that `banned_import` finds.
_TELLTALE_WORDS = ("import", *ESCAPE_NAMES, *ESCAPE_ATTRIBUTES, *IMPURE_NAMES)


def could_escape(source: str, banned_modules: list[str]) -> bool:
    """False when `source` cannot contain what `banned_import` looks for, so its AST walk can be skipped.

    An import needs the word `import`, an escape or impure builtin its name spelled out, an attribute
    that reaches a banned module a dot followed (across spaces, line joins and comments) by that name.
    Only for ASCII text: Python folds other letters in identifiers to ASCII (NFKC), so `ｅｘｅｃ` is `exec`.
    """
    return not source.isascii() or any(word in source for word in _TELLTALE_WORDS) \
        or _banned_attribute(tuple(banned_modules)).search(source) is not None


@functools.lru_cache(maxsize=8)
def _banned_attribute(banned_modules: tuple[str, ...]) -> re.Pattern:
    names = "|".join(sorted({re.escape(module_key(name)) for name in banned_modules if module_key(name)})) or "(?!)"
    return re.compile(r"\.(?:[\s\\]|#[^\n]*)*_*(?:" + names + r")\b")


# Modules that are another module under a second name: banning the one bans the other (runner.py agrees).
MODULE_ALIASES = {"posix": "os", "nt": "os", "thread": "threading", "posixsubprocess": "subprocess"}


def module_key(name: str) -> str:
    """The name a module is banned by: its top package without leading underscores (`_random` is
    `random`), its public name for an implementation module (`posix` is `os`)."""
    top = name.partition(".")[0].lstrip("_")
    return MODULE_ALIASES.get(top, top)


def banned_import(tree: ast.AST, banned_modules: list[str]) -> str | None:
    """The first banned import, interpreter escape or impure builtin in a parsed tree, as a reason, else None.

    An attribute named like a banned module (`logging.os`, `collections._sys`) counts as reaching it.
    An impure builtin counts where the program does not bind the name itself (`def f(input):` is fine).
    """
    banned = {module_key(name) for name in banned_modules}
    impure_names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if module_key(alias.name) in banned:
                    return f"imports banned module {alias.name!r}"
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and module_key(node.module) in banned:
                return f"imports banned module {node.module!r}"
        elif not banned:
            continue  # an empty banned list allows everything, escapes and impure builtins included
        elif isinstance(node, ast.Name) and node.id in ESCAPE_NAMES:
            return f"uses {node.id!r}, which can import modules or reach interpreter internals"
        elif isinstance(node, ast.Name) and node.id in IMPURE_NAMES and isinstance(node.ctx, ast.Load):
            impure_names.append(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in ESCAPE_ATTRIBUTES:
            return f"uses attribute {node.attr!r}, which reaches interpreter internals"
        elif isinstance(node, ast.Attribute) and module_key(node.attr) in banned:
            return f"uses attribute {node.attr!r}, which reaches banned module {module_key(node.attr)!r} through another module"
    free = [name for name in impure_names if name not in bound_names(tree)] if impure_names else []
    return f"calls {free[0]}(), which reads {IMPURE_NAMES[free[0]]}: {PURITY}" if free else None


def bound_names(tree: ast.AST) -> set[str]:
    """Every name the program binds somewhere: parameters, assignments, imports, definitions."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def parse_error(source: str, what: str, mode: str = "exec") -> tuple[ast.AST | None, str | None]:
    try:
        return ast.parse(source, mode=mode), None
    except SyntaxError as exc:
        return None, f"{what} does not parse: {exc.msg} (line {exc.lineno})"
    except (ValueError, RecursionError, MemoryError) as exc:
        return None, f"{what} does not parse: {type(exc).__name__}: {exc}"


def check_program(program: str, banned_modules: list[str]) -> tuple[str | None, str | None]:
    """Check a program without running it.

    Returns ``(normalised program, None)`` where the first top-level function is renamed ``f``
    (with every reference to its old name), or ``(None, reason)`` when it does not parse, defines
    no function, or imports a banned module. Use `program_status` to tell those apart.
    """
    if not isinstance(program, str):
        return None, f"program must be a string, not {type(program).__name__}"
    tree, error = parse_error(program, "program")
    if tree is None:
        return None, error
    functions = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not functions:
        return None, "program defines no top-level function"
    reason = banned_import(tree, banned_modules) if could_escape(program, banned_modules) else None
    if reason:
        return None, reason
    old_name = functions[0].name
    if old_name == "f":
        return program, None
    if any(isinstance(node, ast.Name) and node.id == "f" for node in ast.walk(tree)) or any(fn.name == "f" for fn in functions):
        return None, f"program uses the name 'f' for something other than its first function {old_name!r}"
    functions[0].name = "f"
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == old_name:
            node.id = "f"
    return ast.unparse(tree), None


def program_status(reason: str) -> str:
    """The sandbox status for a reason given by `check_program` / `check_expression`."""
    if "does not parse" in reason or "defines no" in reason or "name 'f'" in reason:
        return "syntax"
    return "impure" if reason.endswith(PURITY) else "banned"


def check_expression(text: str, banned_modules: list[str], what: str = "expression") -> str | None:
    """None when an expression (an input, an answer) parses and imports nothing banned, else the reason."""
    if not isinstance(text, str):
        return f"{what} must be a string, not {type(text).__name__}"
    tree, error = parse_error("(\n" + text + "\n)", what, mode="eval")
    if tree is None:
        return error
    return banned_import(tree, banned_modules) if could_escape(text, banned_modules) else None
