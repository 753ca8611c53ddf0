"""The train stage: rewards.parquet -> one policy update -> checkpoint/ and train.json.

The policy trained is the newest checkpoint before this iteration (the one propose and solve
generated with), or the base model `config.model` when the run has none yet. Optimizer, scheduler
and RNG state come from that checkpoint too, so resuming a run gives the same weights as running
it without a stop.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from azr import rl
from azr.artifacts import RunDir, read_table, stage_complete, write_json
from azr.checkpoint import (latest_checkpoint, load_policy, load_training_state, meta_path,
                            prune_checkpoints, save_checkpoint, set_rng_state, rng_state)
from azr.config import AZRConfig
from azr.generation import logprob_temperature
from azr.model import generation_dtype, load_model
from azr.seeding import stage_seed


def train(config: AZRConfig, run_dir: RunDir, iteration: int) -> Path:
    """One policy update on the samples in the iteration's rewards.parquet; returns train.json's path.

    Writes `run_dir.checkpoint_dir(iteration)` and prunes old checkpoints. When train.json and the
    checkpoint were already made from the same rewards, previous checkpoint and config, does nothing.
    """
    rewards_path = run_dir.stage_file(iteration, "rewards.parquet")
    out = run_dir.stage_file(iteration, "train.json")
    checkpoint = run_dir.checkpoint_dir(iteration)
    previous = latest_checkpoint(run_dir, before_iteration=iteration)
    inputs = [rewards_path] + ([meta_path(previous)] if previous else [])
    config_hash = config.config_hash()
    if stage_complete([out, meta_path(checkpoint)], inputs, config_hash):
        return out
    if not config.training.enabled:
        return write_json({"skipped": True}, out, inputs=inputs, config_hash=config_hash)

    samples = rl.samples_from_frame(read_table(rewards_path), source=str(rewards_path))
    model, tokenizer = load_policy(config.model, previous, trainable=True)
    if config.model.gradient_checkpointing:
        rl.enable_gradient_checkpointing(model)
    optimizer, scheduler = rl.build_optimizer(model, config.training)
    rng = load_training_state(previous, optimizer, scheduler) if previous else None
    reference = None
    if config.training.kl_coef > 0 and not config.model.lora.enabled:
        reference = load_model(config.model)[0].eval()  # the initial model; LoRA gets it by disabling adapters

    with torch.random.fork_rng():
        if rng is not None:
            set_rng_state(rng)
        else:
            torch.manual_seed(stage_seed(config.seed, iteration, "train"))
        rl.reset_peak_memory()
        start = time.perf_counter()
        same_dtype = generation_dtype(config.model) == getattr(torch, config.model.dtype)
        metrics = rl.train_step(model, optimizer, scheduler, samples, config.training, reference,
                                use_recorded_logprobs=same_dtype, temperature=logprob_temperature(config.sampling))
        seconds = time.perf_counter() - start
        metrics.update(train_seconds=seconds, tokens_per_second=metrics["tokens"] / seconds,
                       peak_memory_mb=rl.peak_memory_mb(), samples=len(samples))
        rng = rng_state()

    save_checkpoint(checkpoint, model, tokenizer, optimizer, scheduler, rng, iteration=iteration,
                    model_config=config.model, inputs=inputs, config_hash=config_hash)
    write_json(metrics, out, inputs=inputs, config_hash=config_hash, seconds=seconds)
    keep = None if config.training.keep_policies else config.training.keep_checkpoints
    prune_checkpoints(run_dir, keep, newest=iteration, policy_dtype=generation_dtype(config.model))
    return out
