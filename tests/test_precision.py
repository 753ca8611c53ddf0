"""training.precision: one update in bf16-mixed moves the weights as the float32 update does, and
keeps float32 master weights and optimizer state."""

from __future__ import annotations

import copy

import pytest
import torch

from azr import rl
from azr.config import TrainingConfig
from tests.test_rl import make_samples, tiny_model

ADVANTAGES = [1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.25, -0.25]


def update(model, samples, precision: str) -> tuple[torch.Tensor, dict, torch.optim.Optimizer]:
    """The weight change of one train_step, as one flat vector, with the step's metrics and optimizer."""
    cfg = TrainingConfig(learning_rate=1e-3, precision=precision, entropy_coef=0.0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    optimizer, scheduler = rl.build_optimizer(model, cfg)
    metrics = rl.train_step(model, optimizer, scheduler, samples, cfg)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return after - before, metrics, optimizer


@pytest.fixture(scope="module")
def updates():
    model, tokenizer = tiny_model()
    samples = make_samples(model, tokenizer, ADVANTAGES)
    return {precision: update(copy.deepcopy(model), samples, precision) for precision in ("fp32", "bf16-mixed")}


def test_bf16_mixed_moves_the_weights_like_fp32(updates):
    """AdamW's first step is close to lr * sign(gradient), so the updates agree wherever bfloat16's
    rounding (about 3 significant digits) leaves a gradient's sign alone: a cosine of at least 0.95
    (the opposite advantages give -1) and the same size. The two are not identical: bf16 really ran."""
    fp32, bf16 = updates["fp32"][0], updates["bf16-mixed"][0]
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16, dim=0).item()
    assert cosine >= 0.95, f"bf16-mixed update points elsewhere (cosine {cosine:.3f})"
    assert bf16.norm().item() == pytest.approx(fp32.norm().item(), rel=0.05)
    assert not torch.equal(fp32, bf16)
    assert updates["bf16-mixed"][1]["bf16_mixed"] == 1.0 and updates["fp32"][1]["bf16_mixed"] == 0.0
    assert updates["bf16-mixed"][1]["loss"] == pytest.approx(updates["fp32"][1]["loss"], abs=0.02)


def test_bf16_mixed_keeps_float32_weights_and_optimizer_state(updates):
    optimizer = updates["bf16-mixed"][2]
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            assert parameter.dtype == torch.float32
            state = optimizer.state[parameter]
            assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32


def test_auto_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr("azr.model.native_bfloat16", lambda: True)
    assert rl.training_precision(TrainingConfig(precision="auto")) == "bf16-mixed"
    monkeypatch.setattr("azr.model.native_bfloat16", lambda: False)
    assert rl.training_precision(TrainingConfig(precision="auto")) == "fp32"
    assert rl.training_precision(TrainingConfig(precision="fp32")) == "fp32"
