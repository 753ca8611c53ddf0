"""Answer formats: which parts of an answer azr writes, and which the model writes.

An answer is built in steps. Each `Step` is a *scaffold* (text azr writes: tags, fence labels,
``def f(``; it goes into the model's context like the prompt and is never trained on) followed by a
*field* the model writes (a program, an input, an output, a message), or no field when the answer is
complete. Three modes (`generation.answer_format`):

- ``free``: no scaffold; the model writes the whole response (reasoning, ``<answer>`` tags, fenced
  blocks) and stops at ``sampling.stop_strings`` or EOS. What azr did before formats existed.
- ``prefill``: azr writes the scaffold of the role's answer format; each field is free text that
  ends at its closing fence (`````).
- ``grammar``: as ``prefill``, and each field is constrained by a grammar (`azr.grammars`): a
  program that parses, a literal, exactly as many arguments as ``f`` has parameters. The default:
  with it the default model writes tasks that mostly run, which free text does not give it.

The text of a finished answer (scaffolds and fields joined) is a well-formed strict answer, so
`azr.parsing` reads every mode the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from azr import grammars
from azr.config import AZRConfig

AnswerMode = Literal["free", "prefill", "grammar"]
ANSWER_MODES: tuple[str, ...] = ("free", "prefill", "grammar")

FENCE = "```"
PROGRAM_START = "def f("
# Longest field each kind may take (tokens); `sampling.max_new_tokens` caps every field too.
PROGRAM_TOKENS = 192
VALUE_TOKENS = 64
MESSAGE_TOKENS = 48


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

    ``kinds`` lists the fields in order: ``program`` (a program after ``def f(``), ``value`` (one
    literal), ``arguments`` (a call's arguments; the arity comes from ``arity`` or, when None, from
    the program written in an earlier field), ``message`` (one line of prose). ``labels`` are the
    fence labels of the blocks the fields go in.
    """

    mode: AnswerMode
    kinds: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    arity: int | None = None
    stop_strings: tuple[str, ...] = ("</answer>",)  # free mode
    max_new_tokens: int = 512  # free mode

    def next_step(self, fields: list[str], truncated: bool = False) -> Step:
        """The step after `fields` (the texts of the fields written so far, in order).

        `truncated`: the last field ran out of tokens before its closing fence, which the scaffold
        then writes, so the answer stays well formed (and its content is graded as it is).
        """
        if self.mode == "free":
            if fields:
                return Step("", None)
            return Step("", Field("response", None, self.stop_strings, self.max_new_tokens))
        close = "\n" + FENCE if truncated else ""
        position = len(fields)
        if position == len(self.kinds):
            return Step(self.closing(truncated), None)
        kind, label = self.kinds[position], self.labels[position]
        opening = "<answer>\n" if position == 0 else close + "\n"
        scaffold = f"{opening}{FENCE}{label}\n" + (PROGRAM_START if kind == "program" else "")
        if kind == "arguments":
            arity = self.arity if self.arity is not None else grammars.parameter_count(
                PROGRAM_START + fields[self.kinds.index("program")].removesuffix(FENCE))
            if arity is None:  # the program does not parse, so it has no parameters to fill in
                return Step(self.closing(truncated), None)
            return Step(scaffold, self._field(kind, arity))
        return Step(scaffold, self._field(kind))

    def closing(self, truncated: bool) -> str:
        """The scaffold that ends the answer as it stands (no more fields)."""
        if self.mode == "free":
            return ""
        return ("\n" + FENCE if truncated else "") + "\n</answer>"

    def _field(self, kind: str, arity: int = 1) -> Field:
        grammar, tokens = {
            "program": (grammars.program_grammar, PROGRAM_TOKENS),
            "value": (grammars.literal_grammar, VALUE_TOKENS),
            "arguments": (lambda: grammars.arguments_grammar(arity), VALUE_TOKENS),
            "message": (grammars.message_grammar, MESSAGE_TOKENS),
        }[kind]
        return Field(kind, grammar() if self.mode == "grammar" else None, (FENCE,), tokens)


def answer_format(mode: AnswerMode, role: str, task_type: str, *, program: str | None = None,
                  n_inputs: int = 1, stop_strings: tuple[str, ...] = ("</answer>",),
                  max_new_tokens: int = 512) -> AnswerFormat:
    """The format of one answer of `role` (propose | solve) for `task_type`.

    `program` is the program the answer is about when the model does not write it (the induction
    proposer's program, the abduction solver's program): its parameters fix the arguments' arity.
    """
    if mode not in ANSWER_MODES:
        raise ValueError(f"unknown answer format {mode!r}; expected one of {', '.join(ANSWER_MODES)}")
    if mode == "free":
        return AnswerFormat("free", stop_strings=tuple(stop_strings), max_new_tokens=max_new_tokens)
    arity = grammars.parameter_count(program) if program is not None else None
    if program is not None and arity is None:
        raise ValueError("the program of this answer defines no function with parameters")
    layouts = {
        ("propose", "deduction"): (("program", "arguments"), ("python", "input")),
        ("propose", "abduction"): (("program", "arguments"), ("python", "input")),
        ("propose", "induction"): (("arguments",) * n_inputs + ("message",), ("input",) * n_inputs + ("message",)),
        ("solve", "deduction"): (("value",), ("output",)),
        ("solve", "abduction"): (("arguments",), ("input",)),
        ("solve", "induction"): (("program",), ("python",)),
    }
    if (role, task_type) not in layouts:
        raise ValueError(f"no answer format for role {role!r} and task type {task_type!r}")
    kinds, labels = layouts[(role, task_type)]
    return AnswerFormat(mode, kinds, labels, arity=arity if "program" not in kinds else None)


def format_for(config: AZRConfig, role: str, task_type: str, program: str | None = None) -> AnswerFormat:
    """`answer_format` with the run's settings (answer format, induction inputs, free-mode stops and length).

    `program`: the program a solver or induction proposer is shown (it fixes the arguments' arity)."""
    return answer_format(
        config.generation.answer_format, role, task_type, program=program,
        n_inputs=config.validation.induction_num_inputs, stop_strings=tuple(config.sampling.stop_strings),
        max_new_tokens=config.sampling.max_new_tokens,
    )


def solver_format(config: AZRConfig, task: dict) -> AnswerFormat:
    """The format of a solver's answer to `task` (abduction: one argument per parameter of its program)."""
    program = task["program"] if task["task_type"] == "abduction" else None
    return format_for(config, "solve", task["task_type"], program)
