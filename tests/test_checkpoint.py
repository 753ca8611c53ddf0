"""Checkpoints (azr/checkpoint.py): save/load round trip, finding, pruning, LoRA export."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from azr import rl
from azr.artifacts import ArtifactError, RunDir
from azr.checkpoint import (export_model, latest_checkpoint, load_optimizer_state, load_policy, load_training_state,
                            meta_path, prune_checkpoints, read_meta, rng_state, save_checkpoint)
from azr.config import ModelConfig, TrainingConfig
from tests.test_rl import make_samples

TINY = ModelConfig(name_or_path="tiny-random")
TINY_LORA = ModelConfig(name_or_path="tiny-random", lora={"enabled": True, "r": 4, "alpha": 8})


def trained(model_config: ModelConfig, steps: int = 2):
    """A policy after `steps` updates, with its optimizer and scheduler."""
    model, tokenizer = load_policy(model_config, trainable=True)
    cfg = TrainingConfig(learning_rate=1e-3, warmup_steps=3)
    optimizer, scheduler = rl.build_optimizer(model, cfg)
    samples = make_samples(model, tokenizer, [1.0, -1.0, 0.5])
    for _ in range(steps):
        rl.train_step(model, optimizer, scheduler, samples, cfg)
    return model, tokenizer, optimizer, scheduler, cfg


def assert_same_tensors(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("model_config", [TINY, TINY_LORA], ids=["full", "lora"])
def test_save_and_reload_gives_identical_weights_optimizer_and_scheduler(tmp_path, model_config):
    model, tokenizer, optimizer, scheduler, cfg = trained(model_config)
    rng = rng_state()
    directory = save_checkpoint(tmp_path / "checkpoint", model, tokenizer, optimizer, scheduler, rng,
                                iteration=1, model_config=model_config)

    loaded, _ = load_policy(model_config, directory, trainable=True)
    assert isinstance(loaded, PeftModel) == model_config.lora.enabled
    assert_same_tensors(model.state_dict(), loaded.state_dict())
    optimizer2, scheduler2 = rl.build_optimizer(loaded, cfg)
    rng2 = load_training_state(directory, scheduler2)
    load_optimizer_state(directory, optimizer2)
    assert optimizer.state_dict()["state"]  # AdamW moments exist after two steps
    assert_same_tensors(optimizer.state_dict(), optimizer2.state_dict())
    assert scheduler2.state_dict()["last_epoch"] == 2
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert_same_tensors(rng, rng2)


def test_a_restored_optimizer_steps_the_way_this_code_builds_it(tmp_path):
    """A checkpoint saved by the default (foreach) AdamW, as before the fused one: loading its state keeps
    the fused step (load_state_dict alone would take the saved flags, and the +1.4 GB foreach step)."""
    model, tokenizer, optimizer, scheduler, cfg = trained(TINY)
    for group in optimizer.param_groups:
        group.update(fused=None, foreach=True)  # what an older checkpoint holds
    directory = save_checkpoint(tmp_path / "checkpoint", model, tokenizer, optimizer, scheduler, rng_state(),
                                iteration=1, model_config=TINY)
    optimizer2, _ = rl.build_optimizer(load_policy(TINY, directory, trainable=True)[0], cfg)
    assert optimizer2.param_groups[0]["fused"] is True
    load_optimizer_state(directory, optimizer2)
    assert [(g["fused"], g["foreach"]) for g in optimizer2.param_groups] == [(True, None)] * len(optimizer2.param_groups)
    assert_same_tensors(optimizer.state_dict()["state"], optimizer2.state_dict()["state"])


def test_lora_checkpoint_holds_the_adapter_only(tmp_path):
    model, tokenizer, optimizer, scheduler, _ = trained(TINY_LORA, steps=1)
    directory = save_checkpoint(tmp_path / "checkpoint", model, tokenizer, optimizer, scheduler, rng_state(),
                                iteration=1, model_config=TINY_LORA)
    meta = read_meta(directory)
    assert meta["lora"] is True and meta["base_model"] == "tiny-random"
    assert "adapter_model.safetensors" in meta["files"] and "model.safetensors" not in meta["files"]
    with pytest.raises(ValueError, match="trained from 'tiny-random'"):
        load_policy(ModelConfig(name_or_path="smollm2-135m-instruct"), directory)


def test_exported_lora_checkpoint_is_a_plain_model_with_the_same_outputs(tmp_path):
    model, tokenizer, optimizer, scheduler, _ = trained(TINY_LORA)
    directory = save_checkpoint(tmp_path / "checkpoint", model, tokenizer, optimizer, scheduler, rng_state(),
                                iteration=1, model_config=TINY_LORA)
    out = export_model(directory, TINY_LORA, tmp_path / "export")
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in plain.named_parameters())
    ids = torch.tensor([tokenizer("def f(x):\n    return x", add_special_tokens=False).input_ids])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)
        base, _ = load_policy(TINY)
        assert not torch.allclose(base(ids).logits, plain(ids).logits)  # the adapter's training is in there


def make_checkpoints(run_dir: RunDir, iterations) -> None:
    """Checkpoints of the tiny model at these iterations (weights identical; only the layout matters)."""
    model, tokenizer, optimizer, scheduler, _ = trained(TINY, steps=1)
    for i in iterations:
        save_checkpoint(run_dir.checkpoint_dir(i), model, tokenizer, optimizer, scheduler, rng_state(),
                        iteration=i, model_config=TINY)


def test_latest_checkpoint_is_the_newest_before_the_iteration(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    assert latest_checkpoint(run_dir, before_iteration=1) is None
    make_checkpoints(run_dir, [1, 2, 4])
    run_dir.iteration_dir(3).mkdir()  # an iteration without a checkpoint (e.g. training still running)
    assert latest_checkpoint(run_dir, before_iteration=1) is None
    assert latest_checkpoint(run_dir, before_iteration=2) == run_dir.checkpoint_dir(1)
    assert latest_checkpoint(run_dir, before_iteration=4) == run_dir.checkpoint_dir(2)
    assert latest_checkpoint(run_dir, before_iteration=9) == run_dir.checkpoint_dir(4)


def test_an_unfinished_checkpoint_is_not_found(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    make_checkpoints(run_dir, [1, 2])
    meta_path(run_dir.checkpoint_dir(2)).unlink()  # as if the save had died before its last file
    assert latest_checkpoint(run_dir, before_iteration=3) == run_dir.checkpoint_dir(1)


def test_prune_keeps_the_newest_and_the_last_k_and_their_metadata(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    make_checkpoints(run_dir, [1, 2, 3, 4, 5])
    pruned = prune_checkpoints(run_dir, keep=2, newest=4, policy_dtype=torch.bfloat16)
    assert pruned == [run_dir.checkpoint_dir(1)]
    assert prune_checkpoints(run_dir, keep=2, newest=4, policy_dtype=torch.bfloat16) == []  # already done
    for i in (2, 3):  # the last two before 4 are kept as policies
        assert read_meta(run_dir.checkpoint_dir(i))["dtype"] == "bfloat16"
        load_policy(TINY, run_dir.checkpoint_dir(i))
    for i in (4, 5):  # 4 itself, and anything newer, are kept whole
        assert "dtype" not in read_meta(run_dir.checkpoint_dir(i), training=True)
    with pytest.raises(ArtifactError, match="pruned"):
        load_policy(TINY, run_dir.checkpoint_dir(1))
    assert sorted(p.name for p in run_dir.checkpoint_dir(1).iterdir()) == [
        "checkpoint.json", "checkpoint.json.manifest.json"]

    prune_checkpoints(run_dir, keep=0, newest=5, policy_dtype=torch.bfloat16)
    assert latest_checkpoint(run_dir, before_iteration=6) == run_dir.checkpoint_dir(5)
    load_policy(TINY, run_dir.checkpoint_dir(5))
    with pytest.raises(ArtifactError, match="pruned"):
        read_meta(run_dir.checkpoint_dir(4))


def test_a_kept_policy_is_the_weights_in_the_generation_dtype_without_training_state(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    make_checkpoints(run_dir, [1, 2])
    whole = run_dir.checkpoint_dir(1)
    meta_before = meta_path(whole).read_bytes()
    trained_weights = load_policy(TINY, whole, trainable=True)[0].state_dict()
    size_before = sum(p.stat().st_size for p in whole.iterdir())

    assert prune_checkpoints(run_dir, keep=None, newest=2, policy_dtype=torch.bfloat16) == []
    assert not {p.name for p in whole.iterdir()} & {"optimizer.pt", "scheduler.pt", "rng.pt"}
    assert meta_path(whole).read_bytes() == meta_before  # the stages that read it stay complete
    with safe_open(whole / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.bfloat16}
    assert sum(p.stat().st_size for p in whole.iterdir()) < size_before / 4
    policy, _ = load_policy(ModelConfig(name_or_path="tiny-random", generation_dtype="bfloat16"), whole)
    for key, value in policy.state_dict().items():
        assert torch.equal(value, trained_weights[key].to(torch.bfloat16)), key
    model, _ = load_policy(TINY, whole, trainable=True)
    optimizer, scheduler = rl.build_optimizer(model, TrainingConfig())
    for load in (lambda c: load_training_state(c, scheduler), lambda c: load_optimizer_state(c, optimizer)):
        with pytest.raises(ArtifactError, match="only the policy was kept"):
            load(whole)
        load(run_dir.checkpoint_dir(2))  # the newest still resumes

    # Interrupted before policy.json: a later prune finishes the job.
    (whole / "policy.json").unlink()
    with pytest.raises(ArtifactError, match="pruned or is incomplete"):
        read_meta(whole)
    prune_checkpoints(run_dir, keep=None, newest=2, policy_dtype=torch.bfloat16)
    assert read_meta(whole)["dtype"] == "bfloat16"


def test_generation_runs_in_generation_dtype_and_training_in_dtype():
    config = ModelConfig(name_or_path="tiny-random", generation_dtype="bfloat16")
    generating, _ = load_policy(config)
    training, _ = load_policy(config, trainable=True)
    assert next(generating.parameters()).dtype == torch.bfloat16
    assert next(training.parameters()).dtype == torch.float32
    same, _ = load_policy(ModelConfig(name_or_path="tiny-random"))
    assert next(same.parameters()).dtype == torch.float32
