"""Answer formats: which parts of an answer azr writes, and which the model writes.

An answer is built in steps. Each `Step` is a *scaffold* (text azr writes: tags, fence labels,
``def f(``; it goes into the model's context like the prompt and is never trained on) followed by a
*field* the model writes (an input, a signature, a function body, an output, a message), or no field
when the answer is complete. Three modes (`generation.answer_format`):

- ``free``: no scaffold; the model writes the whole response (reasoning, ``<answer>`` tags, fenced
  blocks) and stops at ``sampling.stop_strings`` or EOS. What azr did before formats existed.
- ``prefill``: azr writes the scaffold of the role's answer format; each field is free text that
  ends at its closing fence (or, for a signature, at the end of its line).
- ``grammar``: as ``prefill``, and each field is constrained by a grammar (`azr.grammars`): literals,
  exactly as many arguments as ``f`` has parameters, a signature of the input's arity, a body that
  parses and reads only its own parameters and a few locals. The default: with it the default model
  writes tasks that mostly run, which free text does not give it.

A program is written in two fields, its signature and then its body, so that the body's grammar can
be built from the signature (the body reads only its own parameters and a few locals); a
proposer's input follows its program and has exactly one argument per parameter.

The text of a finished answer (scaffolds and fields joined) is a well-formed strict answer, so
`azr.parsing` reads every mode the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from azr import grammars, task_types
from azr.config import AZRConfig

AnswerMode = Literal["free", "prefill", "grammar"]
ANSWER_MODES: tuple[str, ...] = ("free", "prefill", "grammar")

FENCE = "```"
PROGRAM_START = "def f("
# Longest field each kind may take (tokens); `sampling.max_new_tokens` caps every field too.
FIELD_TOKENS = {"arguments": 64, "value": 64, "message": 48, "signature": 16, "body": 192}
# Fence label of the block each kind opens; a body continues the block its signature opened.
LABELS = {"arguments": "input", "value": "output", "message": "message", "signature": "python"}


@dataclass(frozen=True)
class Field:
    """One stretch the model writes: until its grammar completes, a stop string, EOS or max_tokens."""

    name: str
    grammar: str | None  # EBNF (see azr.grammars); None = free text
    stop: tuple[str, ...]  # the field ends once its text contains one (the stop text is kept)
    max_tokens: int


@dataclass(frozen=True)
class Step:
    scaffold: str  # written by azr before the field
    field: Field | None  # None: the answer is complete


@dataclass(frozen=True)
class AnswerFormat:
    """The steps of one answer: `next_step(fields)` gives the step after the fields written so far.

    ``kinds`` lists the fields in order: ``signature`` (after ``def f(``: ``arity`` parameters, or
    one to three of the model's choosing), ``body`` (the function body, reading only the signature's
    parameters and a few locals), ``arguments`` (one literal argument per parameter: ``arity``, or
    the signature's), ``value`` (one literal), ``message`` (one line of prose).
    """

    mode: AnswerMode
    kinds: tuple[str, ...] = ()
    arity: int | None = None
    stop_strings: tuple[str, ...] = ("</answer>",)  # free mode
    max_new_tokens: int = 512  # free mode

    def next_step(self, fields: list[str], truncated: bool = False) -> Step:
        """The step after `fields` (the texts of the fields written so far, in order).

        `truncated`: the last field ran out of tokens (or the model ended it), which the scaffold then
        closes, so the answer stays well formed and its content is graded as it is.
        """
        if self.mode == "free":
            if fields:
                return Step("", None)
            return Step("", Field("response", None, self.stop_strings, self.max_new_tokens))
        position = len(fields)
        if position == len(self.kinds) or (truncated and self.kinds[position] == "body"):
            return Step(self.closing(truncated), None)  # a cut signature has no body to follow it
        kind = self.kinds[position]
        field = self._field(kind, fields)
        if field is None:  # what fixes this field's shape (an input's arity, a signature) did not parse
            return Step(self.closing(truncated), None)
        if kind == "body":
            return Step("", field)
        opening = "<answer>\n" if position == 0 else ("\n" + FENCE if truncated else "") + "\n"
        return Step(f"{opening}{FENCE}{LABELS[kind]}\n" + (PROGRAM_START if kind == "signature" else ""), field)

    def field_count(self) -> int:
        """The fields this answer plans to have (fewer when one is cut off)."""
        return len(self.kinds) if self.mode != "free" else 1

    def closing(self, truncated: bool) -> str:
        """The scaffold that ends the answer as it stands (no more fields)."""
        if self.mode == "free":
            return ""
        return ("\n" + FENCE if truncated else "") + "\n</answer>"

    def _field(self, kind: str, fields: list[str]) -> Field | None:
        parameters = grammars.signature_parameters(fields[self.kinds.index("signature")]) \
            if "signature" in self.kinds[:len(fields)] else None
        if kind in ("body", "arguments") and "signature" in self.kinds and not parameters:
            return None  # the signature does not parse (cut off): nothing to build on
        if kind == "signature":
            grammar = grammars.signature_grammar(self.arity)
        elif kind == "body":
            grammar = grammars.body_grammar(parameters)
        elif kind == "arguments":
            grammar = grammars.arguments_grammar(len(parameters) if parameters else self.arity or 0)
        else:
            grammar = {"value": grammars.literal_grammar, "message": grammars.message_grammar}[kind]()
        stop = ("\n",) if kind == "signature" else (FENCE,)
        return Field(kind, grammar if self.mode == "grammar" else None, stop, FIELD_TOKENS[kind])


def answer_format(mode: AnswerMode, role: str, task_type: str, *, arity: int | None = None,
                  n_inputs: int = 1, stop_strings: tuple[str, ...] = ("</answer>",),
                  max_new_tokens: int = 512) -> AnswerFormat:
    """The format of one answer of `role` (propose | solve) for `task_type` (its fields: the type's
    `propose_layout` or `solve_layout`, azr.task_types).

    `arity`: the number of arguments of `f` when the answer does not choose it itself in a signature
    of its own: the program's parameters for an abduction solver or an induction proposer, the shown
    inputs' arguments for an induction solver's signature.
    """
    if mode not in ANSWER_MODES:
        raise ValueError(f"unknown answer format {mode!r}; expected one of {', '.join(ANSWER_MODES)}")
    if mode == "free":
        return AnswerFormat("free", stop_strings=tuple(stop_strings), max_new_tokens=max_new_tokens)
    if role not in ("propose", "solve"):
        raise ValueError(f"no answer format for role {role!r}; expected propose or solve")
    kind = task_types.get(task_type)
    kinds = kind.propose_layout(n_inputs) if role == "propose" else kind.solve_layout
    writes_own_signature = role == "propose" and "signature" in kinds
    if arity is None and not writes_own_signature and ("arguments" in kinds or "signature" in kinds):
        raise ValueError(f"a {role} answer for {task_type} needs the arity of f")
    return AnswerFormat(mode, kinds, arity=None if writes_own_signature else arity)


def format_for(config: AZRConfig, role: str, task_type: str, arity: int | None = None) -> AnswerFormat:
    """`answer_format` with the run's settings (answer format, inputs of a given program, free-mode stops and length)."""
    return answer_format(
        config.generation.answer_format, role, task_type, arity=arity,
        n_inputs=config.validation.induction_num_inputs, stop_strings=tuple(config.sampling.stop_strings),
        max_new_tokens=config.sampling.max_new_tokens,
    )


def program_arity(program: str) -> int:
    """The number of arguments a call of `program`'s f takes (its positional parameters)."""
    arity = grammars.parameter_count(program)
    if arity is None:
        raise ValueError("the program defines no function")
    return arity


def solver_format(config: AZRConfig, task: dict) -> AnswerFormat:
    """The format of a solver's answer to `task`, with the arity its task type reads off the task."""
    return format_for(config, "solve", task["task_type"], task_types.get(task["task_type"]).solver_arity(task))
