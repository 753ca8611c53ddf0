"""The policy update: Task-Relative REINFORCE++ with a PPO-style clipped ratio (design.md section 7).

One call to `train_step` is one optimizer step over every sample of an iteration (proposer
generations and solver rollouts alike). The advantages arrive already normalised per
(task type, role) by the score stage; here they only weight the token log-probabilities.

Per token t the model sampled (azr's scaffold tokens are not trained on) of a sample with advantage A:

    logp_t  = log_softmax(logits / T)[token]                        T: the sampling temperature (1 if greedy)
    ratio   = exp(logp_t - logp_recorded_t)
    pg      = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))
    loss_t  = pg - entropy_coef * entropy_t + kl_coef * kl_t      (kl_t: k3 estimate to the initial model)

The loss is the mean of loss_t over each role's tokens, averaged over the roles (`balance_roles`;
otherwise one mean over every token). The policy runs without dropout, so the first ratio is 1. The
batch goes through the model in micro-batches of `training.micro_batch_size` samples whose gradients
accumulate (each token carries its final weight), so memory is bounded by the micro-batch, not by
the batch.
"""

from __future__ import annotations

import contextlib
import math
import re
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import get_constant_schedule_with_warmup

from azr.config import TrainingConfig
from azr.distributed import Ranks
from azr.hf_compat import enable_activation_checkpointing

SAMPLE_COLUMNS = ("role", "prompt_ids", "response_ids", "response_mask", "logprobs", "advantage")


@dataclass(frozen=True)
class Sample:
    """One trainable generation: the prompt, what the model answered, and how good that was."""

    prompt_ids: list[int]
    response_ids: list[int]  # azr's scaffold tokens and the model's
    logprobs: list[float]  # recorded at generation, one per response token (0 at scaffold tokens)
    advantage: float
    response_mask: list[bool] | None = None  # True where the model sampled the token; None = every token
    role: str = "solve"

    def trained(self) -> list[bool]:
        """Which response tokens the loss covers: the model's own."""
        return list(self.response_mask) if self.response_mask is not None else [True] * len(self.response_ids)


def samples_from_frame(df: pd.DataFrame, source: str = "rewards") -> list[Sample]:
    """Turn rows of rewards.parquet into Samples, with an error naming the bad column or row."""
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)}")
    samples = []
    for i, row in enumerate(df[list(SAMPLE_COLUMNS)].itertuples(index=False)):
        sample = Sample([int(t) for t in row.prompt_ids], [int(t) for t in row.response_ids],
                        [float(x) for x in row.logprobs], float(row.advantage),
                        [bool(m) for m in row.response_mask], str(row.role))
        if not len(sample.logprobs) == len(sample.response_ids) == len(sample.response_mask):
            raise ValueError(f"{source}: row {i} has {len(sample.response_ids)} response_ids, "
                             f"{len(sample.response_mask)} response_mask entries and {len(sample.logprobs)} logprobs")
        if not sample.prompt_ids:
            raise ValueError(f"{source}: row {i} has empty prompt_ids")
        if not math.isfinite(sample.advantage):
            raise ValueError(f"{source}: row {i} has a non-finite advantage ({sample.advantage})")
        samples.append(sample)
    return samples


def build_optimizer(model: torch.nn.Module, cfg: TrainingConfig):
    """AdamW over the trainable parameters (all of them, or the LoRA adapters) and its LR schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    # fused: one kernel updates each parameter in place. The default (foreach) implementation makes
    # whole-model temporaries (+1.4 GB at the step for the default model on CPU) and is ~6x slower there.
    # FSDP's sharded parameters (DTensors) keep the default, which supports them.
    from torch.distributed.tensor import DTensor

    fused = not any(isinstance(p, DTensor) for p in params) or None
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)
    scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=cfg.warmup_steps)
    return optimizer, scheduler


def token_weights(samples: Sequence[Sample], balance_roles: bool) -> list[float]:
    """The weight of each trained token of each sample in the loss, so that the loss is a sum.

    Balanced: 1 / (roles x the tokens of the sample's role), i.e. the mean over the roles of each
    role's token mean. Otherwise 1 / (all trained tokens): one token mean.
    """
    counts: dict[str, int] = {}
    for s in samples:
        key = s.role if balance_roles else ""
        counts[key] = counts.get(key, 0) + sum(s.trained())
    counts = {k: v for k, v in counts.items() if v}
    return [1.0 / (len(counts) * counts[s.role if balance_roles else ""]) if sum(s.trained()) else 0.0
            for s in samples]


def collate(samples: Sequence[Sample], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Left-pad prompt+response so every response ends at the last position.

    Response-level tensors (targets, recorded logprobs, masks, weights) are the last R positions, R
    being the longest response in the micro-batch; that lets the model compute logits only for those
    positions. `response_mask` marks the tokens the model sampled (the ones trained on).
    """
    seq_len = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    resp_len = max(len(s.response_ids) for s in samples)
    n = len(samples)
    input_ids = torch.zeros(n, seq_len, dtype=torch.long)
    attention_mask = torch.zeros(n, seq_len, dtype=torch.long)
    old_logprobs = torch.zeros(n, resp_len)
    response_mask = torch.zeros(n, resp_len, dtype=torch.bool)
    token_weight = torch.zeros(n, resp_len)
    weights = weights if weights is not None else [1.0] * n
    for i, s in enumerate(samples):
        tokens = s.prompt_ids + s.response_ids
        input_ids[i, seq_len - len(tokens):] = torch.tensor(tokens)
        attention_mask[i, seq_len - len(tokens):] = 1
        if s.response_ids:
            start = resp_len - len(s.response_ids)
            old_logprobs[i, start:] = torch.tensor(s.logprobs)
            response_mask[i, start:] = torch.tensor(s.trained())
            token_weight[i, start:] = weights[i]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),  # what generate() uses for left padding
        "old_logprobs": old_logprobs,
        "response_mask": response_mask,
        "token_weight": token_weight,
        "advantages": torch.tensor([s.advantage for s in samples]),
    }


def collate_shared(samples: Sequence[Sample], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Samples that share one prompt (a task's solver rollouts), packed into one row: the prompt once,
    then each response. A 4D attention mask lets each response see the prompt and itself (causally),
    not the other responses, and its positions continue the prompt's, so each response token gets the
    log-prob a whole pass gives. `positions` (n, R) is the row position whose output predicts each
    response token; response-level tensors are the first R positions of each response."""
    prompt = samples[0].prompt_ids
    if any(s.prompt_ids != prompt for s in samples):
        raise ValueError("collate_shared needs samples with one and the same prompt")
    resp_len = max(len(s.response_ids) for s in samples)
    n, prompt_len = len(samples), len(prompt)
    seq_len = prompt_len + sum(len(s.response_ids) for s in samples)
    attend = torch.zeros(seq_len, seq_len, dtype=torch.bool)
    attend[:prompt_len, :prompt_len] = torch.ones(prompt_len, prompt_len, dtype=torch.bool).tril()
    position_ids = torch.arange(seq_len)
    positions = torch.zeros(n, resp_len, dtype=torch.long)
    response_ids = torch.zeros(n, resp_len, dtype=torch.long)
    old_logprobs = torch.zeros(n, resp_len)
    response_mask = torch.zeros(n, resp_len, dtype=torch.bool)
    token_weight = torch.zeros(n, resp_len)
    weights = weights if weights is not None else [1.0] * n
    start = prompt_len
    for i, s in enumerate(samples):
        size = len(s.response_ids)
        if size:
            block = slice(start, start + size)
            attend[block, :prompt_len] = True
            attend[block, block] = torch.ones(size, size, dtype=torch.bool).tril()
            position_ids[block] = torch.arange(prompt_len, prompt_len + size)
            # The prompt's last position predicts a response's first token, each response token the next.
            positions[i, :size] = torch.tensor([prompt_len - 1, *range(start, start + size - 1)])
            response_ids[i, :size] = torch.tensor(s.response_ids)
            old_logprobs[i, :size] = torch.tensor(s.logprobs)
            response_mask[i, :size] = torch.tensor(s.trained())
            token_weight[i, :size] = weights[i]
        start += size
    return {
        "input_ids": torch.tensor([prompt + [t for s in samples for t in s.response_ids]]),
        "attention_mask": attend[None, None],  # (1, 1, L, L): True where a position may attend
        "position_ids": position_ids[None],
        "positions": positions,
        "response_ids": response_ids,
        "old_logprobs": old_logprobs,
        "response_mask": response_mask,
        "token_weight": token_weight,
        "advantages": torch.tensor([s.advantage for s in samples]),
    }


# Config keys of models whose forward changes the output layer's logits (Gemma's soft-capping, Cohere's
# and Granite's scaling): their log-probs come from the logits the model returns, not from its output
# layer applied to the final hidden states.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
LOGPROB_CHUNK_ELEMENTS = 2**23  # logits (positions x vocabulary) computed at once: 32 MiB in float32


def response_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each response token and the entropy of the distribution it came from, (B, R),
    under ``softmax(logits / temperature)``: the distribution generation sampled from. `batch` comes
    from `collate` (each sample whole) or `collate_shared` (one prompt, several responses).

    The model returns its final hidden states (its own logits only for one position), and
    `token_logprobs` turns the response positions' states into log-probs a chunk at a time, so the
    full-vocabulary logits of every response position never exist at once.
    """
    plain = not any(getattr(model.config, key, None) for key in LOGIT_TRANSFORMS)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False,
                output_hidden_states=plain, logits_to_keep=1 if plain else 0)
    states, head = (out.hidden_states[-1], model.get_output_embeddings()) if plain else (out.logits, torch.nn.Identity())
    if "positions" in batch:  # collate_shared: one packed row
        return token_logprobs(head, states[0, batch["positions"]], batch["response_ids"], temperature)
    resp_len = batch["response_mask"].shape[1]
    # The state at position p predicts the token at p + 1.
    return token_logprobs(head, states[:, -resp_len - 1:-1], batch["input_ids"][:, -resp_len:], temperature)


def token_logprobs(head: torch.nn.Module, states: torch.Tensor, targets: torch.Tensor,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``log_softmax(head(states) / temperature)`` at `targets` and the entropy of that distribution,
    both shaped like `targets`, computed for a chunk of positions at a time. Each chunk's logits live
    only while the chunk is computed: the backward pass recomputes them from the chunk's states
    (activation checkpointing), so the memory is one chunk's logits, not every position's."""
    flat_states, flat_targets = states.reshape(-1, states.shape[-1]), targets.reshape(-1)
    vocab = getattr(head, "out_features", states.shape[-1])
    size = max(1, LOGPROB_CHUNK_ELEMENTS // vocab)
    parts = []
    for chunk_states, chunk_targets in zip(flat_states.split(size), flat_targets.split(size)):
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_logprobs, head, chunk_states, chunk_targets, temperature,
                                    use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(head, chunk_states, chunk_targets, temperature))
    logprobs, entropy = (torch.cat(p).view(targets.shape) for p in zip(*parts))
    return logprobs, entropy


def _chunk_logprobs(head: torch.nn.Module, states: torch.Tensor, targets: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    log_probs = F.log_softmax(head(states).float() / temperature, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1), entropy


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                clip_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped policy-gradient loss, and where the clipped term won (no gradient), both (B, R)."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(-1)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def kl_to_reference(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): non-negative, unbiased, low variance."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def reference_logprobs(model: torch.nn.Module, reference: torch.nn.Module | None,
                       batch: dict[str, torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Response log-probs under the initial model: `reference`, or `model` with its LoRA adapters off."""
    with torch.no_grad():
        if reference is not None:
            return response_logprobs(reference, batch, temperature)[0]
        if not hasattr(model, "disable_adapter"):
            raise ValueError("kl_coef > 0 with full fine-tuning needs a reference model")
        with model.disable_adapter():
            return response_logprobs(model, batch, temperature)[0]


def training_precision(cfg: TrainingConfig) -> str:
    """`cfg.precision` resolved: auto is bf16-mixed where the hardware runs bfloat16 natively."""
    if cfg.precision == "auto":
        from azr.model import native_bfloat16

        return "bf16-mixed" if native_bfloat16() else "fp32"
    return cfg.precision


def autocast(precision: str, device: torch.device):
    """The context the forward pass runs in: bfloat16 autocast for bf16-mixed (matmuls in bfloat16,
    reductions such as softmax and norms in float32; the float32 weights are cast per op, so their
    gradients and the optimizer state stay float32), nothing for fp32."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def without_dropout(model: torch.nn.Module) -> None:
    """Training mode (gradient checkpointing needs it) with every dropout module off: the update then
    scores exactly the policy that sampled, so the PPO ratio starts at 1."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):  # LoRA's, and any dropout layer of the model
            module.eval()
        if isinstance(getattr(module, "attention_dropout", None), float):  # transformers' attention: a probability
            module.attention_dropout = 0.0


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
               samples: Sequence[Sample], cfg: TrainingConfig, reference: torch.nn.Module | None = None,
               use_recorded_logprobs: bool = True, temperature: float = 1.0,
               ranks: Ranks | None = None, progress: Callable[[int, int], None] | None = None,
               before_step: Callable[[], None] | None = None) -> dict[str, float]:
    """One policy update over all `samples`; returns the metrics train.json reports.

    `reference` is the initial model for the KL term when `cfg.kl_coef > 0` (not needed for LoRA,
    whose initial model is the same model with adapters disabled). Without `use_recorded_logprobs`
    (generation ran in another dtype, so its log-probs are not this model's), the PPO old log-probs
    are this forward pass's own, detached: the step is one update, so that is the policy that sampled.
    `temperature` is the one the samples were drawn (and their log-probs recorded) at.
    With `ranks` (a torchrun rank), every rank passes the whole batch and trains on its share of it;
    the token weights, gradients and metrics are the whole batch's (see azr/distributed.py).
    `progress(micro-batches done, micro-batches in all)` is called after each backward pass, and
    `before_step()` after the last one, before the optimizer steps (the train stage restores the
    optimizer state there).
    """
    total_tokens = sum(sum(s.trained()) for s in samples)
    if total_tokens == 0:
        raise ValueError("no model-written tokens to train on (every response is empty or scaffold only)")
    use_kl = cfg.kl_coef > 0
    weights = token_weights(samples, cfg.balance_roles)
    sums = {"loss": 0.0, "pg_loss": 0.0, "entropy": 0.0, "kl": 0.0, "clip_fraction": 0.0}

    device = next(model.parameters()).device
    precision = training_precision(cfg)
    without_dropout(model)
    optimizer.zero_grad(set_to_none=True)
    chunks = _rank_micro_batches(samples, cfg.micro_batch_size, ranks)
    for number, (chunk, shared) in enumerate(chunks, 1):
        idle = not chunk  # under FSDP a rank out of samples still takes part in each pass, with no tokens
        chunk = chunk or [0]
        make = collate_shared if shared else collate
        batch = {k: v.to(device) for k, v in make([samples[i] for i in chunk], [weights[i] for i in chunk]).items()}
        mask = batch["response_mask"] & (not idle)
        with autocast(precision, device):
            logprobs, entropy = response_logprobs(model, batch, temperature)
        old_logprobs = batch["old_logprobs"] if use_recorded_logprobs else logprobs.detach()
        pg, clipped = policy_loss(logprobs, old_logprobs, batch["advantages"], cfg.clip_ratio)
        token_loss = pg - cfg.entropy_coef * entropy
        if use_kl:
            with autocast(precision, device):
                reference_lp = reference_logprobs(model, reference, batch, temperature)
            kl = kl_to_reference(logprobs, reference_lp)
            token_loss = token_loss + cfg.kl_coef * kl
            sums["kl"] += kl[mask].sum().item()
        # Each token carries its final weight (see token_weights), so the micro-batches' gradients add
        # up to the gradient of the whole batch's loss.
        loss = (token_loss * batch["token_weight"])[mask].sum()
        loss.backward()
        sums["loss"] += loss.item()
        sums["pg_loss"] += pg[mask].sum().item()
        sums["entropy"] += entropy[mask].sum().item()
        sums["clip_fraction"] += clipped[mask].sum().item()
        if progress is not None:
            progress(number, len(chunks))  # micro-batches done, of all

    params = [p for group in optimizer.param_groups for p in group["params"]]
    if ranks is not None:
        ranks.sum_gradients(params)  # once, after the micro-batches: the whole batch's gradient on every rank
        sums = ranks.sum(sums)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
        grad_norm = grad_norm.full_tensor()
    learning_rate = scheduler.get_last_lr()[0]  # the rate this step uses
    if before_step is not None:
        before_step()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()

    metrics = {key: value / total_tokens for key, value in sums.items() if key != "loss"}
    metrics["loss"] = sums["loss"]  # already weighted to a mean
    if not use_kl:
        del metrics["kl"]
    metrics.update(grad_norm=float(grad_norm), tokens=total_tokens, learning_rate=learning_rate,
                   bf16_mixed=float(precision == "bf16-mixed"))
    return metrics


def _rank_micro_batches(samples: Sequence[Sample], size: int, ranks: Ranks | None) -> list[tuple[list[int], bool]]:
    """`micro_batches`; on torchrun ranks, this rank's share of them (whole micro-batches, so each is
    computed as in one process; an FSDP rank out of them gets empty ones)."""
    batches = micro_batches(samples, size)
    if ranks is None:
        return batches
    return [batch if batch is not None else ([], False) for batch in ranks.share(batches)]


def micro_batches(samples: Sequence[Sample], size: int, share: bool = True) -> list[tuple[list[int], bool]]:
    """Sample indices per micro-batch, and whether the micro-batch shares one prompt.

    Samples with the same prompt (a task's n solver rollouts) go through the model together with the
    prompt computed once (`collate_shared`), `size` at a time; the rest are batched whole, similar
    lengths together so that less compute goes to padding. The loss is a sum, so grouping changes
    nothing but the cost.
    """
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(samples):
        by_prompt.setdefault(tuple(s.prompt_ids), []).append(i)
    batches, alone = [], []
    for group in by_prompt.values():
        if share and len(group) > 1:
            batches += [(group[k:k + size], True) for k in range(0, len(group), size)]
        else:
            alone += group
    alone.sort(key=lambda i: len(samples[i].prompt_ids) + len(samples[i].response_ids), reverse=True)
    return batches + [(alone[k:k + size], False) for k in range(0, len(alone), size)]


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in the backward pass instead of keeping them (memory for compute)."""
    enable_activation_checkpointing(model, use_reentrant=False)
    if hasattr(model, "config"):
        model.config.use_cache = False



def reset_peak_memory() -> None:
    """Start a new peak-memory window (CUDA allocator peak, or the process's peak RSS on Linux)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM, the peak resident set


def peak_memory_mb() -> float:
    """Peak memory since `reset_peak_memory`: GPU memory allocated on CUDA, else the peak RSS of the
    process (weights, optimizer state and activations; the process's lifetime peak off Linux)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    with contextlib.suppress(OSError, AttributeError):
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
