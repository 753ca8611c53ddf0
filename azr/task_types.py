"""Task types: everything that makes deduction, abduction and induction different, in one registry.

A task type owns what its proposer is asked and writes (prompt templates in `azr.prompts`, the
fields of its answer, how they are read), what the tasks it makes look like, what its solver is
shown and answers, how that answer is checked, and how a benchmark row becomes one of its
problems. The rest of azr asks the registry (`get(name)`) and never switches on a type's name.

To add a type: subclass `TaskType` (or one of the three below), give it its prompt templates
(`azr.prompts`), and `register` an instance; `task_types` in a run's config may then name it.

Tasks are plain dicts with the columns of `tasks.parquet`: `program`, `input`/`output` (the first
pair), `inputs`/`outputs` (every pair), `message`, `shown` (the pairs a solver sees).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from azr import grammars, parsing, prompts
from azr.literals import arguments_key, parse_arguments

if TYPE_CHECKING:
    from azr.sandbox.client import CheckResult, Sandbox

MIN_INDUCTION_INPUTS = 2  # distinct inputs an induction task needs: one shown pair and one hidden pair
# Seed and top-up tasks have no proposer message; the induction solver still gets a hint of the job.
DEFAULT_INDUCTION_MESSAGE = "Find the function that maps each input to its output."


class BenchmarkError(ValueError):
    """A benchmark file or problem that cannot be evaluated; the message names the file and line."""


class TaskType:
    """A kind of task. The defaults are those of a type whose proposer writes a program and one input
    and whose solver answers with one literal (deduction); subclasses override what differs."""

    name: str = ""
    answer_label = "output"  # fence label of the solver's answer block
    gold_key = "output"  # the task field holding the reference answer (evaluation, azr check)
    solve_layout: tuple[str, ...] = ("value",)  # the fields of a solver's answer (azr.formats)
    propose_template = prompts.PROPOSE_DEDUCTION
    solve_template = prompts.SOLVE_DEDUCTION
    solve_endings = (prompts.SOLVE_DEDUCTION_FORMAT, prompts.SOLVE_DEDUCTION_FORMAT_DIRECT)  # (free, direct)
    given_program = False  # the proposer writes a program (False) or is given a buffer program (True)
    shows_pairs = False  # its tasks are input/output pairs, some shown to the solver (`shown`), not one input
    benchmark_keys = ("input", "output")  # what a benchmark row must hold besides the program

    # -------------------------------------------------------------- the proposer

    def propose_layout(self, n_inputs: int) -> tuple[str, ...]:
        """The fields of a proposer's answer (azr.formats): a program and its input."""
        return ("signature", "body", "arguments")

    def proposer_prompt(self, references: list[dict], banned: list[str], n_inputs: int, mode: str = "free") -> str:
        """The proposer's prompt: K reference tasks (dicts with program, input, output) as examples."""
        return prompts.program_proposer_prompt(self.propose_template, references, banned, mode)

    def parse_proposal(self, text: str, strict: bool, n_inputs: int) -> parsing.ParsedProposal:
        return parsing.parse_program_proposal(text, strict)

    def proposal_inputs(self, input_text: str | None, inputs: list[str] | None) -> list[str] | None:
        """The inputs a parsed proposal gives its program (None when it gives none)."""
        return [input_text] if input_text is not None else None

    def check_inputs(self, inputs: list[str]) -> tuple[list[str], str | None]:
        """(the inputs to validate, None), or (the inputs as given, the ground-truth reason to reject
        them). Every input must be a literal argument list (`not_literal`); force acceptance never
        waives it: without it the task has no honest answer."""
        if not all(parse_arguments(text).ok for text in inputs):
            return inputs, "not_literal"
        return inputs, None

    # -------------------------------------------------------------- its tasks

    def outputs(self, task: dict) -> list[str]:
        """The gold outputs a task's quality checks look at."""
        return [task["output"]]

    def shown_pairs(self, n_pairs: int, rng: np.random.Generator) -> list[int] | None:
        """Indices of the input/output pairs a solver is shown (None: the type shows no pairs)."""
        return None

    def can_pose(self, inputs: Sequence[str] | None) -> bool:
        """Whether a buffer task with these inputs can be posed as this type (a top-up)."""
        return True

    # -------------------------------------------------------------- the solver

    def solver_view(self, task: dict) -> dict:
        """The task as the solver's prompt sees it."""
        return task

    def solver_prompt(self, task: dict, mode: str = "free") -> str:
        view = self.solver_view(task)
        ending = self.solve_endings[prompts.direct(mode)]
        return self.solve_template.format(**self._solver_fields(view), answer_format=ending)

    def _solver_fields(self, view: dict) -> dict[str, str]:
        return {"program": _field(view, "program", self.name).strip(), "input": _field(view, "input", self.name)}

    def solver_arity(self, task: dict) -> int | None:
        """The number of arguments the solver's answer passes to f (None: its answer is no call)."""
        return None

    def parse_answer(self, text: str, strict: bool) -> parsing.ParsedAnswer:
        return parsing.parse_value_answer(text, strict, self.answer_label)

    def check(self, sandbox: "Sandbox", tasks: list[dict], answers: list[str]) -> list["CheckResult"]:
        """Check each answer against its task in the sandbox, in one batch."""
        return sandbox.check_deduction([(task["output"], answer) for task, answer in zip(tasks, answers)])

    # -------------------------------------------------------------- benchmarks

    def problem(self, row: dict[str, Any], task_id: str, program: str, where: str) -> dict[str, Any]:
        """A benchmark row (already holding a program) as one of this type's problems."""
        for key in self.benchmark_keys:
            if not isinstance(row.get(key), str):
                raise BenchmarkError(f"{where}: {self.name} needs '{key}' as a string (CRUXEval format: code, input, output, id)")
        return _task(task_id, self.name, program, input=row["input"], output=row["output"])

    def complete(self, sandbox: "Sandbox", problems: list[dict]) -> list[dict]:
        """Problems made ready to prompt (what a benchmark row does not hold, computed in the sandbox)."""
        return problems


class Deduction(TaskType):
    """The solver sees a program and an input and predicts the output."""

    name = "deduction"


class Abduction(TaskType):
    """The solver sees a program and an output and writes an input that gives it (any such input counts)."""

    name = "abduction"
    answer_label = "input"
    gold_key = "input"
    solve_layout = ("arguments",)
    propose_template = prompts.PROPOSE_ABDUCTION
    solve_template = prompts.SOLVE_ABDUCTION
    solve_endings = (prompts.SOLVE_ABDUCTION_FORMAT, prompts.SOLVE_ABDUCTION_FORMAT_DIRECT)

    def _solver_fields(self, view: dict) -> dict[str, str]:
        return {"program": _field(view, "program", self.name).strip(), "output": _field(view, "output", self.name)}

    def solver_arity(self, task: dict) -> int | None:
        arity = grammars.parameter_count(task["program"])
        if arity is None:
            raise ValueError("an abduction task's program defines no function")
        return arity

    def check(self, sandbox: "Sandbox", tasks: list[dict], answers: list[str]) -> list["CheckResult"]:
        return sandbox.check_abduction([(task["program"], answer, task["output"]) for task, answer in zip(tasks, answers)])


class Induction(TaskType):
    """The proposer is given a buffer program and writes inputs and a message; the solver sees half of
    the input/output pairs and the message and writes a program that reproduces the hidden half."""

    name = "induction"
    answer_label = "python"
    gold_key = "program"
    solve_layout = ("signature", "body")
    propose_template = prompts.PROPOSE_INDUCTION
    solve_template = prompts.SOLVE_INDUCTION
    solve_endings = (prompts.SOLVE_INDUCTION_FORMAT, prompts.SOLVE_INDUCTION_FORMAT_DIRECT)
    given_program = True
    shows_pairs = True
    benchmark_keys = ("inputs",)

    def propose_layout(self, n_inputs: int) -> tuple[str, ...]:
        return ("arguments",) * n_inputs + ("message",)

    def proposer_prompt(self, references: list[dict], banned: list[str], n_inputs: int, mode: str = "free") -> str:
        """`references[0]` is the program to write `n_inputs` inputs for (with its known pairs)."""
        if not references:
            raise ValueError("the induction proposer needs references[0]: the program to write inputs for")
        return prompts.inputs_proposer_prompt(self.propose_template, references[0], banned, n_inputs, mode)

    def parse_proposal(self, text: str, strict: bool, n_inputs: int) -> parsing.ParsedProposal:
        return parsing.parse_inputs_proposal(text, strict, n_inputs)

    def proposal_inputs(self, input_text: str | None, inputs: list[str] | None) -> list[str] | None:
        return list(inputs) if inputs is not None else None

    def check_inputs(self, inputs: list[str]) -> tuple[list[str], str | None]:
        """Literal inputs, kept once per value (`[1,2]` is `[1, 2]`); fewer than two distinct ones
        leave no hidden pair (`repeated_inputs`)."""
        inputs, reason = super().check_inputs(inputs)
        if reason:
            return inputs, reason
        kept = [inputs[i] for i in distinct_inputs(inputs)]
        return (kept, None) if len(kept) >= MIN_INDUCTION_INPUTS else (inputs, "repeated_inputs")

    def outputs(self, task: dict) -> list[str]:
        return list(task["outputs"])

    def shown_pairs(self, n_pairs: int, rng: np.random.Generator) -> list[int] | None:
        """Half of the pairs, at random (at least one); the rest are hidden."""
        order = rng.permutation(n_pairs)
        return sorted(int(i) for i in order[: max(1, n_pairs // 2)])

    def can_pose(self, inputs: Sequence[str] | None) -> bool:
        return inputs is not None and len(distinct_inputs(list(inputs))) >= MIN_INDUCTION_INPUTS

    def solver_view(self, task: dict) -> dict:
        inputs, outputs = _field(task, "inputs", self.name), _field(task, "outputs", self.name)
        if len(inputs) != len(outputs):
            raise ValueError(f"induction task has {len(inputs)} inputs but {len(outputs)} outputs")
        shown = list(task.get("shown") if task.get("shown") is not None else range(len(inputs)))
        return {**task, "inputs": [task["inputs"][i] for i in shown], "outputs": [task["outputs"][i] for i in shown],
                "message": task["message"] or DEFAULT_INDUCTION_MESSAGE}

    def _solver_fields(self, view: dict) -> dict[str, str]:
        inputs, outputs = _field(view, "inputs", self.name), _field(view, "outputs", self.name)
        if len(inputs) != len(outputs):
            raise ValueError(f"induction task has {len(inputs)} inputs but {len(outputs)} outputs")
        return {"message": _field(view, "message", self.name).strip(), "pairs": prompts.pairs_text(inputs, outputs)}

    def solver_arity(self, task: dict) -> int | None:
        """The solver writes a signature with as many parameters as the inputs have arguments."""
        return grammars.argument_count(task["inputs"][0]) or 1

    def parse_answer(self, text: str, strict: bool) -> parsing.ParsedAnswer:
        return parsing.parse_program_answer(text, strict)

    def check(self, sandbox: "Sandbox", tasks: list[dict], answers: list[str]) -> list["CheckResult"]:
        from azr.sandbox.results import CheckResult

        items, where = [], []
        results: list[Any] = [None] * len(tasks)
        for i, (task, answer) in enumerate(zip(tasks, answers)):
            inputs, outputs = hidden_pairs(task)
            if not inputs:  # every pair shown, or hidden ones that repeat a shown input: nothing to check
                results[i] = CheckResult(False, "malformed", "the task has no hidden pair whose input differs from the shown ones")
                continue
            items.append((answer, inputs, outputs))
            where.append(i)
        for i, result in zip(where, sandbox.check_induction(items) if items else []):
            results[i] = result
        return results

    def problem(self, row: dict[str, Any], task_id: str, program: str, where: str) -> dict[str, Any]:
        inputs = row.get("inputs")  # the outputs are computed by `complete`
        if not isinstance(inputs, list) or len(inputs) < 2 or not all(isinstance(i, str) for i in inputs):
            raise BenchmarkError(f"{where}: induction needs 'inputs', a list of at least 2 argument strings")
        message = row.get("message", "")
        if not isinstance(message, str):
            raise BenchmarkError(f"{where}: 'message' must be a string")
        return _task(task_id, self.name, program, inputs=inputs, message=message)

    def complete(self, sandbox: "Sandbox", problems: list[dict]) -> list[dict]:
        """Outputs run in the sandbox, and a fixed half of the pairs shown: the half depends only on the
        problem id, so every model sees the same pairs."""
        results = sandbox.validate([(p["program"], list(p["inputs"])) for p in problems])
        completed = []
        for problem, result in zip(problems, results):
            if result.status != "ok":
                raise BenchmarkError(f"induction problem {problem['task_id']}: the program does not run on its "
                                 f"inputs in the sandbox ({result.status}: {result.error})")
            rng = np.random.default_rng(zlib.crc32(problem["task_id"].encode()))
            completed.append({**problem, "outputs": list(result.outputs), "shown": self.shown_pairs(len(problem["inputs"]), rng)})
        return completed


def distinct_inputs(inputs: list[str]) -> list[int]:
    """Indices of the first occurrence of each input value (literal inputs compared by value)."""
    seen, kept = set(), []
    for i, text in enumerate(inputs):
        key = arguments_key(text) or text
        if key not in seen:
            seen.add(key)
            kept.append(i)
    return kept


def hidden_pairs(task: dict) -> tuple[list[str], list[str]]:
    """The induction pairs the solver did not see and whose input differs from every shown one; its
    program must reproduce them."""
    shown = set(task["shown"])
    shown_keys = {arguments_key(task["inputs"][i]) or task["inputs"][i] for i in shown}
    hidden = [i for i in range(len(task["inputs"]))
              if i not in shown and (arguments_key(task["inputs"][i]) or task["inputs"][i]) not in shown_keys]
    return [task["inputs"][i] for i in hidden], [task["outputs"][i] for i in hidden]


def _task(task_id: str, name: str, program: str, **fields: Any) -> dict[str, Any]:
    return {"task_id": task_id, "task_type": name, "program": program, "input": None, "output": None,
            "inputs": [], "outputs": [], "message": "", "shown": [], **fields}


def _field(mapping: dict, key: str, what: str):
    if key not in mapping:
        raise ValueError(f"{what} task has no {key!r} (keys: {', '.join(sorted(mapping)) or 'none'})")
    return mapping[key]


# ---------------------------------------------------------------- the registry

_REGISTRY: dict[str, TaskType] = {}


def register(task_type: TaskType) -> TaskType:
    """Make `task_type` known by its name (replacing a type of the same name)."""
    if not task_type.name or not task_type.name.isidentifier():
        raise ValueError(f"a task type needs a name that is an identifier, not {task_type.name!r}")
    _REGISTRY[task_type.name] = task_type
    return task_type


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> TaskType:
    """The registered type `name`, or a ValueError that lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task type {name!r}; expected one of {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    """The registered task types, in the order they were registered."""
    return tuple(_REGISTRY)


for _type in (Abduction(), Deduction(), Induction()):
    register(_type)
