"""Extract programs, inputs, messages and answers from model generations (pure text; nothing runs).

Strict parsing (the normal rule) needs the `<answer> ... </answer>` wrapper and, inside it, fenced
blocks labelled `python`, `input`, `output` or `message`. Lenient parsing (used while force
acceptance applies) takes what it can: the text after the last `<answer>` or else the whole
generation, the labelled block if there is one, else the last fenced block, else the last line.

Every parse returns `ok` and either the fields or a `reason` from `REASONS`. Which parse reads which
role's answer is its task type's choice (`azr.task_types`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

REASONS = (
    "no_answer_tag",  # strict: no complete <answer>...</answer>
    "no_code_block",  # no program block (propose: python; induction solve: python)
    "no_function",  # the program block defines no function
    "no_input",  # no input block (deduction/abduction proposal), or no inputs at all (induction)
    "too_few_inputs",  # induction proposal with fewer inputs than asked (strict) or than 2 (lenient)
    "no_message",  # induction proposal without a message
    "no_answer",  # solver answer: nothing found where the answer should be
)

LENIENT_MIN_INPUTS = 2  # an induction task needs one shown and one hidden pair at the least

LABEL_ALIASES = {"py": "python", "python3": "python", "msg": "message"}

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*)\Z", re.DOTALL)
_FUNCTION = re.compile(r"^[ \t]*(async[ \t]+)?def[ \t]+\w+[ \t]*\(", re.MULTILINE)
_TAGS = re.compile(r"</?(answer|think)>", re.IGNORECASE)
_LABEL_PREFIX = re.compile(r"^(input|output|answer|message)\s*[:=]\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    label: str  # lower case, aliases resolved ("" when the fence has no label)
    body: str


@dataclass(frozen=True)
class ParsedProposal:
    ok: bool
    reason: str | None = None
    program: str | None = None
    input: str | None = None  # a program's one input (parse_program_proposal)
    inputs: list[str] | None = None  # inputs for a given program (parse_inputs_proposal)
    message: str | None = None  # with those inputs


@dataclass(frozen=True)
class ParsedAnswer:
    ok: bool
    reason: str | None = None
    answer: str | None = None  # the block's text: a value, an argument list, or a program


def parse_program_proposal(text: str, strict: bool) -> ParsedProposal:
    """A proposer's program and its one input (deduction, abduction)."""
    region = answer_region(text.replace("\r\n", "\n"), strict)
    if region is None:
        return ParsedProposal(ok=False, reason="no_answer_tag")
    blocks = fenced_blocks(region, allow_unclosed=not strict)
    program_block = _program_block(blocks, strict)
    if program_block is None and not strict:
        program_block = _indented_def(region)
        blocks = blocks + [program_block] if program_block else blocks
    if program_block is None:
        return ParsedProposal(ok=False, reason="no_code_block")
    if not _FUNCTION.search(program_block.body):
        return ParsedProposal(ok=False, reason="no_function")
    input_text = _proposal_input(region, blocks, program_block, strict)
    if not input_text:
        return ParsedProposal(ok=False, reason="no_input", program=program_block.body)
    return ParsedProposal(ok=True, program=program_block.body, input=input_text)


def parse_inputs_proposal(text: str, strict: bool, n_inputs: int) -> ParsedProposal:
    """A proposer's inputs for a given program, and its message (induction)."""
    region = answer_region(text.replace("\r\n", "\n"), strict)
    if region is None:
        return ParsedProposal(ok=False, reason="no_answer_tag")
    return _induction_proposal(region, fenced_blocks(region, allow_unclosed=not strict), strict, n_inputs)


def parse_value_answer(text: str, strict: bool, label: str) -> ParsedAnswer:
    """A solver's answer given in a block labelled `label` (an output, an input)."""
    region = answer_region(text.replace("\r\n", "\n"), strict)
    if region is None:
        return ParsedAnswer(ok=False, reason="no_answer_tag")
    blocks = fenced_blocks(region, allow_unclosed=not strict)
    answer = _last_labelled(blocks, label)
    if answer is None and not strict:
        answer = blocks[-1].body if blocks else last_line(region)
    if not answer:
        return ParsedAnswer(ok=False, reason="no_answer")
    return ParsedAnswer(ok=True, answer=answer)


def parse_program_answer(text: str, strict: bool) -> ParsedAnswer:
    """A solver's answer that is a program (induction)."""
    region = answer_region(text.replace("\r\n", "\n"), strict)
    if region is None:
        return ParsedAnswer(ok=False, reason="no_answer_tag")
    block = _program_block(fenced_blocks(region, allow_unclosed=not strict), strict)
    if block is None:
        program = None if strict else _unfenced_program(region)
        if program is None:
            return ParsedAnswer(ok=False, reason="no_code_block")
        return ParsedAnswer(ok=True, answer=program)
    if not _FUNCTION.search(block.body):
        return ParsedAnswer(ok=False, reason="no_function")
    return ParsedAnswer(ok=True, answer=block.body)


def answer_region(text: str, strict: bool) -> str | None:
    """The text inside the last complete <answer> pair; lenient: else after the last <answer>, else all."""
    matches = _ANSWER_TAG.findall(text)
    if matches:
        return matches[-1]
    if strict:
        return None
    lowered = text.lower()
    start = lowered.rfind("<answer>")
    return text[start + len("<answer>"):] if start >= 0 else text


def fenced_blocks(text: str, allow_unclosed: bool = False) -> list[Block]:
    """Every ``` fenced block in order; with `allow_unclosed`, also a final block cut off by the end."""
    blocks, end = [], 0
    for match in _FENCE.finditer(text):
        blocks.append(_block(match.group(1), match.group(2)))
        end = match.end()
    if allow_unclosed:
        tail = _OPEN_FENCE.search(text, end)
        if tail:
            blocks.append(_block(tail.group(1), tail.group(2)))
    return [b for b in blocks if b.body]


def last_line(text: str) -> str | None:
    """The last non-empty line, without answer/think tags or a leading `input:`-style label."""
    lines = [_LABEL_PREFIX.sub("", _TAGS.sub("", line).strip()).strip() for line in text.splitlines()]
    lines = [line.strip("`").strip() for line in lines if line and not line.startswith("```")]
    lines = [line for line in lines if line]
    return lines[-1] if lines else None


def _block(label: str, body: str) -> Block:
    label = label.lower()
    return Block(label=LABEL_ALIASES.get(label, label), body=body.strip("\n").rstrip())


def _last_labelled(blocks: list[Block], label: str) -> str | None:
    bodies = [b.body for b in blocks if b.label == label]
    return bodies[-1] if bodies else None


def _program_block(blocks: list[Block], strict: bool) -> Block | None:
    """The last `python` block; lenient: else the last block of any label that defines a function."""
    candidates = [b for b in blocks if b.label == "python"]
    if not candidates and not strict:
        candidates = [b for b in blocks if _FUNCTION.search(b.body)]
    return candidates[-1] if candidates else None


def _indented_def(region: str) -> Block | None:
    """Lenient: a function written in prose without a fence: its `def` line and the indented lines after it."""
    match = _FUNCTION.search(region)
    if match is None:
        return None
    lines = region[match.start():].split("\n")
    body = [lines[0]]
    for line in lines[1:]:
        if line.strip() and not line[0].isspace():
            break
        body.append(line)
    return Block(label="python", body="\n".join(body).rstrip())


_INLINE_CODE = re.compile(r"`([^`\n]+)`")


def calls_of_f(text: str) -> list[str]:
    """Argument texts of the calls ``f(...)`` that code in ``text`` makes outside any function.

    Lenient parsing only: small models often show their input as ``print(f([1, 2]))`` or
    ``assert f(3) == 9`` instead of an input block. The code is parsed, never run.
    """
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    names = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    target = "f" if "f" in names or not names else next(iter(names))
    found = []
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == target \
                    and (node.args or node.keywords):
                parts = [ast.get_source_segment(text, a) for a in [*node.args, *node.keywords]]
                if all(parts):
                    found.append(", ".join(parts))
    return found


def _proposal_input(region: str, blocks: list[Block], program: Block, strict: bool) -> str | None:
    labelled = _last_labelled(blocks, "input")
    if labelled is not None or strict:
        return labelled
    code = [block.body for block in blocks] + _INLINE_CODE.findall(region)
    calls = [call for snippet in code for call in calls_of_f(snippet)]
    if calls:
        return calls[-1]
    others = [b.body for b in blocks[blocks.index(program) + 1:] if not _FUNCTION.search(b.body)]
    if others:
        return others[-1]
    after_program = region[region.rfind(program.body) + len(program.body):]
    return last_line(after_program)


def _induction_proposal(region: str, blocks: list[Block], strict: bool, n_inputs: int) -> ParsedProposal:
    inputs = [b.body for b in blocks if b.label == "input"]
    if not inputs and not strict:
        inputs = list(dict.fromkeys(call for block in blocks for call in calls_of_f(block.body)))
    message = _last_labelled(blocks, "message")
    if message is None and not strict:
        message = last_line(_FENCE.sub("\n", region))
    needed = n_inputs if strict else min(n_inputs, LENIENT_MIN_INPUTS)
    if not inputs:
        return ParsedProposal(ok=False, reason="no_input", message=message)
    if len(inputs) < needed:
        return ParsedProposal(ok=False, reason="too_few_inputs", inputs=inputs, message=message)
    if not message:
        return ParsedProposal(ok=False, reason="no_message", inputs=inputs[:n_inputs])
    return ParsedProposal(ok=True, inputs=inputs[:n_inputs], message=message)


def _unfenced_program(region: str) -> str | None:
    """Lenient: a program written without a fence, from its first `def` line to the end."""
    match = _FUNCTION.search(region)
    if match is None:
        return None
    return _TAGS.sub("", region[match.start():]).strip("\n").rstrip() or None
