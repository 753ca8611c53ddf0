"""Which generation backend a stage gets (`generation.backend`): transformers in this process, or vLLM.

Both implement `azr.generation.Backend`; the generation driver does not know which it drives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from azr.config import AZRConfig, SamplingConfig
from azr.generation import Backend, HFBackend

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def backend_name(config: AZRConfig) -> str:
    """`generation.backend` resolved: auto is vllm when a server URL is set or vLLM is installed, else hf."""
    choice = config.generation.backend
    if choice == "auto":
        from azr.vllm_backend import vllm_available

        return "vllm" if config.generation.vllm.url or vllm_available() else "hf"
    return choice


def open_backend(config: AZRConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 sampling: SamplingConfig | None = None) -> Backend:
    """The backend a stage generates with, serving exactly `model`'s weights (the policy as loaded for
    the stage). vllm: the process's engine (or the server), synced to `model` (azr.vllm_backend)."""
    sampling = sampling if sampling is not None else config.sampling
    if backend_name(config) == "vllm":
        from azr.vllm_backend import open_vllm_backend

        return open_vllm_backend(config, model, tokenizer, sampling)
    return HFBackend(model, tokenizer, sampling)
