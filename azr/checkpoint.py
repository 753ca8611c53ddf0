"""Checkpoints of the policy: save, find, load, prune, and export (design.md sections 3 and 7).

Layout of `runs/<run>/iter-NNNN/checkpoint/`:

    config.json, model.safetensors, tokenizer files   full fine-tuning: HF save_pretrained
    adapter_config.json, adapter_model.safetensors    LoRA: the peft adapter (the base is config.model)
    optimizer.pt  scheduler.pt  rng.pt                 what resuming needs to continue identically
    checkpoint.json (+ manifest)                       written last: what is in here, and file hashes
    policy.json (+ manifest)                           only in a kept policy (below): what is left

A checkpoint directory is written under a temporary name and renamed, so it is either whole or absent
(a full disk is a NoSpaceError, and the partial copy is removed).
Only the newest checkpoint stays whole: resuming continues from it. When a newer one is saved, the
older ones kept (`training.keep_checkpoints`, or all with `training.keep_policies`) become *policies*:
their optimizer, scheduler and RNG state go and their weights are stored in the generation dtype,
which is what evaluating or exporting them loads anyway (SmolLM2-135M: 270 MB in bfloat16 instead of
1.6 GB). Older ones still lose everything but `checkpoint.json`. Either way `checkpoint.json` stays as
it was written, so the stages that read the checkpoint still count as complete.
`discard_damaged_checkpoints` removes a checkpoint whose files no longer match the hashes in its
checkpoint.json, so that its train stage runs again instead of training on it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file

from azr.artifacts import (ArtifactError, NoSpaceError, RunDir, file_sha256, manifest_path, no_space, out_of_space,
                           read_json, write_json)
from azr.config import ModelConfig
from azr.model import generation_dtype, load_model
from azr.pipeline import TRAIN

META_FILE = "checkpoint.json"
POLICY_FILE = "policy.json"  # in a checkpoint reduced to its policy: the weights' dtype and files
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng.pt")


def meta_path(checkpoint: Path) -> Path:
    """The file that marks a checkpoint complete; train.json's manifest lists it as an input."""
    return Path(checkpoint) / META_FILE


def rng_state() -> dict[str, Any]:
    """The torch RNG state (CPU and every CUDA device): the only RNG the update draws from."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, model, tokenizer, optimizer, scheduler, rng: dict[str, Any], *,
                    iteration: int, model_config: ModelConfig, inputs: Sequence[Path] = (),
                    config_hash: str = "", model_state: dict[str, torch.Tensor] | None = None,
                    optimizer_state: dict[str, Any] | None = None) -> Path:
    """Write model (or LoRA adapter), tokenizer, optimizer, scheduler and RNG state atomically.

    `model_state` and `optimizer_state`, when given, are saved instead of the model's and optimizer's
    own (FSDP: the whole states gathered from the ranks' shards)."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, state_dict=model_state)
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng, tmp / "rng.pt")
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {"iteration": iteration, "lora": isinstance(model, PeftModel),
                "base_model": model_config.name_or_path, "files": files}
        write_json(meta, meta_path(tmp), inputs=inputs, config_hash=config_hash)
    except Exception as exc:
        full = not isinstance(exc, NoSpaceError) and out_of_space(exc, tmp.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a partial copy taking the space
        if full:
            raise no_space(directory, exc) from exc
        raise
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def read_meta(checkpoint: Path, *, training: bool = False) -> dict[str, Any]:
    """checkpoint.json of a checkpoint, with "files" (and "dtype" for a kept policy) saying what it holds
    now. A clear error when it was pruned or is incomplete, or, with `training` (resuming needs the
    optimizer state), when only its policy was kept."""
    checkpoint = Path(checkpoint)
    meta = read_json(meta_path(checkpoint))
    if (checkpoint / POLICY_FILE).exists():
        policy = read_json(checkpoint / POLICY_FILE)
        if training:
            raise ArtifactError(f"{checkpoint}: only the policy was kept (weights in {policy['dtype']}, no optimizer "
                                "state); training continues from the newest checkpoint, which keeps it")
        meta = {**meta, **policy}
    missing = [name for name in meta["files"] if not (checkpoint / name).exists()]
    if missing:
        raise ArtifactError(f"{checkpoint}: checkpoint was pruned or is incomplete (missing {', '.join(missing)})")
    return meta


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint's files, or None when they match what it says it holds:
    checkpoint.json, or policy.json once only its policy was kept (or nothing, once pruned)."""
    record = POLICY_FILE if (Path(checkpoint) / POLICY_FILE).exists() else META_FILE
    try:
        files = read_json(Path(checkpoint) / POLICY_FILE if record == POLICY_FILE else meta_path(checkpoint))["files"]
        present = {name: Path(checkpoint) / name for name in files if (Path(checkpoint) / name).exists()}
    except (ArtifactError, KeyError, TypeError, AttributeError):
        return f"{record} is unreadable"
    if not present:
        return None  # pruned: only checkpoint.json is kept, by design
    missing = sorted(set(files) - set(present))
    if missing:
        return f"missing {', '.join(missing)}"
    bad = [name for name, path in present.items() if file_sha256(path) != files[name]]
    return f"{', '.join(bad)} do not match {record} (corrupt or truncated)" if bad else None


def discard_damaged_checkpoints(run_dir: RunDir) -> list[str]:
    """Remove every checkpoint whose files are damaged, and the train stage's mark that it is done,
    so that the stage trains it again; returns one line per checkpoint, naming it and what is wrong."""
    lines = []
    for iteration in run_dir.iterations():
        checkpoint = run_dir.checkpoint_dir(iteration)
        problem = checkpoint_problem(checkpoint) if meta_path(checkpoint).exists() else None
        if problem:
            shutil.rmtree(checkpoint)
            manifest_path(TRAIN.output(run_dir, iteration)).unlink(missing_ok=True)
            lines.append(f"{checkpoint.relative_to(run_dir.root)}: {problem}")
    return lines


def latest_checkpoint(run_dir: RunDir, before_iteration: int) -> Path | None:
    """Newest checkpoint of an iteration < `before_iteration` (the weights that iteration generates
    and trains with), or None when the run has none yet and the base model applies."""
    for iteration in reversed(run_dir.iterations()):
        if iteration < before_iteration and meta_path(run_dir.checkpoint_dir(iteration)).exists():
            return run_dir.checkpoint_dir(iteration)
    return None


def load_policy(model_config: ModelConfig, checkpoint: Path | None = None, *, trainable: bool = False):
    """(model, tokenizer) for generation or training: the base model, or a checkpoint of either kind.

    With `trainable`, a LoRA checkpoint comes back as a PeftModel whose adapters train (and fresh
    adapters are added when `model_config.lora.enabled` and there is no checkpoint yet); without it,
    the adapters are merged into the weights, so generation pays nothing for them, and the weights
    are cast to `model_config.generation_dtype`.
    """
    model, tokenizer = _load_policy(model_config, checkpoint, trainable)
    return (model if trainable else model.to(generation_dtype(model_config))), tokenizer


def _load_policy(model_config: ModelConfig, checkpoint: Path | None, trainable: bool):
    meta = read_meta(checkpoint) if checkpoint is not None else None
    if meta is not None and meta["base_model"] != model_config.name_or_path:
        raise ValueError(f"{checkpoint}: trained from {meta['base_model']!r} but model.name_or_path "
                         f"is {model_config.name_or_path!r}")
    if meta is not None and not meta["lora"]:
        return load_model(model_config, checkpoint)
    model, tokenizer = load_model(model_config)
    if meta is not None:
        model = PeftModel.from_pretrained(model, checkpoint, is_trainable=trainable)
        return (model if trainable else model.merge_and_unload()), tokenizer
    if trainable and model_config.lora.enabled:
        lora = model_config.lora
        # No dropout: the update must see the policy that sampled (the PPO ratio starts at 1).
        peft_config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,
                                     target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
        return get_peft_model(model, peft_config), tokenizer
    return model, tokenizer


def load_training_state(checkpoint: Path, scheduler) -> dict[str, Any]:
    """Restore the scheduler from a checkpoint; return its RNG state. The optimizer state is restored
    apart (`load_optimizer_state`), when the step needs it."""
    checkpoint = Path(checkpoint)
    read_meta(checkpoint, training=True)
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    return torch.load(checkpoint / "rng.pt", weights_only=True)


def load_optimizer_state(checkpoint: Path, optimizer,
                         load_optimizer: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Restore the optimizer state (AdamW: two float32 copies of the weights) from a checkpoint.
    `load_optimizer` applies it instead of `optimizer.load_state_dict` (FSDP: to the shards)."""
    checkpoint = Path(checkpoint)
    read_meta(checkpoint, training=True)
    state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
    implementation = [{key: group.get(key) for key in ("fused", "foreach")} for group in optimizer.param_groups]
    (load_optimizer or optimizer.load_state_dict)(state)
    for group, kept in zip(optimizer.param_groups, implementation):
        group.update(kept)  # how to step is this code's choice (rl.build_optimizer), not the saved state's


def prune_checkpoints(run_dir: RunDir, keep: int | None, newest: int, policy_dtype: torch.dtype) -> list[Path]:
    """Checkpoints before iteration `newest`: the last `keep` of them (all when None) keep only their
    policy (`keep_policy`), older ones lose everything but checkpoint.json. The newest, and anything
    after it, is never touched. Returns the checkpoints pruned this time."""
    older = [i for i in run_dir.iterations() if i < newest and meta_path(run_dir.checkpoint_dir(i)).exists()]
    cut = 0 if keep is None else max(len(older) - keep, 0)
    pruned = []
    for iteration in older[:cut]:
        directory = run_dir.checkpoint_dir(iteration)
        doomed = [p for p in directory.iterdir() if not p.name.startswith(META_FILE)]
        for path in doomed:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        if doomed:
            pruned.append(directory)
    for iteration in older[cut:]:
        directory = run_dir.checkpoint_dir(iteration)
        if not (directory / POLICY_FILE).exists() and any(directory.glob("*.safetensors")):
            keep_policy(directory, policy_dtype)
    return pruned


def keep_policy(checkpoint: Path, dtype: torch.dtype) -> None:
    """Reduce a checkpoint to its policy: drop the training state, store the weights (or LoRA adapter) in
    `dtype`, then write policy.json, which marks it done. Interrupted, it is redone from what is left."""
    checkpoint = Path(checkpoint)
    for name in TRAINING_STATE:
        (checkpoint / name).unlink(missing_ok=True)
    for path in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(path, "pt") as weights:  # one float32 tensor at a time
            metadata = weights.metadata()
            tensors = {key: _in_dtype(weights.get_tensor(key), dtype) for key in weights.keys()}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, tmp, metadata=metadata)
        tmp.replace(path)
    files = {p.name: file_sha256(p) for p in sorted(checkpoint.iterdir())
             if p.is_file() and not p.name.startswith((META_FILE, POLICY_FILE))}
    write_json({"dtype": str(dtype).removeprefix("torch."), "files": files}, checkpoint / POLICY_FILE)


def _in_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def export_model(checkpoint: Path, model_config: ModelConfig, out: Path) -> Path:
    """Write a plain HF model directory (LoRA merged into the base weights) loadable without azr or peft."""
    model, tokenizer = load_policy(model_config, checkpoint)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
