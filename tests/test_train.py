"""The train stage (stages/train.py): rewards.parquet in, train.json and a checkpoint out, resumable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from azr import rl
from azr.artifacts import ArtifactError, RunDir, read_table, write_table
from azr.checkpoint import discard_damaged_checkpoints, latest_checkpoint, load_policy, read_meta
from azr.config import AZRConfig, ModelConfig, dump_config
from stages.train import train
from tests.test_rl import make_samples

ROOT = Path(__file__).resolve().parents[1]
TRAIN_KEYS = {"loss", "pg_loss", "entropy", "clip_fraction", "grad_norm", "tokens", "tokens_per_second",
              "train_seconds", "peak_memory_mb"}


def smoke_config(**training) -> AZRConfig:
    return AZRConfig(model={"name_or_path": "tiny-random"},
                     training={"learning_rate": 1e-3, "micro_batch_size": 2, **training})


def write_rewards(run_dir: RunDir, iteration: int, advantages=(1.0, -1.0, 0.5, -0.5, 0.0)) -> None:
    """A rewards.parquet as the score stage writes it, with log-probs recorded by the base model."""
    model, tokenizer = load_policy(ModelConfig(name_or_path="tiny-random"))
    samples = make_samples(model, tokenizer, advantages)
    rows = [{"run": run_dir.name, "iteration": iteration, "task_id": f"t{i // 2}", "task_type": "deduction",
             "role": "solve" if i % 2 else "propose", "sample": i, "prompt_ids": s.prompt_ids,
             "response_ids": s.response_ids, "response_mask": s.trained(), "logprobs": s.logprobs, "reward": s.advantage,
             "advantage": s.advantage} for i, s in enumerate(samples)]
    write_table(pd.DataFrame(rows), run_dir.stage_file(iteration, "rewards.parquet"))


def weights_sha(checkpoint) -> dict[str, str]:
    return {name: sha for name, sha in read_meta(checkpoint)["files"].items() if name.endswith(".safetensors")}


def test_train_writes_metrics_and_a_checkpoint_and_is_idempotent(tmp_path):
    run_dir, config = RunDir(tmp_path / "run"), smoke_config()
    write_rewards(run_dir, 1)
    out = train(config, run_dir, 1)
    metrics = json.loads(out.read_text())
    assert TRAIN_KEYS <= metrics.keys() and "kl" not in metrics
    assert metrics["tokens"] > 0 and metrics["tokens_per_second"] > 0 and metrics["peak_memory_mb"] > 0
    checkpoint = run_dir.checkpoint_dir(1)
    names = {p.name for p in checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "optimizer.pt", "scheduler.pt", "rng.pt"} <= names
    base, _ = load_policy(config.model)
    trained, _ = load_policy(config.model, checkpoint)
    assert any(not torch.equal(a, b) for a, b in zip(base.state_dict().values(), trained.state_dict().values()))

    stamps = {p: p.stat().st_mtime_ns for p in [out, *checkpoint.iterdir()]}
    assert train(config, run_dir, 1) == out
    assert stamps == {p: p.stat().st_mtime_ns for p in [out, *checkpoint.iterdir()]}  # computed nothing

    changed = smoke_config(learning_rate=2e-3)
    train(changed, run_dir, 1)  # a different config makes it stale
    assert out.stat().st_mtime_ns != stamps[out]


def test_each_iteration_continues_from_the_previous_checkpoint(tmp_path):
    run_dir, config = RunDir(tmp_path / "run"), smoke_config()
    for iteration in (1, 2):
        write_rewards(run_dir, iteration)
        train(config, run_dir, iteration)
    optimizer = torch.load(run_dir.checkpoint_dir(2) / "optimizer.pt", weights_only=True)
    scheduler = torch.load(run_dir.checkpoint_dir(2) / "scheduler.pt", weights_only=True)
    assert {float(s["step"]) for s in optimizer["state"].values()} == {2.0}
    assert scheduler["last_epoch"] == 2
    assert weights_sha(run_dir.checkpoint_dir(1)) != weights_sha(run_dir.checkpoint_dir(2))


def test_lora_resume_reproduces_the_uninterrupted_iteration(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    config = smoke_config()
    config.model.lora.enabled = True
    for iteration in (1, 2):
        write_rewards(run_dir, iteration)
        if iteration == 2:  # the run as a crash after iteration 1 leaves it
            shutil.copytree(run_dir.root, tmp_path / "crashed")
        train(config, run_dir, iteration)
    assert read_meta(run_dir.checkpoint_dir(2))["lora"] is True
    uninterrupted = weights_sha(run_dir.checkpoint_dir(2))
    metrics = json.loads(run_dir.stage_file(2, "train.json").read_text())

    # A new call on the crashed run resumes from checkpoint 1.
    crashed = RunDir(tmp_path / "crashed")
    train(config, crashed, 2)
    assert weights_sha(crashed.checkpoint_dir(2)) == uninterrupted
    assert json.loads(crashed.stage_file(2, "train.json").read_text())["loss"] == metrics["loss"]

    # A different seed stream would give different weights: the equality above is not vacuous.
    config.seed = 1
    for iteration in (1, 2):
        train(config, run_dir, iteration)
    assert weights_sha(run_dir.checkpoint_dir(2)) != uninterrupted


def test_every_policy_kept_costs_little_and_the_newest_checkpoint_resumes_exactly(tmp_path):
    """keep_policies: older iterations keep bfloat16 weights only; the newest keeps float32 weights and
    the optimizer state, so three iterations through checkpoints equal three updates in memory."""
    run_dir, config = RunDir(tmp_path / "run"), smoke_config(keep_policies=True, keep_checkpoints=0)
    config.model.generation_dtype = "bfloat16"
    for iteration in (1, 2, 3):
        write_rewards(run_dir, iteration, advantages=(1.0, -1.0, 0.5, -0.5 * iteration, 0.25))
        train(config, run_dir, iteration)

    sizes = {i: sum(p.stat().st_size for p in run_dir.checkpoint_dir(i).iterdir()) for i in (1, 2, 3)}
    for i in (1, 2):
        assert read_meta(run_dir.checkpoint_dir(i))["dtype"] == "bfloat16"
        assert not (run_dir.checkpoint_dir(i) / "optimizer.pt").exists()
        assert sizes[i] < sizes[3] / 4
        load_policy(config.model, run_dir.checkpoint_dir(i))  # an old iteration can still be evaluated
    assert discard_damaged_checkpoints(run_dir) == []  # a kept policy is checked against policy.json, not damaged
    weights = run_dir.checkpoint_dir(1) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:-4] = bytes(b ^ 0x40 for b in data[-8:-4])
    weights.write_bytes(bytes(data))
    assert discard_damaged_checkpoints(run_dir) == [
        "iter-0001/checkpoint: model.safetensors do not match policy.json (corrupt or truncated)"]

    model, _ = load_policy(config.model, trainable=True)  # the same three updates, never leaving memory
    optimizer, scheduler = rl.build_optimizer(model, config.training)
    for iteration in (1, 2, 3):
        samples = rl.samples_from_frame(read_table(run_dir.stage_file(iteration, "rewards.parquet")))
        rl.train_step(model, optimizer, scheduler, samples, config.training, use_recorded_logprobs=False)
    resumed, _ = load_policy(config.model, run_dir.checkpoint_dir(3), trainable=True)
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(resumed.state_dict()[key], value), key


def test_gradient_checkpointing_gives_the_same_update(tmp_path):
    results = []
    for on in (False, True):
        run_dir, config = RunDir(tmp_path / f"gc-{on}"), smoke_config()
        config.model.gradient_checkpointing = on
        write_rewards(run_dir, 1)
        results.append(json.loads(train(config, run_dir, 1).read_text()))
        results.append(load_policy(config.model, run_dir.checkpoint_dir(1))[0].state_dict())
    off_metrics, off_weights, on_metrics, on_weights = results
    assert on_metrics["loss"] == pytest.approx(off_metrics["loss"], rel=1e-5)
    # AdamW's first step moves a weight by about lr * g / (|g| + eps): where |g| is near eps (1e-8), rounding
    # noise in the recomputed forward changes that step by a fraction of lr. A wrong gradient would move
    # many weights by up to 2 * lr, so: all within lr / 10, and all but a few in 10^3 within 1e-6.
    lr = smoke_config().training.learning_rate
    for key in off_weights:
        torch.testing.assert_close(on_weights[key], off_weights[key], rtol=1e-5, atol=lr / 10)
        loose = ((on_weights[key] - off_weights[key]).abs() > 1e-6).float().mean().item()
        assert loose < 1e-3, f"{key}: {loose:.2%} of weights differ by more than 1e-6"


def test_kl_to_the_initial_model_is_reported_when_on(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    write_rewards(run_dir, 1)
    metrics = json.loads(train(smoke_config(kl_coef=0.05), run_dir, 1).read_text())
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # the first update starts at the initial model


def test_old_checkpoints_are_pruned_but_their_stages_stay_complete(tmp_path):
    run_dir, config = RunDir(tmp_path / "run"), smoke_config(keep_checkpoints=0)
    for iteration in (1, 2, 3):
        write_rewards(run_dir, iteration)
        train(config, run_dir, iteration)
    assert not (run_dir.checkpoint_dir(1) / "model.safetensors").exists()
    assert not (run_dir.checkpoint_dir(2) / "model.safetensors").exists()
    assert latest_checkpoint(run_dir, before_iteration=4) == run_dir.checkpoint_dir(3)
    read_meta(run_dir.checkpoint_dir(3))
    stamp = run_dir.stage_file(2, "train.json").stat().st_mtime_ns
    train(config, run_dir, 2)  # a resumed flow calling an old, finished stage again: nothing to do
    assert run_dir.stage_file(2, "train.json").stat().st_mtime_ns == stamp


def test_training_disabled_writes_no_checkpoint(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    write_rewards(run_dir, 1)
    out = train(smoke_config(enabled=False), run_dir, 1)
    assert json.loads(out.read_text()) == {"skipped": True}
    assert latest_checkpoint(run_dir, before_iteration=2) is None


def test_missing_rewards_is_an_error_naming_the_file(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(ArtifactError, match="rewards.parquet"):
        train(smoke_config(), run_dir, 1)


def test_a_rewards_file_without_advantages_is_an_error_naming_the_column(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    write_table(pd.DataFrame({"prompt_ids": [[1]], "response_ids": [[2]], "logprobs": [[-1.0]]}),
                run_dir.stage_file(1, "rewards.parquet"))
    with pytest.raises(ValueError, match="rewards.parquet: missing column.*advantage"):
        train(smoke_config(), run_dir, 1)


def test_azr_model_export_writes_a_plain_model_of_a_lora_run(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    config = smoke_config()
    config.model.lora.enabled = True
    run_dir.root.mkdir()
    run_dir.config_path.write_text(dump_config(config))
    write_rewards(run_dir, 1)
    train(config, run_dir, 1)

    out = tmp_path / "exported"
    cli = [sys.executable, "-m", "cli.main", "model", "export", str(run_dir.root)]
    result = subprocess.run([*cli, "--iteration", "1", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in plain.named_parameters())
    merged, tokenizer = load_policy(config.model, run_dir.checkpoint_dir(1))
    ids = torch.tensor([tokenizer("def f(x):", add_special_tokens=False).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, merged(ids).logits)

    missing = subprocess.run([*cli, "--iteration", "7", "--out", str(tmp_path / "x")], capture_output=True,
                             text=True, cwd=ROOT)
    assert missing.returncode == 1
    message = " ".join(missing.stderr.split())  # rich wraps long lines
    assert "has no checkpoint for iteration 7 (checkpoints: 1)" in message
