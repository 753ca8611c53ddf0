"""Batched sampling with the log-probs the training step needs.

`generate` runs its own decoding loop over the model's KV cache rather than `model.generate`,
because the training step needs the *raw* model log-probability of every sampled token,
`log_softmax(logits)[token]` before temperature or top-p, and `model.generate` can only hand
those back by keeping every step's full-vocabulary logits (steps x batch x vocab floats).
Temperature and top-p only decide which token is drawn; the recorded log-prob is the one a fresh
forward pass of the same model over prompt + response gives, which is what the PPO ratio compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from azr.config import SamplingConfig
from azr.kv_cache import batched_prefill


@dataclass
class Generation:
    text: str  # the response, special tokens removed; ends with the stop string when it stopped on one
    prompt_ids: list[int]  # the prompt tokens, without padding
    response_ids: list[int]  # sampled tokens, including the EOS or the token that completed a stop string
    logprobs: list[float]  # raw model log-softmax of each response token (temperature 1, no top-p)
    finish_reason: str  # "stop" (a stop string), "eos" or "length" (max_new_tokens)


@dataclass
class _Row:
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None = None


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    sampling: SamplingConfig,
    seed: int,
) -> list[Generation]:
    """Sample one response per prompt, in chunks of `sampling.batch_size`; same seed, same output.

    `prompts` are rendered text (see `azr.prompts.render_chat`). Prompts longer than
    `sampling.max_prompt_tokens` lose their start. A response ends at EOS, once its text contains
    one of `sampling.stop_strings`, or after `sampling.max_new_tokens` tokens. Chunks are formed
    from the prompts sorted by length; results come back in the order of `prompts`.
    """
    if tokenizer.padding_side != "left" or tokenizer.truncation_side != "left":
        raise ValueError("generate needs a tokenizer that pads and truncates on the left (load_model sets both)")
    generator = torch.Generator(device=model.device).manual_seed(seed)
    # Chunks of similar length waste less compute on padding (repeated prompts land together).
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), sampling.batch_size):
        chunk = order[start : start + sampling.batch_size]
        rows = _generate_chunk(model, tokenizer, [prompts[i] for i in chunk], sampling, generator)
        for i, row in zip(chunk, rows):
            results[i] = _finish(tokenizer, row)
    return results


@torch.inference_mode()
def _generate_chunk(model, tokenizer, prompts, sampling, generator) -> list[_Row]:
    encoded = tokenizer(
        prompts,
        truncation=True,
        max_length=sampling.max_prompt_tokens,
        add_special_tokens=not tokenizer.chat_template,  # a chat template already wrote the special tokens
    )
    rows = [_Row(list(ids), [], []) for ids in encoded["input_ids"]]
    eos_ids = _eos_ids(model, tokenizer)
    warpers = _warpers(sampling)
    logits, cache, attention_mask = batched_prefill(model, [row.prompt_ids for row in rows])
    position_ids = torch.tensor([[len(row.prompt_ids)] for row in rows], device=model.device)
    active = list(range(len(rows)))  # rows still generating, in cache order
    for step in range(sampling.max_new_tokens):
        if step:
            logits = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
            position_ids = position_ids + 1
        logits = logits.float()
        tokens = _sample(logits, sampling, warpers, generator)
        logprobs = logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
        for index, token, logprob in zip(active, tokens.tolist(), logprobs.tolist()):
            row = rows[index]
            row.response_ids.append(token)
            row.logprobs.append(logprob)
            row.finish_reason = _finish_reason(tokenizer, row.response_ids, eos_ids, sampling.stop_strings)
        keep = [i for i, index in enumerate(active) if rows[index].finish_reason is None]
        if not keep:
            break
        if len(keep) < len(active):  # drop finished rows so they cost nothing from here on
            selected = torch.tensor(keep, device=model.device)
            cache.batch_select_indices(selected)
            tokens, attention_mask, position_ids = tokens[selected], attention_mask[selected], position_ids[selected]
            active = [active[i] for i in keep]
        input_ids = tokens[:, None]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=-1)
    for row in rows:
        row.finish_reason = row.finish_reason or "length"
    return rows


def _warpers(sampling: SamplingConfig) -> LogitsProcessorList:
    warpers = LogitsProcessorList()
    if sampling.temperature > 0 and sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.temperature > 0 and sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers


def _sample(logits: torch.Tensor, sampling: SamplingConfig, warpers: LogitsProcessorList,
            generator: torch.Generator) -> torch.Tensor:
    if sampling.temperature == 0:
        return logits.argmax(-1)
    probs = warpers(None, logits).softmax(-1)  # temperature and top-p never look at past tokens
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


def _finish_reason(tokenizer, response_ids: list[int], eos_ids: set[int], stop_strings: list[str]) -> str | None:
    if response_ids[-1] in eos_ids:
        return "eos"
    for stop in stop_strings:
        # The newest token completed the first occurrence (earlier steps found none), so the stop
        # string lies within the last len(stop) tokens: every token decodes to at least one byte.
        if stop in tokenizer.decode(response_ids[-len(stop) - 1 :]):
            return "stop"
    return None


def _finish(tokenizer: PreTrainedTokenizerBase, row: _Row) -> Generation:
    return Generation(
        text=tokenizer.decode(row.response_ids, skip_special_tokens=True),
        prompt_ids=row.prompt_ids,
        response_ids=row.response_ids,
        logprobs=row.logprobs,
        finish_reason=row.finish_reason,
    )
