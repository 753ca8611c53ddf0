"""Grammar-constrained sampling with xgrammar: which tokens may come next, and when a field is done.

`GrammarCache` compiles each grammar text once per tokenizer (proposals and solver answers use a
handful of grammars: programs, literals, argument lists of each arity); `Matcher` follows one field
as it is written.
"""

from __future__ import annotations

import torch
import xgrammar as xgr
from transformers import PreTrainedTokenizerBase


class GrammarCache:
    """Compiled grammars for one tokenizer (and the model's vocabulary size, which may be padded)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int | None = None):
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=True)

    def matcher(self, grammar: str) -> "Matcher":
        return Matcher(self.compiler.compile_grammar(grammar), self.info.vocab_size)


class Matcher:
    """One field under its grammar: `mask` the logits before sampling, `accept` the drawn token."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int):
        # The field ends when the grammar is complete: no stop token is sampled (or trained on).
        self._matcher = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (vocab,) with every token the grammar forbids next set to -inf (a copy)."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        masked = logits.clone()[None]
        xgr.apply_token_bitmask_inplace(masked, self._bitmask.to(masked.device))
        return masked[0]

    def accept(self, token: int) -> bool:
        """Advance past `token` (which `mask` allowed); True when the field is complete."""
        if not self._matcher.accept_token(token):
            raise ValueError(f"token {token} is not allowed by the grammar here (it was masked out)")
        return self._matcher.is_terminated()
