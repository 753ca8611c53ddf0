"""Generation: answers written in steps (azr's scaffold, the model's fields), with the log-probs the
training step needs.

`generate` drives the steps of each answer's `AnswerFormat` (azr.formats) over a *backend* that
completes a batch of fields: `HFBackend` here (transformers, our own decoding loop over a KV cache),
or another engine with the same `complete` method. Between fields, azr appends its scaffold tokens
to the context; they are marked in `Generation.response_mask` as not the model's, so the update
never trains on them.

The log-prob recorded for each sampled token is ``log_softmax(logits / T)[token]``, T being
`sampling.temperature` (1 when greedy), before top-p and before a grammar's mask: the distribution
the training step's forward pass recomputes with the same T, so the PPO ratio starts at 1. Grammar
masks and top-p only decide which token is drawn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TopPLogitsWarper

from azr.config import SamplingConfig
from azr.formats import AnswerFormat, Field
from azr.hf_compat import cache_kwargs
from azr.kv_cache import batched_prefill


@dataclass
class Generation:
    text: str  # the response, scaffold included, special tokens removed
    prompt_ids: list[int]  # the prompt tokens, without padding
    response_ids: list[int]  # every token after the prompt: azr's scaffold and the model's fields
    response_mask: list[bool]  # True where the model sampled the token (trained on), False for azr's scaffold
    logprobs: list[float]  # log_softmax(logits / T) of each sampled token; 0.0 at scaffold tokens
    finish_reason: str  # "stop" (every field ended normally), "eos" or "length" (a field ran out of tokens)


@dataclass
class Piece:
    """What a backend returns for one field: the sampled tokens and why the field ended."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (grammar complete or a stop string), "eos" or "length"


class Backend(Protocol):
    """An engine that completes fields: each context (token ids) continued under its `Field`.
    `on_chunk(fields, tokens)`, when given, is called as pieces are done (for progress)."""

    def complete(self, contexts: list[list[int]], fields: list[Field], seeds: list[int],
                 on_chunk: Callable[[int, int], None] | None = None) -> list[Piece]: ...


def logprob_temperature(sampling: SamplingConfig) -> float:
    """The T of the recorded log-probs and of the training forward pass: the sampling temperature, 1 when greedy."""
    return sampling.temperature if sampling.temperature > 0 else 1.0


def request_seed(seed: int, index: int, step: int) -> int:
    """The seed of one field of one answer: a function of the batch seed, the answer's index and the step."""
    digest = hashlib.sha256(f"{seed}:{index}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class _Answer:
    prompt_ids: list[int]
    format: AnswerFormat
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    pending: Field | None = None  # the field the backend writes next
    max_field_tokens: int = 0  # sampling.max_new_tokens
    done: bool = False
    counted: bool = False  # its unwritten fields have been counted as done (progress)

    def write(self, tokens: list[int]) -> None:
        self.response_ids += tokens
        self.response_mask += [False] * len(tokens)
        self.logprobs += [0.0] * len(tokens)


def generate(backend: Backend, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
             formats: Sequence[AnswerFormat], sampling: SamplingConfig, seed: int,
             progress: Callable[[int, int, int], None] | None = None) -> list[Generation]:
    """One answer per prompt, written step by step in its format; same seed, same answers.

    `prompts` are rendered text (see `azr.prompts.render_chat`), never truncated: the caller keeps
    them under `sampling.max_prompt_tokens` (azr.prompts drops references rather than cut the
    instructions). `sampling.max_new_tokens` bounds each field the model writes (each field kind
    also has its own bound, azr.formats), so a long field never starves the ones after it.
    `progress(fields written, fields in all, tokens written)` is called as the backend goes.
    """
    answers = [_Answer(_encode(tokenizer, p), f, max_field_tokens=sampling.max_new_tokens)
               for p, f in zip(prompts, formats, strict=True)]
    too_long = [i for i, a in enumerate(answers) if len(a.prompt_ids) > sampling.max_prompt_tokens]
    if too_long:
        raise ValueError(f"{len(too_long)} prompt(s) longer than sampling.max_prompt_tokens={sampling.max_prompt_tokens} "
                         f"(the first has {len(answers[too_long[0]].prompt_ids)} tokens)")
    counts = _Counts(sum(f.field_count() for f in formats), progress)
    step = 0
    while True:
        active = []
        for index, answer in enumerate(answers):
            if not answer.done and (answer.pending is not None or _advance(answer, tokenizer)):
                active.append(index)
            elif answer.done and not answer.counted:  # closed before its last planned field
                counts.skip(answer.format.field_count() - len(answer.fields))
                answer.counted = True
        if not active:
            break
        pieces = backend.complete(
            [answers[i].prompt_ids + answers[i].response_ids for i in active],
            [answers[i].pending for i in active],
            [request_seed(seed, i, step) for i in active],
            on_chunk=counts.add,
        )
        for index, piece in zip(active, pieces, strict=True):
            _take(answers[index], piece, tokenizer)
        step += 1
    return [
        Generation(tokenizer.decode(a.response_ids, skip_special_tokens=True), a.prompt_ids, a.response_ids,
                   a.response_mask, a.logprobs, a.finish_reason)
        for a in answers
    ]


@dataclass
class _Counts:
    """Fields written and tokens, for a progress callback."""

    total: int
    progress: Callable[[int, int, int], None] | None
    fields: int = 0
    tokens: int = 0

    def add(self, fields: int, tokens: int) -> None:
        self.fields, self.tokens = self.fields + fields, self.tokens + tokens
        if self.progress is not None:
            self.progress(self.fields, self.total, self.tokens)

    def skip(self, fields: int) -> None:
        self.total -= fields


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # A chat template already wrote the special tokens; a bare prompt gets the tokenizer's own.
    return list(tokenizer(text, add_special_tokens=not tokenizer.chat_template)["input_ids"])


def _advance(answer: _Answer, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Write the next scaffold; True when a field follows it (then `answer.pending`), False when done.

    An answer whose last field ended at EOS (the model ended it) gets its closing scaffold, so its
    text stays a well-formed answer whose content is graded as it is.
    """
    truncated = answer.finish_reason in ("length", "eos")
    if answer.finish_reason == "eos":
        scaffold, spec = answer.format.closing(truncated), None
    else:
        step = answer.format.next_step(answer.fields, truncated)
        scaffold, spec = step.scaffold, step.field
    if scaffold:
        answer.write(tokenizer.encode(scaffold, add_special_tokens=False))
    if spec is None:
        answer.done = True
        return False
    answer.pending = replace(spec, max_tokens=min(spec.max_tokens, answer.max_field_tokens))
    return True


def _take(answer: _Answer, piece: Piece, tokenizer: PreTrainedTokenizerBase) -> None:
    answer.response_ids += piece.token_ids
    answer.response_mask += [True] * len(piece.token_ids)
    answer.logprobs += piece.logprobs
    answer.fields.append(tokenizer.decode(piece.token_ids, skip_special_tokens=True))
    answer.pending = None
    if piece.finish_reason != "stop" or answer.finish_reason == "stop":
        answer.finish_reason = piece.finish_reason


# ---------------------------------------------------------------- the transformers backend


class HFBackend:
    """Completes fields with a transformers model: batched decoding over `azr.kv_cache`'s cache, one
    grammar matcher (xgrammar) per constrained row."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sampling: SamplingConfig):
        if tokenizer.padding_side != "left":
            raise ValueError("HFBackend needs a tokenizer that pads on the left (load_model sets it)")
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling
        self.eos_ids = _eos_ids(model, tokenizer)
        self._grammars = None  # azr.constraints.GrammarCache, made on first use

    def complete(self, contexts: list[list[int]], fields: list[Field], seeds: list[int],
                 on_chunk: Callable[[int, int], None] | None = None) -> list[Piece]:
        # Chunks of similar length waste less compute on padding (a task's rollouts land together).
        order = sorted(range(len(contexts)), key=lambda i: (len(contexts[i]), contexts[i]))
        pieces: list[Piece | None] = [None] * len(contexts)
        size = self.sampling.batch_size
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            done = self._complete_chunk([contexts[i] for i in chunk], [fields[i] for i in chunk], [seeds[i] for i in chunk])
            for i, piece in zip(chunk, done):
                pieces[i] = piece
            if on_chunk is not None:
                on_chunk(len(done), sum(len(p.token_ids) for p in done))
        return pieces

    def grammar_matcher(self, grammar: str):
        if self._grammars is None:
            from azr.constraints import GrammarCache

            self._grammars = GrammarCache(self.tokenizer, vocab_size=self.model.config.vocab_size)
        return self._grammars.matcher(grammar)

    @torch.inference_mode()
    def _complete_chunk(self, contexts: list[list[int]], fields: list[Field], seeds: list[int]) -> list[Piece]:
        model, sampling = self.model, self.sampling
        rows = [_Row(f, torch.Generator(device=model.device).manual_seed(s),
                     self.grammar_matcher(f.grammar) if f.grammar else None) for f, s in zip(fields, seeds)]
        temperature = logprob_temperature(sampling)
        top_p = TopPLogitsWarper(sampling.top_p) if sampling.temperature > 0 and sampling.top_p < 1.0 else None
        logits, cache, attention_mask = batched_prefill(model, contexts)
        position_ids = torch.tensor([[len(c)] for c in contexts], device=model.device)
        active = list(range(len(rows)))  # rows still generating, in cache order
        for step in range(max(f.max_tokens for f in fields)):
            if step:
                logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1).logits[:, -1, :]
                position_ids = position_ids + 1
            scaled = logits.float() / temperature
            logprobs = scaled.log_softmax(-1)
            tokens = [rows[index].sample(scaled[i], sampling, top_p) for i, index in enumerate(active)]
            for i, (index, token) in enumerate(zip(active, tokens)):
                rows[index].take(token, float(logprobs[i, token]), self.tokenizer, self.eos_ids)
            keep = [i for i, index in enumerate(active) if rows[index].finish_reason is None]
            if not keep:
                break
            tokens_tensor = torch.tensor(tokens, device=model.device)
            if len(keep) < len(active):  # drop finished rows so they cost nothing from here on
                selected = torch.tensor(keep, device=model.device)
                cache.batch_select_indices(selected)
                tokens_tensor, attention_mask, position_ids = tokens_tensor[selected], attention_mask[selected], position_ids[selected]
                active = [active[i] for i in keep]
            input_ids = tokens_tensor[:, None]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=-1)
        return [Piece(row.token_ids, row.logprobs, row.finish_reason or "length") for row in rows]


class _Row:
    """One field being written: its sampler, its grammar matcher (if any), and when it ends."""

    def __init__(self, spec: Field, generator: torch.Generator, matcher):
        self.spec, self.generator, self.matcher = spec, generator, matcher
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None

    def sample(self, scaled: torch.Tensor, sampling: SamplingConfig, top_p) -> int:
        if self.matcher is not None:
            scaled = self.matcher.mask(scaled)
        if sampling.temperature == 0:
            return int(scaled.argmax())
        if top_p is not None:
            scaled = top_p(None, scaled[None])[0]
        return int(torch.multinomial(scaled.softmax(-1), 1, generator=self.generator))

    def take(self, token: int, logprob: float, tokenizer: PreTrainedTokenizerBase, eos_ids: set[int]) -> None:
        self.token_ids.append(token)
        self.logprobs.append(logprob)
        if self.matcher is not None:
            if self.matcher.accept(token):
                self.finish_reason = "stop"
        elif token in eos_ids:
            self.finish_reason = "eos"
        elif _has_stop(tokenizer, self.token_ids, self.spec.stop):
            self.finish_reason = "stop"
        if self.finish_reason is None and len(self.token_ids) >= self.spec.max_tokens:
            self.finish_reason = "length"


def _has_stop(tokenizer, token_ids: list[int], stop_strings: Sequence[str]) -> bool:
    for stop in stop_strings:
        # The newest token completed the first occurrence (earlier steps found none), so the stop
        # string lies within the last len(stop) tokens: every token decodes to at least one byte.
        if stop in tokenizer.decode(token_ids[-len(stop) - 1:]):
            return True
    return False


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}
