"""The model answers problems: render each solver prompt, generate, parse, check.

One path for the solve stage (self-play tasks, `rewards.n_samples` rollouts each) and for held-out
evaluation (`azr eval`, the eval stage), so that a problem is posed, answered and judged the same
way in both; each caller turns the answers into the rows of its own file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from azr import prompts, task_types
from azr.answers import score_responses
from azr.config import AZRConfig, SamplingConfig
from azr.formats import solver_format

Progress = Callable[[int, int, int], None]  # (fields written, fields in all, tokens so far)


@dataclass
class Answer:
    """One answer to one problem: what the model was shown, what it wrote, and the verdict."""

    problem: dict[str, Any]
    sample: int
    prompt: str  # rendered for the model
    generation: Any  # azr.generation.Generation
    score: dict[str, Any]  # parsed, parse_reason, answer, correct, check_status, check_error


def answer_problems(config: AZRConfig, policy, sandbox, problems: list[dict[str, Any]], *, samples: int,
                    sampling: SamplingConfig, seed: int, strict: bool, progress: Progress | None = None) -> list[Answer]:
    """`samples` answers to each problem (a task dict, see azr.task_types) from `policy` (model,
    tokenizer), each checked in `sandbox`; in problem order, the samples of a problem together."""
    from azr.backends import open_backend
    from azr.generation import generate  # torch is slow to import; callers that only read do without it

    model, tokenizer = policy
    mode = config.generation.answer_format
    asked = [(problem, sample) for problem in problems for sample in range(samples)]
    rendered = [prompts.render_chat(tokenizer, task_types.get(p["task_type"]).solver_prompt(p, mode)) for p, _ in asked]
    formats = [solver_format(config, p) for p, _ in asked]
    generations = generate(open_backend(config, model, tokenizer, sampling), tokenizer, rendered, formats, sampling,
                           seed=seed, progress=progress)
    scores = score_responses(sandbox, [p for p, _ in asked], [g.text for g in generations], strict)
    return [Answer(p, sample, prompt, g, score) for (p, sample), prompt, g, score in zip(asked, rendered, generations, scores)]
