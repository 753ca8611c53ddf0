"""A KV cache for batched decoding: prompts prefilled one by one, decoded together.

Two costs dominate batched decoding on a CPU besides the weights themselves, and this module
removes both:

- transformers' `DynamicLayer` appends a token with `torch.cat`, which copies the whole cache
  every step (at batch 16 and 800 positions that is ~600 MB a step for SmolLM2-135M).
  `GrowingLayer` keeps spare capacity and writes the new token in place.
- Prefilling a left-padded batch computes every pad position of every prompt (a batch of prompts of
  158 to 594 tokens is nearly half padding). `batched_prefill` runs each distinct prompt alone,
  unpadded, and places its keys and values right-aligned in one batch cache; the pad slots stay
  zero and the attention mask hides them. Identical prompts (a solver's n rollouts of one task)
  are prefilled once.

Keys are cached after the rotary embedding, so a prompt's keys do not depend on where its row sits
in the batch: the merged cache holds exactly what a padded prefill would (minus the pad work).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

from azr.hf_compat import cache_kwargs
from transformers.cache_utils import DynamicLayer

SPARE_POSITIONS = 256  # room reserved past the current length before the buffer has to grow


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` with spare capacity: `keys`/`values` are views of a larger buffer."""

    _k: torch.Tensor | None = None
    _v: torch.Tensor | None = None
    _length: int = 0
    is_croppable = False  # crop() would not know about the spare capacity; nothing here crops

    def reset(self) -> None:
        super().reset()
        self._k = self._v = None
        self._length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self._length
        needed = length + key_states.shape[-2]
        if self._k is None or needed > self._k.shape[-2]:
            self._grow(key_states, value_states, length, max(needed + SPARE_POSITIONS, 2 * length))
        self._k[:, :, length:needed] = key_states
        self._v[:, :, length:needed] = value_states
        self.keys, self.values = self._k[:, :, :needed], self._v[:, :, :needed]
        self._length = needed
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int, capacity: int) -> None:
        batch, heads, _, dim = key_states.shape
        k = key_states.new_zeros(batch, heads, capacity, dim)
        v = value_states.new_zeros(batch, heads, capacity, dim)
        if length:
            k[:, :, :length], v[:, :, :length] = self.keys, self.values
        self._k, self._v = k, v

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._k is not None:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, : self._length], self._v[:, :, : self._length]

    def fill(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Start the layer from ready-made (batch, heads, length, dim) keys and values."""
        self.lazy_initialization(keys, values)
        self._k, self._v, self._length = None, None, 0
        self.update(keys, values)


def growing_cache(model: PreTrainedModel) -> DynamicCache:
    """An empty `DynamicCache` whose layers are `GrowingLayer`s."""
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def batched_prefill(model: PreTrainedModel, prompt_ids: list[list[int]]) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
    """Prefill each distinct prompt alone; return (last-position logits, left-padded cache, attention mask).

    Row i of the result is prompt i: its logits for the first response token, its keys and values
    right-aligned in a cache of the longest prompt's length, and a mask that is 0 on its left padding.
    """
    width = max(len(ids) for ids in prompt_ids)
    distinct = {tuple(ids): None for ids in prompt_ids}
    for ids in distinct:
        single = DynamicCache(config=model.config)
        out = model(input_ids=torch.tensor([ids], device=model.device), **cache_kwargs(model, single), use_cache=True,
                    logits_to_keep=1)
        distinct[ids] = (out.logits[0, -1], [(layer.keys, layer.values) for layer in single.layers])
    mask = torch.zeros(len(prompt_ids), width, dtype=torch.long, device=model.device)
    for row, ids in enumerate(prompt_ids):
        mask[row, width - len(ids):] = 1
    cache = growing_cache(model)
    for index, layer in enumerate(cache.layers):
        keys, values = distinct[tuple(prompt_ids[0])][1][index]
        batch_keys = keys.new_zeros(len(prompt_ids), keys.shape[1], width, keys.shape[3])
        batch_values = torch.zeros_like(batch_keys)
        for row, ids in enumerate(prompt_ids):
            keys, values = distinct[tuple(ids)][1][index]
            batch_keys[row, :, width - len(ids):] = keys[0]
            batch_values[row, :, width - len(ids):] = values[0]
        layer.fill(batch_keys, batch_values)
    logits = torch.stack([distinct[tuple(ids)][0] for ids in prompt_ids])
    return logits, cache, mask
