"""The policy update (azr/rl.py) on the real tiny-random model."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
from transformers import get_constant_schedule

from azr import rl
from azr.checkpoint import load_policy
from azr.config import ModelConfig, TrainingConfig
from azr.hf_compat import activation_checkpointing_on
from azr.model import load_model

PROMPTS = ["def f(x):\n    return x * 2\n", "Given the program and the output, find an input.",
           "def f(s: str) -> str:\n    return s[::-1]\n", "You write a new Python program"]
RESPONSES = ["<answer>\n```output\n[0, 1]\n```\n</answer>", "f(3) = 9",
             "```input\n[2, 7, 11, 15], 9\n```", "<think> step by step </think>"]


def tiny_model():
    return load_model(ModelConfig(name_or_path="tiny-random"))


def make_samples(model, tokenizer, advantages, prompts=PROMPTS, responses=RESPONSES) -> list[rl.Sample]:
    """Samples whose recorded log-probs are the model's own, as if it had just generated them."""
    samples = []
    for i, advantage in enumerate(advantages):
        prompt = tokenizer(prompts[i % len(prompts)], add_special_tokens=False).input_ids
        response = tokenizer(responses[i % len(responses)], add_special_tokens=False).input_ids
        draft = rl.Sample(prompt, response, [0.0] * len(response), float(advantage))
        samples.append(rl.Sample(prompt, response, current_logprobs(model, [draft])[0], float(advantage)))
    return samples


def current_logprobs(model, samples) -> list[list[float]]:
    """Each sample's response-token log-probs under the model now, each sample on its own."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in samples:
            logprobs, _ = rl.response_logprobs(model, rl.collate([s]))
            out.append(logprobs[0].tolist())
    return out


def step(model, samples, **overrides) -> dict[str, float]:
    cfg = TrainingConfig(**{"learning_rate": 1e-3, **overrides})
    optimizer, scheduler = rl.build_optimizer(model, cfg)
    return rl.train_step(model, optimizer, scheduler, samples, cfg)


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_advantage_sign_moves_the_sample_log_probability(advantage):
    model, tokenizer = tiny_model()
    [sample] = make_samples(model, tokenizer, [advantage])
    step(model, [sample])
    before = sum(sample.logprobs)
    after = sum(current_logprobs(model, [sample])[0])
    assert (after - before) * advantage > 0, (before, after)


def test_mixed_batch_raises_positive_and_lowers_negative_samples():
    model, tokenizer = tiny_model()
    samples = make_samples(model, tokenizer, [1.0, -1.0, 1.0, -1.0])
    step(model, samples, micro_batch_size=3, learning_rate=1e-4)
    for sample, after in zip(samples, current_logprobs(model, samples)):
        assert (sum(after) - sum(sample.logprobs)) * sample.advantage > 0


def test_zero_advantage_without_entropy_or_weight_decay_leaves_weights_unchanged():
    model, tokenizer = tiny_model()
    before = copy.deepcopy(model.state_dict())
    metrics = step(model, make_samples(model, tokenizer, [0.0] * 4), entropy_coef=0.0, weight_decay=0.0)
    assert metrics["grad_norm"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_entropy_bonus_alone_changes_weights():
    """The converse of the zero-advantage test: the same batch with the bonus on does train."""
    model, tokenizer = tiny_model()
    before = copy.deepcopy(model.state_dict())
    metrics = step(model, make_samples(model, tokenizer, [0.0] * 4), entropy_coef=0.01, weight_decay=0.0)
    assert metrics["grad_norm"] > 0.0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_micro_batches_accumulate_to_the_whole_batch_gradient():
    """Micro-batch size 1 (no padding) and 4 (left-padded, mixed lengths) give the same update."""
    model, tokenizer = tiny_model()
    samples = make_samples(model, tokenizer, [1.0, -0.5, 2.0, -1.5])
    results = []
    for micro_batch_size in (1, 4):
        copy_ = copy.deepcopy(model)
        cfg = TrainingConfig(micro_batch_size=micro_batch_size, max_grad_norm=1e9)
        optimizer = torch.optim.SGD(copy_.parameters(), lr=0.1)  # linear in the gradient: exact comparison
        metrics = rl.train_step(copy_, optimizer, get_constant_schedule(optimizer), samples, cfg)
        results.append((metrics, copy_.state_dict()))
    (m1, w1), (m4, w4) = results
    assert m1["tokens"] == m4["tokens"] == sum(len(s.response_ids) for s in samples)
    assert m1["loss"] == pytest.approx(m4["loss"], rel=1e-4, abs=1e-6)
    assert m1["grad_norm"] == pytest.approx(m4["grad_norm"], rel=1e-4)
    for key in w1:
        torch.testing.assert_close(w1[key], w4[key], rtol=1e-4, atol=1e-6)


def test_loss_is_the_per_token_mean_and_clip_fraction_counts_clipped_tokens():
    model, tokenizer = tiny_model()
    samples = make_samples(model, tokenizer, [1.0, 1.0])
    metrics = step(model, samples, entropy_coef=0.0, learning_rate=1e-9)
    assert metrics["clip_fraction"] == 0.0  # recorded log-probs are the model's own: ratio 1
    assert metrics["pg_loss"] == pytest.approx(-1.0, abs=1e-4)  # -A * ratio averaged per token
    assert metrics["loss"] == pytest.approx(metrics["pg_loss"], abs=1e-6)
    assert "kl" not in metrics

    lower = [rl.Sample(s.prompt_ids, s.response_ids, [x + 1.0 for x in s.logprobs], s.advantage) for s in samples]
    metrics = step(model, lower, entropy_coef=0.0, learning_rate=1e-9)
    assert metrics["clip_fraction"] == 0.0  # A > 0 and ratio e^-1 < 1 - eps: the unclipped term is the smaller gain
    assert metrics["pg_loss"] == pytest.approx(-math.exp(-1.0), abs=1e-4)

    higher = [rl.Sample(s.prompt_ids, s.response_ids, [x - 1.0 for x in s.logprobs], s.advantage) for s in samples]
    metrics = step(model, higher, entropy_coef=0.0, learning_rate=1e-9)
    assert metrics["clip_fraction"] == pytest.approx(1.0)  # A > 0 and ratio e > 1 + eps: clipped everywhere
    assert metrics["pg_loss"] == pytest.approx(-1.2, abs=1e-4)
    assert metrics["grad_norm"] == 0.0  # a clipped token gives no gradient


def test_kl_needs_a_reference_for_full_fine_tuning():
    model, tokenizer = tiny_model()
    with pytest.raises(ValueError, match="reference model"):
        step(model, make_samples(model, tokenizer, [1.0]), kl_coef=0.1)


def test_kl_against_the_initial_model():
    model, tokenizer = tiny_model()
    reference = copy.deepcopy(model).eval()
    samples = make_samples(model, tokenizer, [1.0, -1.0])
    cfg = TrainingConfig(kl_coef=0.1, learning_rate=1e-2)
    optimizer, scheduler = rl.build_optimizer(model, cfg)
    first = rl.train_step(model, optimizer, scheduler, samples, cfg, reference)
    second = rl.train_step(model, optimizer, scheduler, samples, cfg, reference)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # nothing has moved yet
    assert second["kl"] > 1e-4  # one step later the policy differs from the reference


def test_samples_from_frame_names_what_is_wrong():
    good = {"prompt_ids": [[1, 2]], "response_ids": [[3, 4]], "logprobs": [[-0.1, -0.2]], "advantage": [0.5]}
    assert rl.samples_from_frame(pd.DataFrame(good)) == [rl.Sample([1, 2], [3, 4], [-0.1, -0.2], 0.5)]
    with pytest.raises(ValueError, match="missing column.*advantage"):
        rl.samples_from_frame(pd.DataFrame({k: v for k, v in good.items() if k != "advantage"}))
    with pytest.raises(ValueError, match="row 0 has 2 response_ids but 1 logprobs"):
        rl.samples_from_frame(pd.DataFrame({**good, "logprobs": [[-0.1]]}))
    with pytest.raises(ValueError, match="row 0 has a non-finite advantage"):
        rl.samples_from_frame(pd.DataFrame({**good, "advantage": [float("nan")]}))


def test_a_batch_without_response_tokens_is_refused():
    model, tokenizer = tiny_model()
    with pytest.raises(ValueError, match="no response tokens"):
        step(model, [rl.Sample([1, 2, 3], [], [], 1.0)])


def test_warmup_ramps_the_learning_rate_from_zero():
    model, tokenizer = tiny_model()
    samples = make_samples(model, tokenizer, [1.0, -1.0])
    cfg = TrainingConfig(learning_rate=1e-3, warmup_steps=2)
    optimizer, scheduler = rl.build_optimizer(model, cfg)
    before = copy.deepcopy(model.state_dict())
    rates = [rl.train_step(model, optimizer, scheduler, samples, cfg)["learning_rate"] for _ in range(3)]
    assert rates == pytest.approx([0.0, 5e-4, 1e-3])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_turns_on_for_full_and_lora_models(lora):
    model, tokenizer = load_policy(ModelConfig(name_or_path="tiny-random", lora={"enabled": lora}), trainable=True)
    rl.enable_gradient_checkpointing(model)
    assert activation_checkpointing_on(model)
    assert step(model, make_samples(model, tokenizer, [1.0, -1.0]))["grad_norm"] > 0


def test_without_recorded_logprobs_the_step_uses_its_own():
    """Generation in another dtype: the recorded log-probs are ignored, so the ratio is exactly 1."""
    model, tokenizer = tiny_model()
    samples = make_samples(model, tokenizer, [1.0, 1.0])
    higher = [rl.Sample(s.prompt_ids, s.response_ids, [x - 1.0 for x in s.logprobs], s.advantage) for s in samples]
    cfg = TrainingConfig(learning_rate=1e-9, entropy_coef=0.0)
    optimizer, scheduler = rl.build_optimizer(model, cfg)
    metrics = rl.train_step(model, optimizer, scheduler, higher, cfg, use_recorded_logprobs=False)
    assert metrics["clip_fraction"] == 0.0  # with the recorded ones every token would be clipped (test above)
    assert metrics["pg_loss"] == pytest.approx(-1.0, abs=1e-4)
    assert metrics["grad_norm"] > 0.0
