"""azr: Absolute Zero Reasoner self-play as discrete, resumable stages."""
import os

# oneDNN (bfloat16 matmuls on CPU) caches a compiled primitive per new matrix shape, in two caches of
# 1024 entries each by default. Every iteration's samples bring new sequence lengths, so a run's
# resident memory grew by ~210 MB an iteration (SmolLM2-135M, bf16-mixed) until the caches were
# full. Small caps keep it flat at no measured cost in speed. Read when oneDNN is first used, so set
# on importing azr; a value already in the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
os.environ.setdefault("LRU_CACHE_CAPACITY", "16")  # ideep's cache (PyTorch's oneDNN wrapper)

__version__ = "0.1.0"
