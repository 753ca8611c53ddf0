"""Buffer update: the iteration's accepted proposed tasks join the buffer."""

from __future__ import annotations

from pathlib import Path


from azr.artifacts import RunDir, read_table
from azr.buffer import add_tasks
from azr.config import AZRConfig
from azr.pipeline import BUFFER, run_stage


def update_buffer(config: AZRConfig, run_dir: RunDir, iteration: int) -> Path:
    """Write ``buffer/iter-N.parquet`` = buffer of N-1 + accepted proposals of N (no exact duplicates)."""
    previous, tasks_path = inputs = BUFFER.inputs(run_dir, iteration)

    def build():
        tasks = read_table(tasks_path)
        new = tasks[tasks["accepted"] & (tasks["source"] == "proposed")].assign(origin_iteration=iteration)
        return add_tasks(read_table(previous), new, config.buffer.max_size)

    return run_stage(BUFFER, config, run_dir, iteration, inputs, build)
