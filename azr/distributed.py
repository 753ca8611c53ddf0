"""One torchrun rank's part in the policy update (design.md section 7).

`Ranks` is the process group as `rl.train_step` sees it. Every rank reads the whole batch and
computes the token weights over all of it (so the loss is normalised over the global token count);
each then trains on its share of the samples, a micro-batch at a time, and the ranks' gradients
are summed once, after the last micro-batch: the sum equals the single-process gradient up to float
summation order. With `fsdp`, FSDP2 (`fully_shard`) shards weights, gradients and optimizer state
instead, and sums each micro-batch's gradients into the shards in its backward pass (keeping the
shards sharded is the point of FSDP, so it does not defer that reduction). Every rank then applies
the same update; rank 0 writes the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from azr.config import DistributedConfig

T = TypeVar("T")

BUCKET_BYTES = 25 * 2**20  # gradients summed per all-reduce call (DDP's default bucket size)


@dataclass(frozen=True)
class Ranks:
    """This process's rank among `world_size` training processes, and the collectives it joins."""

    rank: int
    world_size: int
    device: torch.device
    fsdp: bool = False

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes train.json and the checkpoint; the others compute the same update."""
        return self.rank == 0

    def share(self, batches: Sequence[T]) -> list[T | None]:
        """This rank's share of the whole batch's micro-batches (`azr.rl.micro_batches`, the ones one
        process would run, so each is computed exactly as there): every world_size-th one. Under FSDP
        every rank runs as many passes as the busiest (each pass gathers the weights from all ranks); a
        rank out of micro-batches gets None for the passes it only takes part in."""
        mine: list[T | None] = list(batches[self.rank::self.world_size])
        if self.fsdp:
            mine += [None] * (math.ceil(len(batches) / self.world_size) - len(mine))
        return mine

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Add up the ranks' accumulated gradients: one all-reduce per bucket, once per step. A parameter
        no rank has a gradient for keeps none (the optimizer skips it, as in one process)."""
        if self.fsdp:
            return  # already reduce-scattered into the shards by each backward pass
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.device)
        dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
        grads = []
        for param, anywhere in zip(params, has_grad.tolist()):
            if anywhere and param.grad is None:
                param.grad = torch.zeros_like(param)  # this rank's samples did not reach it
            if anywhere:
                grads.append(param.grad)
        for bucket in _buckets(grads, BUCKET_BYTES):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            for grad, summed in zip(bucket, flat.split([g.numel() for g in bucket])):
                grad.copy_(summed.view_as(grad))

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """The sum over the ranks of each value (metrics accumulated over each rank's samples)."""
        summed = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(summed)
        return dict(zip(values, summed.tolist()))

    def max(self, value: float) -> float:
        """The largest `value` over the ranks (peak memory)."""
        biggest = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(biggest, op=dist.ReduceOp.MAX)
        return biggest.item()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move the model to this rank's device; under FSDP, shard it (each decoder layer a unit, so
        only one layer's weights are whole at a time) with gradients summed, not averaged."""
        if not self.fsdp:
            return model.to(self.device)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        layer_names = _no_split_modules(model)
        units = [m for m in model.modules() if type(m).__name__ in layer_names]
        for module in units:
            fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        for module in [*units, model]:
            module.set_gradient_divide_factor(1.0)  # the token weights already normalise the loss
            module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
        return model

    def full_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                   ) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
        """(model state, optimizer state) gathered whole on rank 0 under FSDP, in the format one process
        saves (optimizer state keyed by parameter index); (None, None) without FSDP, where the model and
        optimizer already hold them. Every rank must call it (it gathers)."""
        if not self.fsdp:
            return None, None
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(model, options=options)
        optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
        return (model_state, _by_index(optimizer_state)) if self.is_writer else (None, None)

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict[str, Any]) -> None:
        """Restore a saved (whole, index-keyed) optimizer state into this rank's optimizer."""
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = _optimizer_param_names(model, optimizer)
        # set_optimizer_state_dict first creates the state it fills (a zero step), and does so only while
        # no parameter holds a gradient: the train stage restores the state after the backward passes,
        # so the gradients are held aside for the call.
        parameters = list(model.parameters())
        gradients = [p.grad for p in parameters]
        for p in parameters:
            p.grad = None
        try:
            set_optimizer_state_dict(model, optimizer, optim_state_dict=_by_name(state, names),
                                     options=StateDictOptions(full_state_dict=True))
        finally:
            for p, gradient in zip(parameters, gradients):
                p.grad = gradient


def backend(config: DistributedConfig) -> str:
    """The torch.distributed backend: nccl on GPUs, gloo on CPUs, unless the config names one."""
    if config.backend != "auto":
        return config.backend
    return "nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def process_group(config: DistributedConfig, timeout_seconds: float = 1800) -> Iterator[Ranks]:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR in the
    environment) for the duration of the block; GPU ranks use the GPU of their local rank."""
    name = backend(config)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if name == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(name, timeout=timedelta(seconds=timeout_seconds))
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), device, config.fsdp)
    finally:
        dist.destroy_process_group()


def _buckets(tensors: Sequence[torch.Tensor], limit: int) -> Iterator[list[torch.Tensor]]:
    bucket, size = [], 0
    for tensor in tensors:
        if bucket and size + tensor.numel() * tensor.element_size() > limit:
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += tensor.numel() * tensor.element_size()
    if bucket:
        yield bucket


def _no_split_modules(model: torch.nn.Module) -> set[str]:
    """Class names of the model's repeated blocks (transformers' `_no_split_modules`, e.g. LlamaDecoderLayer)."""
    for module in model.modules():  # a PeftModel wraps the transformers model
        names = getattr(module, "_no_split_modules", None)
        if names:
            return set(names)
    return set()


def _optimizer_param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimizer parameter, in the order its state_dict() numbers them."""
    name_of = {id(param): name for name, param in model.named_parameters()}
    return [name_of[id(param)] for group in optimizer.param_groups for param in group["params"]]


def _by_index(state: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed optimizer state (torch.distributed.checkpoint's) keyed by index, as one process saves it."""
    names = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(names)}
    groups = [{**group, "params": [index[name] for name in group["params"]]} for group in state["param_groups"]]
    return {"state": {index[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def _by_name(state: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The inverse of `_by_index`, given the optimizer's parameter names in order."""
    groups = [{**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]]
    return {"state": {names[int(i)]: value for i, value in state["state"].items()}, "param_groups": groups}
