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


def step(model, samples, temperature: float = 1.0, **overrides) -> dict[str, float]:
    cfg = TrainingConfig(**{"learning_rate": 1e-3, **overrides})
    optimizer, scheduler = rl.build_optimizer(model, cfg)
    return rl.train_step(model, optimizer, scheduler, samples, cfg, temperature=temperature)


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


def full_vocabulary_logprobs(model, batch, temperature=1.0):
    """What the log-probs were before chunking: log_softmax over the model's own logits at every response position."""
    resp_len = batch["response_mask"].shape[1]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits[:, -resp_len - 1:-1].float()
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    targets = batch["input_ids"][:, -resp_len:]
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(log_probs.exp() * log_probs).sum(-1)


def logprobs_and_gradients(compute, model, batch, temperature):
    model = copy.deepcopy(model)
    logprobs, entropy = compute(model, batch, temperature)
    mask = batch["response_mask"]
    (logprobs * torch.linspace(-1, 1, mask.numel()).view_as(mask) + 0.1 * entropy)[mask].sum().backward()
    return logprobs.detach(), entropy.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_chunked_logprobs_equal_a_full_vocabulary_log_softmax_and_so_do_their_gradients(monkeypatch):
    model, tokenizer = tiny_model()
    vocab = model.get_output_embeddings().out_features
    monkeypatch.setattr(rl, "LOGPROB_CHUNK_ELEMENTS", 3 * vocab)  # 3 positions per chunk: many chunks
    batch = rl.collate(make_samples(model, tokenizer, [1.0, -1.0, 0.5]))
    chunked = logprobs_and_gradients(rl.response_logprobs, model, batch, 0.7)
    full = logprobs_and_gradients(full_vocabulary_logprobs, model, batch, 0.7)
    mask = batch["response_mask"]
    torch.testing.assert_close(chunked[0][mask], full[0][mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked[1][mask], full[1][mask], rtol=0, atol=1e-5)
    for name, grad in full[2].items():
        torch.testing.assert_close(chunked[2][name], grad, rtol=1e-4, atol=1e-5)  # float32 summation order


def test_the_backward_pass_keeps_no_full_vocabulary_logits_of_every_response_position(monkeypatch):
    """Memory: what autograd keeps for the log-probs is hidden states, plus one chunk's logits at a time
    (recomputed in the backward pass), never (positions x vocabulary) logits or log-probs."""
    model, tokenizer = tiny_model()
    vocab = model.get_output_embeddings().out_features
    monkeypatch.setattr(rl, "LOGPROB_CHUNK_ELEMENTS", 4 * vocab)
    batch = rl.collate(make_samples(model, tokenizer, [1.0, -1.0, 0.5, -0.5]))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = []

    def pack(tensor):
        if tensor.shape and tensor.shape[-1] == vocab and tensor.untyped_storage().data_ptr() not in params:
            kept.append(tensor.numel())
        return tensor

    rl.without_dropout(model)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logprobs, entropy = rl.response_logprobs(model, batch)
    positions = batch["response_mask"].numel()
    assert positions > 4 * 4
    assert max(kept, default=0) <= 4 * vocab  # one chunk at most
    (logprobs.sum() + entropy.sum()).backward()  # and the backward pass still has what it needs
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0


def test_models_that_transform_their_logits_get_log_probs_from_those_logits():
    """Gemma 2 soft-caps its logits after the output layer: the hidden-state path would miss that."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=32, final_logit_softcapping=2.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Gemma2ForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(0)
    samples = [rl.Sample(torch.randint(3, 300, (7 + i,), generator=generator).tolist(),
                         torch.randint(3, 300, (5 + i,), generator=generator).tolist(), [0.0] * (5 + i), 1.0)
               for i in range(2)]
    batch = rl.collate(samples)
    with torch.no_grad():
        ours, theirs = rl.response_logprobs(model, batch), full_vocabulary_logprobs(model, batch)
        mask = batch["response_mask"]
        torch.testing.assert_close(ours[0][mask], theirs[0][mask], rtol=0, atol=1e-5)
        head = model.get_output_embeddings()
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        uncapped = rl.token_logprobs(head, hidden[:, -mask.shape[1] - 1:-1], batch["input_ids"][:, -mask.shape[1]:])
        assert not torch.allclose(uncapped[0][mask], theirs[0][mask], atol=1e-3)  # the check is not vacuous


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
    good = {"role": ["propose"], "prompt_ids": [[1, 2]], "response_ids": [[3, 4]], "response_mask": [[False, True]],
            "logprobs": [[0.0, -0.2]], "advantage": [0.5]}
    assert rl.samples_from_frame(pd.DataFrame(good)) == [rl.Sample([1, 2], [3, 4], [0.0, -0.2], 0.5, [False, True], "propose")]
    with pytest.raises(ValueError, match="missing column.*advantage"):
        rl.samples_from_frame(pd.DataFrame({k: v for k, v in good.items() if k != "advantage"}))
    with pytest.raises(ValueError, match="row 0 has 2 response_ids, 2 response_mask entries and 1 logprobs"):
        rl.samples_from_frame(pd.DataFrame({**good, "logprobs": [[-0.1]]}))
    with pytest.raises(ValueError, match="row 0 has a non-finite advantage"):
        rl.samples_from_frame(pd.DataFrame({**good, "advantage": [float("nan")]}))


def test_a_batch_without_response_tokens_is_refused():
    model, tokenizer = tiny_model()
    with pytest.raises(ValueError, match="no model-written tokens"):
        step(model, [rl.Sample([1, 2, 3], [], [], 1.0)])
    with pytest.raises(ValueError, match="no model-written tokens"):  # azr's scaffold only
        step(model, [rl.Sample([1, 2, 3], [4, 5], [0.0, 0.0], 1.0, [False, False])])


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


# ---------------------------------------------------------------- the learning issue's fixes


def tempered_samples(model, tokenizer, advantages, temperature):
    """Samples whose recorded log-probs are log_softmax(logits / temperature), as generation records them."""
    drafts = make_samples(model, tokenizer, advantages)
    model.eval()
    with torch.no_grad():
        recorded = [rl.response_logprobs(model, rl.collate([s]), temperature)[0][0].tolist() for s in drafts]
    return [rl.Sample(s.prompt_ids, s.response_ids, r, s.advantage) for s, r in zip(drafts, recorded)]


def test_the_update_scores_the_temperature_the_samples_were_drawn_at():
    model, tokenizer = tiny_model()
    samples = tempered_samples(model, tokenizer, [1.0, -1.0, 0.5], temperature=0.6)
    same = step(copy.deepcopy(model), samples, clip_ratio=1e-4, temperature=0.6)
    other = step(copy.deepcopy(model), samples, clip_ratio=1e-4, temperature=1.0)
    assert same["clip_fraction"] == 0.0  # the ratio is exactly 1 on the first step
    assert other["clip_fraction"] > 0.5


def with_dropout(model, kind):
    if kind == "attention":
        for layer in model.model.layers:
            layer.self_attn.attention_dropout = 0.5
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))


@pytest.mark.parametrize("kind", ["attention", "lora"])
def test_the_update_runs_without_dropout_so_the_first_ratio_is_one(kind):
    model, tokenizer = tiny_model()
    model = with_dropout(model, kind)
    samples = make_samples(model, tokenizer, [1.0, -1.0, 0.5, -0.5])
    metrics = step(model, samples, clip_ratio=1e-4)
    assert metrics["clip_fraction"] == 0.0


def test_scaffold_tokens_are_not_trained_on():
    model, tokenizer = tiny_model()
    [sample] = make_samples(model, tokenizer, [1.0])
    mask = [i % 2 == 0 for i in range(len(sample.response_ids))]
    # azr's scaffold tokens carry log-prob 0: were they trained on, their ratio would be far from 1.
    scaffolded = rl.Sample(sample.prompt_ids, sample.response_ids,
                           [lp if m else 0.0 for lp, m in zip(sample.logprobs, mask)], 1.0, mask, "propose")
    metrics = step(model, [scaffolded], clip_ratio=1e-4)
    assert metrics["tokens"] == sum(mask) and metrics["clip_fraction"] == 0.0


def test_roles_weigh_equally_in_the_loss():
    model, tokenizer = tiny_model()
    drafts = make_samples(model, tokenizer, [1.0, -0.5, 0.25, 0.75])
    samples = [rl.Sample(s.prompt_ids, s.response_ids, s.logprobs, s.advantage, None, role)
               for s, role in zip(drafts, ["propose", "solve", "solve", "solve"])]
    tokens = [len(s.response_ids) for s in samples]
    # On the first step every ratio is 1, so each token's loss is -A (no entropy bonus here).
    proposer = -samples[0].advantage
    solver = -sum(s.advantage * n for s, n in zip(samples[1:], tokens[1:])) / sum(tokens[1:])
    token_mean = -sum(s.advantage * n for s, n in zip(samples, tokens)) / sum(tokens)
    balanced = step(copy.deepcopy(model), samples, entropy_coef=0.0)["loss"]
    plain = step(copy.deepcopy(model), samples, entropy_coef=0.0, balance_roles=False)["loss"]
    assert balanced == pytest.approx((proposer + solver) / 2, abs=1e-5)
    assert plain == pytest.approx(token_mean, abs=1e-5)
    assert abs(balanced - plain) > 0.05


def test_rollouts_that_share_a_prompt_give_the_same_update_with_the_prompt_computed_once(monkeypatch):
    model, tokenizer = tiny_model()
    prompt = tokenizer(PROMPTS[0], add_special_tokens=False).input_ids
    drafts = [rl.Sample(prompt, tokenizer(r, add_special_tokens=False).input_ids, [], a, None, "solve")
              for r, a in zip(RESPONSES, [1.0, -1.0, 0.5, -0.25])]
    samples = [rl.Sample(d.prompt_ids, d.response_ids, lp, d.advantage, None, "solve")
               for d, lp in zip(drafts, current_logprobs(model, [rl.Sample(d.prompt_ids, d.response_ids,
                                                                            [0.0] * len(d.response_ids), 1.0) for d in drafts]))]
    assert rl.micro_batches(samples, 4) == [([0, 1, 2, 3], True)]
    with torch.no_grad():  # the shared pass gives each response token the log-prob a whole pass gives
        shared = rl.response_logprobs(model, rl.collate_shared(samples))[0]
        for i, s in enumerate(samples):
            whole = rl.response_logprobs(model, rl.collate([s]))[0][0]
            torch.testing.assert_close(shared[i, :len(s.response_ids)], whole, atol=1e-5, rtol=0)
    batches = rl.micro_batches

    def gradients(model, checkpointing, share=True):
        cfg = TrainingConfig(learning_rate=1e-3, micro_batch_size=4)
        optimizer, scheduler = rl.build_optimizer(model, cfg)
        if checkpointing:
            rl.enable_gradient_checkpointing(model)
        seen = {}
        optimizer.step = lambda: seen.update({n: p.grad.clone() for n, p in model.named_parameters()})
        monkeypatch.setattr(rl, "micro_batches", lambda samples, size: batches(samples, size, share))
        return rl.train_step(model, optimizer, scheduler, samples, cfg), seen  # share=False: each sample whole

    metrics_whole, whole_grads = gradients(copy.deepcopy(model), False, share=False)
    packed = rl.collate_shared
    # The shared pass, with and without activation checkpointing (the packed row needs no cache).
    for checkpointing in (False, True):
        calls = []
        monkeypatch.setattr(rl, "collate_shared", lambda *args: calls.append(1) or packed(*args))
        metrics_shared, shared_grads = gradients(copy.deepcopy(model), checkpointing)
        assert calls == [1]  # the four rollouts went through the model as one row, the prompt once
        assert metrics_shared["loss"] == pytest.approx(metrics_whole["loss"], abs=1e-6)
        for name, grad in whole_grads.items():
            torch.testing.assert_close(shared_grads[name], grad, atol=1e-6, rtol=1e-4)


def test_before_step_runs_once_after_every_backward_pass_and_before_the_weights_change():
    """The train stage restores the optimizer state in `before_step`: by then every micro-batch's gradient
    is in, and the step has not happened."""
    model, tokenizer = tiny_model()
    samples = make_samples(model, tokenizer, [1.0, -0.5, 2.0, -1.5])
    cfg = TrainingConfig(micro_batch_size=1)
    optimizer, scheduler = rl.build_optimizer(model, cfg)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    seen, progress = [], []

    def before_step() -> None:
        seen.append((len(progress), all(p.grad is not None for p in model.parameters()),
                     all(torch.equal(p, weights[name]) for name, p in model.named_parameters())))

    rl.train_step(model, optimizer, scheduler, samples, cfg, progress=lambda done, total: progress.append(done),
                  before_step=before_step)
    assert seen == [(4, True, True)]
    assert any(not torch.equal(p, weights[name]) for name, p in model.named_parameters())
