"""Seeds derived from (run seed, iteration, stage), so a stage re-run after a crash draws the same numbers."""

from __future__ import annotations

import hashlib

import numpy as np


def stage_seed(seed: int, iteration: int, stage: str) -> int:
    """A 63-bit seed unique to this run seed, iteration and stage name."""
    digest = hashlib.sha256(f"{seed}:{iteration}:{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stage_rng(seed: int, iteration: int, stage: str) -> np.random.Generator:
    return np.random.default_rng(stage_seed(seed, iteration, stage))
