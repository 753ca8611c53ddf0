"""Task generation prompts: the six role templates (propose and solve, for each task type).

This module is the place to customise what the model is asked. Edit the template strings below
(each task type in `azr.task_types` names the templates it uses);
they are `str.format` templates, so write a literal brace as `{{` or `}}`. Keep the answer format
(the answer in `<answer>` with fenced `python` / `input` / `output` / `message` blocks):
`azr.parsing` reads exactly that. Each role has two endings: `free` (the model reasons in
`<think>` and writes the whole answer) and `direct` (`generation.answer_format` prefill or
grammar: azr writes the answer's scaffold and the model only fills in its blocks, so the prompt
just shows the shape). The golden files in `tests/golden/` show every rendered prompt; regenerate
them with `AZR_UPDATE_GOLDEN=1 pytest tests/test_prompts.py`.

An *input* is always written as the arguments of a call to `f`: for `f([1, 2], 'ab')` the input
is `[1, 2], 'ab'`. An *output* is the `repr` of the returned value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

INDUCTION_EXAMPLE_PAIRS = 2  # known pairs of the program shown to the induction proposer

PROGRAM_RULES = """\
Rules for the program:
- Define one function named `f`. Helpers, if any, go inside `f`.
- Use only the Python standard library, and never import any of these modules: {banned}.
- Make it deterministic: the same input must always give the same output, with no state kept between calls.
- Return a value made of literals (numbers, strings, booleans, None, and lists, tuples, dicts or sets of them).
- Write the input as the arguments of a call to `f`, using literals only: for `f([1, 2], 'ab')` write `[1, 2], 'ab'`."""

PROGRAM_RULES_DIRECT = """\
Rules for the program:
- Define one function named `f`. It uses no imports and no randomness, and returns the same value for the same input.
- Return a value made of literals (numbers, strings, booleans, None, and lists, tuples, dicts or sets of them).
- Write the input as the arguments of a call to `f`, using literals only: for `f([1, 2], 'ab')` write `[1, 2], 'ab'`."""

PROPOSE_ANSWER_FORMAT_DIRECT = """\
Answer with the program and its input only, in this form:
<answer>
```python
def f(...):
    ...
```
```input
...
```
</answer>"""

PROPOSE_ANSWER_FORMAT = """\
Reason inside <think> </think>, then put the program and the input inside <answer> </answer>, exactly like this:
<think>your reasoning</think>
<answer>
```python
def f(...):
    ...
```
```input
...
```
</answer>"""

PROPOSE_DEDUCTION = """\
Design a new Python reasoning task. You write a program `f` and one input for it. A student will \
see the program and the input and must work out the output, so the task should take careful \
step-by-step reasoning while having exactly one correct answer.

{rules}
- Make your task clearly different from the reference tasks below.

{references}

{answer_format}"""

PROPOSE_ABDUCTION = """\
Design a new Python reasoning task. You write a program `f` and one input for it. A student will \
see the program and the output it returns for your input, and must find an input that produces \
that output, so working backwards from the output should take real thought.

{rules}
- Make your task clearly different from the reference tasks below.

{references}

{answer_format}"""

PROPOSE_INDUCTION = """\
Design a Python reasoning task from the program below. Write {n_inputs} different inputs for it \
and a message. A student will see half of the inputs with their outputs, plus your message, and \
must write a program that reproduces all {n_inputs} input/output pairs. Choose inputs that together \
reveal what the program does, including its edge cases. The message should help the student \
without giving the code away.

Rules:
- Write each input as the arguments of a call to `f`, using literals only: for `f([1, 2], 'ab')` write `[1, 2], 'ab'`.
- Inputs are plain literals: no expressions, calls or imports (these modules are banned: {banned}).
- All {n_inputs} inputs must be different.

The program:
```python
{program}
```
{examples}
{answer_format}"""

INDUCTION_EXAMPLES = """\
Inputs it has been called with, and what it returned:
{pairs}
"""

PROPOSE_INDUCTION_FORMAT = """\
Reason inside <think> </think>, then put the inputs, each in its own input block, and the message \
inside <answer> </answer>, exactly like this:
<think>your reasoning</think>
<answer>
```input
...
```
(one input block for each of the {n_inputs} inputs)
```message
...
```
</answer>"""

PROPOSE_INDUCTION_FORMAT_DIRECT = """\
Answer with the inputs, each in its own input block, and then the message, in this form:
<answer>
```input
...
```
(one input block for each of the {n_inputs} inputs)
```message
...
```
</answer>"""

SOLVE_DEDUCTION = """\
Work out what the Python function `f` returns when it is called with the input below.

```python
{program}
```
```input
{input}
```

{answer_format}"""

SOLVE_DEDUCTION_FORMAT = """\
Reason step by step inside <think> </think>, then give the returned value as a Python literal \
(as `repr` would print it) inside <answer> </answer>, exactly like this:
<think>your reasoning</think>
<answer>
```output
...
```
</answer>"""

SOLVE_DEDUCTION_FORMAT_DIRECT = """\
Answer with the returned value only, as a Python literal (as `repr` would print it), in this form:
<answer>
```output
...
```
</answer>"""

SOLVE_ABDUCTION = """\
Find an input for which the Python function `f` below returns the given output.

```python
{program}
```
```output
{output}
```

{answer_format}"""

SOLVE_ABDUCTION_FORMAT = """\
Reason step by step inside <think> </think>, then give the input inside <answer> </answer>, \
written as the arguments of a call to `f` (for `f([1, 2], 'ab')` write `[1, 2], 'ab'`), exactly like this:
<think>your reasoning</think>
<answer>
```input
...
```
</answer>"""

SOLVE_ABDUCTION_FORMAT_DIRECT = """\
Answer with the input only, written as the arguments of a call to `f` (for `f([1, 2], 'ab')` write \
`[1, 2], 'ab'`), in this form:
<answer>
```input
...
```
</answer>"""

SOLVE_INDUCTION = """\
A hidden Python function `f` produced the input/output pairs below. Write a function `f` that \
reproduces them; it will also be checked on further pairs you do not see.

Message from the task author: {message}

{pairs}

{answer_format}"""

SOLVE_INDUCTION_FORMAT = """\
Reason step by step inside <think> </think>, then give the program inside <answer> </answer>, \
exactly like this:
<think>your reasoning</think>
<answer>
```python
def f(...):
    ...
```
</answer>"""

SOLVE_INDUCTION_FORMAT_DIRECT = """\
Answer with the program only, in this form:
<answer>
```python
def f(...):
    ...
```
</answer>"""

REFERENCE = """\
Reference task {number}:
```python
{program}
```
```input
{input}
```
```output
{output}
```"""

NO_REFERENCES = "There are no reference tasks yet: invent one from scratch."

PAIR = """\
```input
{input}
```
```output
{output}
```"""


def direct(answer_format: str) -> bool:
    """True when azr writes the answer's scaffold (`generation.answer_format` prefill or grammar)."""
    if answer_format not in ("free", "prefill", "grammar"):
        raise ValueError(f"unknown answer format {answer_format!r}; expected free, prefill or grammar")
    return answer_format != "free"


def program_proposer_prompt(template: str, references: list[dict], banned_modules: list[str], answer_format: str) -> str:
    """The prompt of a proposer that writes a program and its input (`template`: PROPOSE_DEDUCTION or
    PROPOSE_ABDUCTION), with K `references` (dicts with program, input, output) as examples."""
    banned = ", ".join(banned_modules) if banned_modules else "(none)"
    is_direct = direct(answer_format)
    return template.format(
        rules=PROGRAM_RULES_DIRECT if is_direct else PROGRAM_RULES.format(banned=banned),
        references=_references(references),
        answer_format=PROPOSE_ANSWER_FORMAT_DIRECT if is_direct else PROPOSE_ANSWER_FORMAT,
    )


def inputs_proposer_prompt(template: str, reference: dict, banned_modules: list[str], n_inputs: int,
                           answer_format: str) -> str:
    """The prompt of a proposer given a program (`reference["program"]`, with its known pairs) that
    writes `n_inputs` inputs and a message for it (`template`: PROPOSE_INDUCTION)."""
    banned = ", ".join(banned_modules) if banned_modules else "(none)"
    program = _field(reference, "program", "the given program")
    ending = PROPOSE_INDUCTION_FORMAT_DIRECT if direct(answer_format) else PROPOSE_INDUCTION_FORMAT
    return template.format(program=program.strip(), n_inputs=n_inputs, banned=banned,
                           examples=_induction_examples(reference), answer_format=ending.format(n_inputs=n_inputs))


def pairs_text(inputs: list[str], outputs: list[str]) -> str:
    """Input/output pairs as the solver prompts show them."""
    return "\n".join(PAIR.format(input=i, output=o) for i, o in zip(inputs, outputs))


def render_chat(tokenizer: "PreTrainedTokenizerBase", prompt: str) -> str:
    """The text the model sees: `prompt` as a user turn plus the assistant header, when the
    tokenizer has a chat template; the bare prompt otherwise."""
    if not tokenizer.chat_template:
        return prompt
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def fits_prompt(tokenizer: "PreTrainedTokenizerBase", prompt: str, max_tokens: int) -> bool:
    """Whether `prompt`, rendered for the model (`render_chat`), is at most `max_tokens` tokens long."""
    text = render_chat(tokenizer, prompt)
    return len(tokenizer(text, add_special_tokens=not tokenizer.chat_template)["input_ids"]) <= max_tokens


def _induction_examples(reference: dict) -> str:
    """Up to INDUCTION_EXAMPLE_PAIRS known input/output pairs of the induction proposer's program: they
    show what types its parameters take (without them, most proposed inputs crash the program)."""
    pairs = list(zip(reference.get("inputs") or [], reference.get("outputs") or []))[:INDUCTION_EXAMPLE_PAIRS]
    if not pairs:
        return ""
    return "\n" + INDUCTION_EXAMPLES.format(pairs="\n".join(PAIR.format(input=i, output=o) for i, o in pairs))


def _references(references: list[dict]) -> str:
    if not references:
        return NO_REFERENCES
    blocks = []
    for number, ref in enumerate(references, start=1):
        what = f"reference {number}"
        blocks.append(
            REFERENCE.format(
                number=number,
                program=_field(ref, "program", what).strip(),
                input=_field(ref, "input", what),
                output=_field(ref, "output", what),
            )
        )
    return "\n\n".join(blocks)


def _field(mapping: dict, key: str, what: str):
    if key not in mapping:
        raise ValueError(f"{what} has no {key!r} (keys: {', '.join(sorted(mapping)) or 'none'})")
    return mapping[key]
