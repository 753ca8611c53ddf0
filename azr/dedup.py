"""Duplicate and near-duplicate tasks, and the program representation the diversity reward shares.

A task is its program and its input (for induction, its set of inputs), compared by value: `[1,2]` and
`[1, 2]` are one input (`azr.literals`). Two rules, both keyed on the task (design.md section 5):

- duplicate: the same task type, the same program text once formatting and comments are gone, the
  same input(s). A hashed key: one set lookup per proposal.
- near duplicate: the same task type and input(s), the same vocabulary (every constant, every name the
  program does not bind itself, such as `sorted` or `len`, every attribute such as `.upper`, every
  keyword and operator), and a token structure whose 3-gram Jaccard similarity is at least
  `NEAR_DUPLICATE_JACCARD`; in it the parameters of the first function are p0, p1, ... by position and
  every other local name is v, so renaming changes nothing and an added statement changes little. Renaming variables, reformatting, or moving
  a little code around keeps a near duplicate; calling another function or changing a constant does not.
  The exact vocabulary is a hashed bucket holding each distinct structure once (renamed copies are
  one entry), so a proposal is compared with the few buffer programs that share it, not with the
  whole buffer.

Fingerprints are cached by program text, so a buffer is fingerprinted once per process, not per proposal.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

from azr import task_types
from azr.literals import arguments_key
from azr.sandbox.safety import bound_names

NEAR_DUPLICATE_JACCARD = 0.8  # 3-gram Jaccard at which two programs with one vocabulary count as copies
SHINGLE = 3
FINGERPRINT_CACHE = 20_000  # programs kept fingerprinted: the default buffer cap (5,000) four times over


@dataclass(frozen=True)
class Fingerprint:
    """What dedup and diversity know of a program (empty fields for a program that does not parse)."""

    text: str  # ast.dump of the program: formatting and comments do not count
    vocabulary: tuple[str, ...]  # sorted constants, free names, attributes, keywords and operators
    shingles: frozenset[tuple[str, ...]]  # 3-grams of the token sequence, local names made anonymous


@functools.lru_cache(maxsize=FINGERPRINT_CACHE)
def fingerprint(program: str) -> Fingerprint:
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return Fingerprint(program.strip(), (), frozenset())
    imported = {(a.asname or a.name).partition(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    local = dict.fromkeys(bound_names(tree) - imported, "v")
    first = next((n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if first is not None:
        arguments = first.args
        local.update((a.arg, f"p{i}") for i, a in enumerate([*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]))
    tokens, vocabulary = [], set()
    for node in _preorder(tree):
        token, word = _token(node, local)
        tokens.append(token)
        if word is not None:
            vocabulary.add(word)
    shingles = frozenset(tuple(tokens[i:i + SHINGLE]) for i in range(max(1, len(tokens) - SHINGLE + 1)))
    return Fingerprint(ast.dump(tree), tuple(sorted(vocabulary)), shingles)


def _preorder(node: ast.AST) -> Iterable[ast.AST]:
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.expr_context):
            continue
        yield node
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _token(node: ast.AST, local: dict[str, str]) -> tuple[str, str | None]:
    """(structure token, vocabulary word or None); a local name is its anonymous token (p0, v)."""
    if isinstance(node, ast.Name):
        return (local[node.id], None) if node.id in local else (node.id, "name:" + node.id)
    if isinstance(node, ast.arg):
        return local.get(node.arg, "v"), None
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return type(node).__name__, None
    if isinstance(node, ast.Attribute):
        return "." + node.attr, "attr:" + node.attr
    if isinstance(node, ast.keyword):
        return f"{node.arg}=", f"keyword:{node.arg}"
    if isinstance(node, ast.Constant):
        text = f"{type(node.value).__name__}:{node.value!r:.200}"
        return text, "const:" + text
    if isinstance(node, (ast.operator, ast.unaryop, ast.cmpop, ast.boolop)):
        return type(node).__name__, "op:" + type(node).__name__
    return type(node).__name__, None


def jaccard(a: Fingerprint, b: Fingerprint) -> float:
    """Structural similarity of two programs in [0, 1] (1 for two that do not parse)."""
    return _jaccard(a.shingles, b.shingles)


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def max_similarity(program: str, others: Iterable[str]) -> float:
    """Highest `jaccard` of `program` to any of `others` (0 when there are none): the diversity reward's distance."""
    mine = fingerprint(program)
    return max((jaccard(mine, fingerprint(other)) for other in others), default=0.0)


def inputs_key(task_type: str, task: dict[str, Any]) -> str:
    """The task's input, or its set of inputs for a type whose tasks are pairs (induction), compared by value."""
    texts = list(task["inputs"]) if task_types.get(task_type).shows_pairs else [task["input"]]
    keys = sorted({arguments_key(text) or "raw:" + text.strip() for text in texts})
    return "|".join(keys)


def task_key(task: dict[str, Any]) -> str:
    """The exact-duplicate key of a task: type, program text without formatting, input(s) by value."""
    text = f"{task['task_type']}\0{fingerprint(task['program']).text}\0{inputs_key(task['task_type'], task)}"
    return hashlib.sha256(text.encode()).hexdigest()


def _bucket(task: dict[str, Any]) -> tuple[str, tuple[str, ...], str]:
    return task["task_type"], fingerprint(task["program"]).vocabulary, inputs_key(task["task_type"], task)


class TaskIndex:
    """The buffer's tasks, indexed for `duplicate` / `near_duplicate` in constant time per proposal."""

    def __init__(self, tasks: Iterable[dict[str, Any]] = ()):
        self.keys: set[str] = set()
        self.buckets: dict[tuple, set[frozenset]] = defaultdict(set)
        for task in tasks:
            self.add(task)

    def add(self, task: dict[str, Any]) -> None:
        self.keys.add(task_key(task))
        self.buckets[_bucket(task)].add(fingerprint(task["program"]).shingles)

    def reason(self, task: dict[str, Any]) -> str | None:
        """`duplicate`, `near_duplicate` or None for a task that is new."""
        if task_key(task) in self.keys:
            return "duplicate"
        mine = fingerprint(task["program"]).shingles
        if any(_jaccard(mine, other) >= NEAR_DUPLICATE_JACCARD for other in self.buckets.get(_bucket(task), ())):
            return "near_duplicate"
        return None
