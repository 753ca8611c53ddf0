"""What several stages share: the policy an iteration generates with, and running a batch of prompts."""

from __future__ import annotations

from pathlib import Path

from azr import prompts
from azr.artifacts import RunDir
from azr.checkpoint import latest_checkpoint, load_policy, meta_path
from azr.config import AZRConfig
from azr.generation import Generation, generate


def policy_inputs(run_dir: RunDir, iteration: int) -> list[Path]:
    """The checkpoint marker iteration N generates with (none before the first update)."""
    checkpoint = latest_checkpoint(run_dir, before_iteration=iteration)
    return [meta_path(checkpoint)] if checkpoint else []


def generate_batch(config: AZRConfig, run_dir: RunDir, iteration: int, user_prompts: list[str], seed: int) -> tuple[list[str], list[Generation]]:
    """Render each prompt with the chat template and sample from the iteration's policy."""
    model, tokenizer = load_policy(config.model, latest_checkpoint(run_dir, before_iteration=iteration))
    rendered = [prompts.render_chat(tokenizer, p) for p in user_prompts]
    return rendered, generate(model, tokenizer, rendered, config.sampling, seed=seed)


def generation_columns(rendered: str, generation: Generation) -> dict:
    """The columns every generated row carries (prompt, ids, recorded log-probs)."""
    return {
        "prompt": rendered,
        "prompt_ids": list(generation.prompt_ids),
        "response": generation.text,
        "response_ids": list(generation.response_ids),
        "logprobs": list(generation.logprobs),
        "finish_reason": generation.finish_reason,
    }
