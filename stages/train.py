"""The train stage: rewards.parquet -> one policy update -> checkpoint/ and train.json.

The policy trained is the newest checkpoint before this iteration (the one propose and solve
generated with), or the base model `config.model` when the run has none yet. Optimizer, scheduler
and RNG state come from that checkpoint too, so resuming a run gives the same weights as running
it without a stop.

With `training.distributed` beyond one process, the stage starts torchrun ranks
(`stages.train_rank`) that each run `update` on their share of the samples, waits for them, and
fails naming the rank when one dies; rank 0 writes train.json and the checkpoint. On a cluster,
the other machines run `serve_node` (`azr train-node`) to join each launch.
"""

from __future__ import annotations

import functools
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from azr import rl
from azr.artifacts import RunDir, manifest_path, read_json, read_table, stage_complete, write_json
from azr.checkpoint import (latest_checkpoint, load_optimizer_state, load_policy, load_training_state, meta_path,
                            prune_checkpoints, save_checkpoint, set_rng_state, rng_state)
from azr.config import AZRConfig
from azr.distributed import Ranks
from azr.meter import Meter
from azr.pipeline import TRAIN
from azr.generation import logprob_temperature
from azr.model import generation_dtype, load_model
from azr.seeding import stage_seed
from azr.torchrun import RankFailed, run_ranks, torchrun_options

RANK_MODULE = "stages.train_rank"


@dataclass(frozen=True)
class _Paths:
    """What one iteration's update reads and writes, and the manifest fields that make it complete."""

    rewards: Path
    out: Path
    checkpoint: Path
    previous: Path | None
    inputs: list[Path]
    config_hash: str


def _paths(config: AZRConfig, run_dir: RunDir, iteration: int) -> _Paths:
    previous = latest_checkpoint(run_dir, before_iteration=iteration)
    rewards, = TRAIN.inputs(run_dir, iteration)
    return _Paths(rewards, TRAIN.output(run_dir, iteration), run_dir.checkpoint_dir(iteration),
                  previous, [rewards] + ([meta_path(previous)] if previous else []), config.config_hash())


def train(config: AZRConfig, run_dir: RunDir, iteration: int) -> Path:
    """One policy update on the samples in the iteration's rewards.parquet; returns train.json's path.

    Writes `run_dir.checkpoint_dir(iteration)` and prunes old checkpoints. When train.json and the
    checkpoint were already made from the same rewards, previous checkpoint and config, does nothing.
    """
    paths = _paths(config, run_dir, iteration)
    if stage_complete([paths.out, meta_path(paths.checkpoint)], paths.inputs, paths.config_hash):
        return paths.out
    if not config.training.enabled:
        return write_json({"skipped": True}, paths.out, inputs=paths.inputs, config_hash=paths.config_hash)
    if config.training.distributed.world_size > 1:
        _launch(config, run_dir, iteration)
    else:
        update(config, run_dir, iteration)
    keep = None if config.training.keep_policies else config.training.keep_checkpoints
    prune_checkpoints(run_dir, keep, newest=iteration, policy_dtype=generation_dtype(config.model))
    return paths.out


def update(config: AZRConfig, run_dir: RunDir, iteration: int, ranks: Ranks | None = None) -> None:
    """The update itself, in the stage's process or on each torchrun rank (`ranks`); the one process,
    or rank 0, writes the checkpoint and train.json."""
    paths = _paths(config, run_dir, iteration)
    samples = rl.samples_from_frame(read_table(paths.rewards), source=str(paths.rewards))
    with torch.random.fork_rng(devices=[]):  # fresh LoRA adapters: the same in one process and on every rank
        torch.manual_seed(stage_seed(config.seed, iteration, f"{TRAIN.seed_stream}-init"))
        model, tokenizer = load_policy(config.model, paths.previous, trainable=True)
    if config.model.gradient_checkpointing:
        rl.enable_gradient_checkpointing(model)
    place: Callable[[torch.nn.Module], torch.nn.Module] = ranks.prepare if ranks else (lambda m: m)
    model = place(model)
    optimizer, scheduler = rl.build_optimizer(model, config.training)
    rng = load_training_state(paths.previous, scheduler) if paths.previous else None
    # The optimizer state (1 GB for the default model) is read only once the gradients are in: the
    # forward and backward passes do not need it, and the update's peak memory is lower without it.
    load_optimizer = functools.partial(ranks.load_optimizer_state, model, optimizer) if ranks else None
    restore_optimizer = (functools.partial(load_optimizer_state, paths.previous, optimizer, load_optimizer)
                         if paths.previous else None)
    reference = None
    if config.training.kl_coef > 0 and not config.model.lora.enabled:
        reference = place(load_model(config.model)[0].eval())  # the initial model; LoRA gets it by disabling adapters

    with torch.random.fork_rng():
        if rng is not None:
            set_rng_state(rng)
        else:
            torch.manual_seed(TRAIN.seed(config, iteration))
        rl.reset_peak_memory()
        start = time.perf_counter()
        same_dtype = generation_dtype(config.model) == getattr(torch, config.model.dtype)
        meter = Meter(TRAIN.name, iteration, 0, "micro-batches")
        metrics = rl.train_step(model, optimizer, scheduler, samples, config.training, reference,
                                use_recorded_logprobs=same_dtype, temperature=logprob_temperature(config.sampling),
                                ranks=ranks, progress=meter.micro_batch_callback(), before_step=restore_optimizer)
        meter.finish()
        seconds = time.perf_counter() - start
        peak = ranks.max(rl.peak_memory_mb()) if ranks else rl.peak_memory_mb()
        metrics.update(train_seconds=seconds, tokens_per_second=metrics["tokens"] / seconds,
                       peak_memory_mb=peak, samples=len(samples))
        rng = rng_state()

    model_state, optimizer_state = ranks.full_state(model, optimizer) if ranks else (None, None)
    if ranks is None or ranks.is_writer:
        save_checkpoint(paths.checkpoint, model, tokenizer, optimizer, scheduler, rng, iteration=iteration,
                        model_config=config.model, inputs=paths.inputs, config_hash=paths.config_hash,
                        model_state=model_state, optimizer_state=optimizer_state)
        write_json(metrics, paths.out, inputs=paths.inputs, config_hash=paths.config_hash, seconds=seconds)


def launch_path(run_dir: RunDir, iteration: int) -> Path:
    """What a launch's ranks read (the config, the rendezvous id); present while the ranks run."""
    return run_dir.stage_file(iteration, "train-ranks") / "launch.json"


def _launch(config: AZRConfig, run_dir: RunDir, iteration: int) -> None:
    """Run `update` on torchrun ranks (this machine's, and on a cluster the other nodes' too) and wait."""
    launch = launch_path(run_dir, iteration)
    rdzv_id = f"{run_dir.name}-{iteration}-{uuid.uuid4().hex[:8]}"
    write_json({"rdzv_id": rdzv_id, "config": config.model_dump(mode="json")}, launch)
    try:
        _run_node(run_dir, iteration, config, rdzv_id, host=True)
    finally:
        for path in (launch, manifest_path(launch)):
            path.unlink(missing_ok=True)


def _run_node(run_dir: RunDir, iteration: int, config: AZRConfig, rdzv_id: str, *, host: bool) -> None:
    """This machine's ranks of one launch; their logs go next to launch.json."""
    ranks_dir = launch_path(run_dir, iteration).parent
    options = torchrun_options(config.training.distributed, rdzv_id, ranks_dir / "logs", host=host)
    failures = ranks_dir / f"failures-{socket.gethostname()}-{uuid.uuid4().hex[:8]}.json"
    try:
        run_ranks(RANK_MODULE, [str(run_dir.root), str(iteration)], options, failures)
    finally:
        failures.unlink(missing_ok=True)


def serve_node(run_dir: RunDir, *, poll_seconds: float = 2.0, launches: int | None = None,
               log: Callable[[str], None] = print) -> int:
    """On each machine of a cluster but the flow's: join every train stage of the run as one more node.

    Watches the run directory (shared storage) for launches the train stage announces and runs this
    machine's ranks of each. A failed launch is reported and the watch goes on (the train stage fails
    with it). Returns after `launches` launches, or never; returns how many it served.
    """
    served: set[str] = set()
    while launches is None or len(served) < launches:
        for launch in sorted(run_dir.root.glob("iter-*/train-ranks/launch.json")):
            try:
                announced = read_json(launch)
            except (OSError, ValueError):
                continue  # finished and removed meanwhile
            if announced["rdzv_id"] in served:
                continue
            served.add(announced["rdzv_id"])
            iteration = int(launch.parent.parent.name.removeprefix("iter-"))
            log(f"joining the train stage of iteration {iteration} ({announced['rdzv_id']})")
            try:
                _run_node(run_dir, iteration, AZRConfig.model_validate(announced["config"]), announced["rdzv_id"],
                          host=False)
            except RankFailed as exc:
                log(f"iteration {iteration}: {exc}")
        time.sleep(poll_seconds)
    return len(served)
