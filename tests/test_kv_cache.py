"""The batched-decoding KV cache (azr/kv_cache.py) on the real tiny-random model."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from azr.config import ModelConfig
from azr.hf_compat import cache_kwargs
from azr.kv_cache import SPARE_POSITIONS, batched_prefill, growing_cache
from azr.model import load_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AZR_CACHE_DIR", raising=False)
        return load_model(ModelConfig(name_or_path="tiny-random", cache_dir=str(tmp_path_factory.mktemp("models"))))


def prompt_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


@torch.inference_mode()
def test_batched_prefill_matches_a_padded_batch_prefill(tiny) -> None:
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer, ["short", "a somewhat longer prompt than that", "short", "x = 1; y = x + 2"])
    logits, cache, mask = batched_prefill(model, ids)

    padded = tokenizer.pad({"input_ids": ids}, return_tensors="pt")  # left padding (load_model sets it)
    assert torch.equal(mask, padded["attention_mask"])
    reference = DynamicCache(config=model.config)
    expected = model(**padded, position_ids=(padded["attention_mask"].cumsum(-1) - 1).clamp(min=0),
                     **cache_kwargs(model, reference), use_cache=True).logits[:, -1]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    for ours, theirs in zip(cache.layers, reference.layers):
        real = mask.bool()
        torch.testing.assert_close(ours.keys.transpose(1, 2)[real], theirs.keys.transpose(1, 2)[real], atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.values.transpose(1, 2)[real], theirs.values.transpose(1, 2)[real], atol=1e-4, rtol=0)


@torch.inference_mode()
def test_identical_prompts_are_prefilled_once(tiny) -> None:
    model, tokenizer = tiny
    calls = []
    hook = model.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    try:
        batched_prefill(model, prompt_ids(tokenizer, ["same prompt", "other", "same prompt", "same prompt"]))
    finally:
        hook.remove()
    assert sorted(shape[1] for shape in calls) == sorted(len(i) for i in prompt_ids(tokenizer, ["same prompt", "other"]))


@torch.inference_mode()
def test_growing_layer_keeps_every_token_across_growth_and_row_selection(tiny) -> None:
    """Past its spare capacity the buffer grows; dropping a row keeps the others' keys intact."""
    model, _ = tiny
    torch.manual_seed(0)
    ours, plain = growing_cache(model), DynamicCache(config=model.config)
    tokens = torch.randint(0, model.config.vocab_size, (3, 8))
    model(input_ids=tokens, **cache_kwargs(model, ours), use_cache=True)
    model(input_ids=tokens, **cache_kwargs(model, plain), use_cache=True)
    nxt = tokens[:, -1:]
    for step in range(SPARE_POSITIONS + 20):
        if step == 100:
            keep = torch.tensor([0, 2])
            ours.batch_select_indices(keep)
            plain.batch_select_indices(keep)
            nxt = nxt[keep]
        a = model(input_ids=nxt, **cache_kwargs(model, ours), use_cache=True).logits[:, -1]
        b = model(input_ids=nxt, **cache_kwargs(model, plain), use_cache=True).logits[:, -1]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        nxt = a.argmax(-1, keepdim=True)
    assert ours.get_seq_length() == plain.get_seq_length() == 8 + SPARE_POSITIONS + 20
