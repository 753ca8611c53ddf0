"""Batched generation on the offline tiny-random model: determinism, recorded log-probs, stopping.

Most tests use the `free` answer format (one field: the model writes everything); the formats
with azr's scaffold and grammars are tested at the end and in tests/test_formats.py."""

from __future__ import annotations

import pytest
import torch

from azr import prompts
from azr.config import ModelConfig, SamplingConfig
from azr.formats import answer_format
from azr.generation import HFBackend, generate as generate_answers
from azr.model import load_model

USER_PROMPTS = [
    "hi",
    "Work out f([1, 2, 3]) for def f(xs): return sum(xs) * 2",
    "A much longer prompt, so that the batch needs left padding: " + "def f(x): return x + 1. " * 12,
    "abc",
    "Find an input for which f returns 'banana'.",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def tiny(cache_dir: str, monkeypatch_module):
    return load_model(ModelConfig(name_or_path="tiny-random", cache_dir=cache_dir))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AZR_CACHE_DIR", raising=False)
        yield mp


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 1.6M-parameter model gains nothing from threads, and loses a lot on a busy CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rendered(tiny) -> list[str]:
    return [prompts.render_chat(tiny[1], p) for p in USER_PROMPTS]


def sampling(**overrides) -> SamplingConfig:
    settings = {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 24, "batch_size": 4, "stop_strings": []}
    return SamplingConfig(**{**settings, **overrides})


def generate(model, tokenizer, rendered, sampling: SamplingConfig, seed: int):
    """Free-format answers (the model writes everything), as azr generated before answer formats."""
    formats = [answer_format("free", "solve", "deduction", stop_strings=tuple(sampling.stop_strings),
                             max_new_tokens=sampling.max_new_tokens)] * len(rendered)
    return generate_answers(HFBackend(model, tokenizer, sampling), tokenizer, rendered, formats, sampling, seed)


def fresh_logprobs(model, prompt_ids: list[int], response_ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / temperature) of each response token from one unpadded forward pass."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logprobs = (model(ids).logits[0].float() / temperature).log_softmax(-1)
    targets = torch.tensor(response_ids)
    return logprobs[len(prompt_ids) - 1 : -1].gather(-1, targets[:, None]).squeeze(-1)


def test_same_seed_same_generations(tiny, rendered) -> None:
    model, tokenizer = tiny
    first = generate(model, tokenizer, rendered, sampling(), seed=7)
    again = generate(model, tokenizer, rendered, sampling(), seed=7)
    other = generate(model, tokenizer, rendered, sampling(), seed=8)
    assert first == again
    assert [g.response_ids for g in first] != [g.response_ids for g in other]


@pytest.mark.parametrize("settings", [{}, {"temperature": 1.0, "top_p": 1.0}, {"temperature": 0.0}, {"temperature": 1.7, "top_p": 0.5}])
def test_logprobs_match_a_fresh_forward_pass(tiny, rendered, settings) -> None:
    """Recorded log-probs are log_softmax(logits / T) at the sampling temperature (T = 1 when greedy),
    before top-p: the distribution the training forward pass recomputes."""
    model, tokenizer = tiny
    temperature = settings.get("temperature", 0.8) or 1.0
    for gen in generate(model, tokenizer, rendered, sampling(**settings), seed=3):
        assert len(gen.logprobs) == len(gen.response_ids) > 0
        expected = fresh_logprobs(model, gen.prompt_ids, gen.response_ids, temperature)
        torch.testing.assert_close(torch.tensor(gen.logprobs), expected, atol=1e-4, rtol=0)


def test_greedy_takes_the_most_likely_token_and_ignores_batching(tiny, rendered) -> None:
    model, tokenizer = tiny
    batched = generate(model, tokenizer, rendered, sampling(temperature=0.0, batch_size=5), seed=0)
    single = generate(model, tokenizer, rendered, sampling(temperature=0.0, batch_size=1), seed=99)
    assert [g.response_ids for g in batched] == [g.response_ids for g in single]
    for gen in batched:
        ids = torch.tensor([gen.prompt_ids + gen.response_ids])
        with torch.no_grad():
            best = model(ids).logits[0, len(gen.prompt_ids) - 1 : -1].argmax(-1)
        assert gen.response_ids == best.tolist()


def test_tiny_top_p_is_greedy(tiny, rendered) -> None:
    model, tokenizer = tiny
    nucleus = generate(model, tokenizer, rendered, sampling(temperature=1.0, top_p=1e-6), seed=5)
    greedy = generate(model, tokenizer, rendered, sampling(temperature=0.0), seed=5)
    assert [g.response_ids for g in nucleus] == [g.response_ids for g in greedy]


def test_chunks_keep_order_and_prompts_are_unpadded(tiny, rendered) -> None:
    model, tokenizer = tiny
    gens = generate(model, tokenizer, rendered, sampling(batch_size=2, max_new_tokens=5), seed=1)
    assert len(gens) == len(rendered)
    for gen, text in zip(gens, rendered):
        assert gen.prompt_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.pad_token_id not in gen.prompt_ids
        assert len(gen.response_ids) == 5 if gen.finish_reason == "length" else gen.finish_reason == "eos"
        assert gen.text == tokenizer.decode(gen.response_ids, skip_special_tokens=True)


def test_long_prompts_are_refused_never_cut(tiny, rendered) -> None:
    """A prompt cut from the left loses its instructions; generation refuses it instead (the stages
    keep prompts short: proposers drop references, too-long tasks are rejected)."""
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="longer than sampling.max_prompt_tokens=8"):
        generate(model, tokenizer, rendered[2:3], sampling(max_prompt_tokens=8, max_new_tokens=2), seed=1)


def test_stops_right_after_a_stop_string(tiny, rendered) -> None:
    model, tokenizer = tiny
    free = generate(model, tokenizer, rendered, sampling(temperature=0.0, max_new_tokens=40), seed=0)[1]
    stop = free.text[20:23]  # some text this greedy continuation is known to produce
    end = next(k for k in range(1, len(free.response_ids) + 1) if stop in tokenizer.decode(free.response_ids[:k]))
    gen = generate(model, tokenizer, rendered[1:2], sampling(temperature=0.0, max_new_tokens=40, stop_strings=["@@", stop]), seed=0)[0]
    assert gen.finish_reason == "stop"
    assert gen.response_ids == free.response_ids[:end]
    assert stop in gen.text and stop not in tokenizer.decode(gen.response_ids[:-1])


def test_stops_at_eos_and_keeps_it(cache_dir: str, rendered, monkeypatch_module) -> None:
    model, tokenizer = load_model(ModelConfig(name_or_path="tiny-random", cache_dir=cache_dir))
    free = generate(model, tokenizer, rendered[:1], sampling(temperature=0.0, max_new_tokens=30), seed=0)[0]
    eos = free.response_ids[6]  # declare a token the model is known to emit as EOS (a real config knob)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, eos]
    gen = generate(model, tokenizer, rendered[:1], sampling(temperature=0.0, max_new_tokens=30), seed=0)[0]
    assert gen.finish_reason == "eos"
    assert gen.response_ids == free.response_ids[: free.response_ids.index(eos) + 1]
    assert len(gen.logprobs) == len(gen.response_ids)


def test_rows_that_finish_early_do_not_disturb_the_others(tiny, rendered) -> None:
    """Finished rows leave the batch (cache rows dropped); the rest must continue exactly as before."""
    model, tokenizer = tiny
    free = generate(model, tokenizer, rendered, sampling(temperature=0.0, max_new_tokens=30), seed=0)
    stop = free[0].text[4:7]
    stopped = generate(model, tokenizer, rendered, sampling(temperature=0.0, max_new_tokens=30, stop_strings=[stop]), seed=0)
    assert stopped[0].finish_reason == "stop"
    for before, after in zip(free[1:], stopped[1:]):
        if stop not in before.text:
            assert after.response_ids == before.response_ids
            torch.testing.assert_close(torch.tensor(after.logprobs), torch.tensor(before.logprobs), atol=1e-5, rtol=0)


def test_right_padding_tokenizer_is_refused(cache_dir: str, monkeypatch_module) -> None:
    model, tokenizer = load_model(ModelConfig(name_or_path="tiny-random", cache_dir=cache_dir))
    tokenizer.padding_side = "right"
    with pytest.raises(ValueError, match="pads on the left"):
        generate(model, tokenizer, ["x"], sampling(), seed=0)
