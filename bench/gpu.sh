#!/usr/bin/env bash
# One short command for a machine with a CUDA GPU: generation (transformers backend, and vLLM when it
# is installed) and one training step (fp32 and bf16-mixed), on a randomly initialised model of
# Qwen2.5-1.5B's shape (no weights can be downloaded there).
#
#   bash bench/gpu.sh                      # 64 prompts x 8 rollouts x 512 new tokens; training 16 x (512 + 512)
#   SHAPE=tiny PROMPTS=4 ROLLOUTS=2 NEW_TOKENS=16 TRAIN_SAMPLES=2 TRAIN_TOKENS=32 bash bench/gpu.sh   # check it on a CPU
#
# Needs python with torch, transformers, pydantic and pyyaml (no install step: the device machine
# reaches no registry). vLLM's wheel is far too big to carry there, so without it the vLLM line says
# it was not measured. Prints every figure with its baseline (the transformers backend; fp32).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
SHAPE=${SHAPE:-qwen2.5-1.5b}
WORK=${WORK:-$(mktemp -d /tmp/azr-gpu-bench.XXXXXX)}

# Qwen2.5-1.5B's architecture (config only) and azr's offline tiny-random tokenizer: weights are random.
$PY - "$SHAPE" "$WORK/model" <<'PY'
import sys
from transformers import Qwen2Config
from azr.model import tiny_random_tokenizer

shape, out = sys.argv[1], sys.argv[2]
sizes = {"qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                               num_key_value_heads=2),
         "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)}[shape]
Qwen2Config(vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0, **sizes).save_pretrained(out)
tiny_random_tokenizer().save_pretrained(out)
print(f"model: {shape} shape, random weights, in {out}")
PY

$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
if $PY -c "import vllm" 2>/dev/null; then BACKENDS=hf,vllm; else
  BACKENDS=hf; echo "vLLM is not installed here: the vLLM backend was NOT measured (only the transformers backend)"; fi

$PY bench/bench_generation.py --model "$WORK/model" --random-init --backends "$BACKENDS" --dtype bfloat16 \
  --prompts "${PROMPTS:-64}" --rollouts "${ROLLOUTS:-8}" --max-new-tokens "${NEW_TOKENS:-512}" --temperature 1.0 \
  --gpu-memory-utilization 0.5
$PY bench/bench_train.py --model "$WORK/model" --random-init --variants full,full+bf16 --steps 1 \
  --samples "${TRAIN_SAMPLES:-16}" --prompt-tokens "${TRAIN_TOKENS:-512}" --response-tokens "${TRAIN_TOKENS:-512}" \
  --micro-batch-size "${MICRO_BATCH:-4}" --peak-size "${PEAK_SIZE:-8192}"
