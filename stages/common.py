"""What several stages share: the policy an iteration generates with, and running a batch of prompts."""

from __future__ import annotations

from pathlib import Path

from collections.abc import Callable, Sequence

from azr import prompts
from azr.prompts import fits_prompt
from azr.artifacts import RunDir
from azr.checkpoint import latest_checkpoint, load_policy, meta_path
from azr.config import AZRConfig
from azr.formats import AnswerFormat
from azr.meter import Meter
from azr.backends import open_backend
from azr.generation import Generation, generate


def policy_inputs(run_dir: RunDir, iteration: int) -> list[Path]:
    """The checkpoint marker iteration N generates with (none before the first update)."""
    checkpoint = latest_checkpoint(run_dir, before_iteration=iteration)
    return [meta_path(checkpoint)] if checkpoint else []


def iteration_policy(config: AZRConfig, run_dir: RunDir, iteration: int):
    """(model, tokenizer) iteration N generates with: the checkpoint of N-1, or the base model."""
    return load_policy(config.model, latest_checkpoint(run_dir, before_iteration=iteration))


def prompt_fits(config: AZRConfig, tokenizer) -> "Callable[[str], bool]":
    """Whether a user prompt, rendered with the chat template, fits `sampling.max_prompt_tokens`."""
    return lambda text: fits_prompt(tokenizer, text, config.sampling.max_prompt_tokens)


def generate_batch(config: AZRConfig, policy, user_prompts: list[str], formats: Sequence[AnswerFormat],
                   seed: int, meter: Meter | None = None) -> tuple[list[str], list[Generation]]:
    """Render each prompt with the chat template and let the policy answer it in its format."""
    model, tokenizer = policy
    rendered = [prompts.render_chat(tokenizer, p) for p in user_prompts]
    return rendered, generate(open_backend(config, model, tokenizer), tokenizer, rendered, formats,
                              config.sampling, seed=seed, progress=meter.generation_callback() if meter else None)


def generation_columns(rendered: str, generation: Generation) -> dict:
    """The columns every generated row carries (prompt, ids, recorded log-probs)."""
    return {
        "prompt": rendered,
        "prompt_ids": list(generation.prompt_ids),
        "response": generation.text,
        "response_ids": list(generation.response_ids),
        "response_mask": list(generation.response_mask),
        "logprobs": list(generation.logprobs),
        "finish_reason": generation.finish_reason,
    }
