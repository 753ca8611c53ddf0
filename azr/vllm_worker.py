"""What azr adds to each vLLM worker (vLLM's `worker_extension_cls`): weight sync and azr's log-probs.

This module is imported inside vLLM's worker processes (in-process engines and `vllm serve`
alike, which must be started with ``--worker-extension-cls azr.vllm_worker.AzrWorkerExtension``);
azr calls its methods by name through `collective_rpc`. It imports only torch and safetensors.

Log-probs. azr records ``log_softmax(logits / T)[token]`` before top-p and before the grammar
mask (azr.generation). No vLLM `logprobs_mode` is that: `raw_logprobs` is taken after the
grammar bitmask (vLLM applies it to the logits before the sampler) and without the temperature;
`processed_logprobs` also renormalises over top-p's nucleus. `processed_logits` gives, for the
sampled token, exactly ``logits[token] / T`` (top-p and the grammar only set *other* tokens to
-inf). What is missing is the normaliser ``logsumexp(logits / T)`` over the whole vocabulary, so
`azr_install_logprobs` keeps a copy of each step's logits as the model computed them (before the
in-place bitmask) and subtracts their logsumexp, at the row's temperature, from the returned
values. The engine must run with ``logprobs_mode="processed_logits"``.
"""

from __future__ import annotations

from pathlib import Path

import torch


class AzrWorkerExtension:
    """Mixed into vLLM's worker class; `self` is the worker (it has `model_runner`)."""

    def azr_install_logprobs(self) -> bool:
        """Make the sampler's returned log-probs azr's (see the module docstring). Idempotent."""
        runner = self.model_runner
        if getattr(runner, "_azr_logprobs", False):
            return True
        if runner.model_config.logprobs_mode != "processed_logits":
            raise RuntimeError("azr needs the vLLM engine started with logprobs_mode='processed_logits', "
                               f"not {runner.model_config.logprobs_mode!r}")
        model, sampler = runner.model, runner.sampler
        compute_logits, sample = model.compute_logits, sampler.forward
        kept: dict[str, torch.Tensor | None] = {}

        def keep_logits(hidden_states, *args, **kwargs):
            logits = compute_logits(hidden_states, *args, **kwargs)
            # The grammar bitmask is applied to these logits in place before sampling: keep a copy.
            kept["logits"] = None if logits is None else logits.detach().clone()
            return logits

        def normalised(logits, sampling_metadata, *args, **kwargs):
            output = sample(logits, sampling_metadata, *args, **kwargs)
            raw = kept.pop("logits", None)
            tensors = output.logprobs_tensors
            if tensors is not None and raw is not None and raw.shape[0] == tensors.logprobs.shape[0]:
                scaled = raw.float()
                if not sampling_metadata.all_greedy:  # the sampler's own scaling (greedy rows: 1)
                    temperature = sampling_metadata.temperature
                    if not sampling_metadata.all_random:
                        temperature = torch.where(temperature < 1e-5, 1.0, temperature)
                    scaled = scaled / temperature.unsqueeze(1)
                tensors.logprobs.sub_(scaled.logsumexp(-1, keepdim=True).to(tensors.logprobs.dtype))
            return output

        model.compute_logits = keep_logits
        sampler.forward = normalised
        runner._azr_logprobs = True
        return True

    def azr_load_weights(self, directory: str) -> int:
        """Load every ``*.safetensors`` file of `directory` (HF parameter names) into the model;
        returns the number of tensors read."""
        from safetensors import safe_open

        files = sorted(Path(directory).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory}: no .safetensors files to load")
        count = 0

        def tensors():
            nonlocal count
            for path in files:
                with safe_open(str(path), framework="pt") as handle:
                    for name in handle.keys():
                        count += 1
                        yield name, handle.get_tensor(name)

        # vLLM's in-place reload: it undoes and redoes the kernel-format processing (e.g. the CPU
        # backend's repacked linear weights) that a plain `model.load_weights` would trip over.
        self.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
        _repack_cpu_embedding_gemms(self.model_runner.model)
        return count


def _repack_cpu_embedding_gemms(model: torch.nn.Module) -> int:
    """On vLLM's CPU backend, rebuild the packed GEMM of every layer that keeps its weight beside it
    (the embedding used as LM head). vLLM 0.32's in-place reload refreshes the weight but leaves the
    oneDNN handle packed from the old one, so the logits would come from the old head. (Layers whose
    weight lives only in the packed form are re-packed by the reload itself.) Returns the count."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return 0
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    repacked = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.numel():
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            repacked += 1
    return repacked
