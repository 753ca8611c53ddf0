"""Buffer update: the iteration's accepted proposed tasks join the buffer."""

from __future__ import annotations

import time
from pathlib import Path


from azr import schemas
from azr.artifacts import RunDir, read_table, stage_complete, write_table
from azr.buffer import add_tasks
from azr.config import AZRConfig


def update_buffer(config: AZRConfig, run_dir: RunDir, iteration: int) -> Path:
    """Write ``buffer/iter-N.parquet`` = buffer of N-1 + accepted proposals of N (no exact duplicates)."""
    previous = run_dir.buffer_path(iteration - 1)
    tasks_path = run_dir.stage_file(iteration, "tasks.parquet")
    out = run_dir.buffer_path(iteration)
    if stage_complete([out], [previous, tasks_path], config.config_hash()):
        return out
    started = time.perf_counter()
    tasks = read_table(tasks_path)
    new = tasks[tasks["accepted"] & (tasks["source"] == "proposed")].assign(origin_iteration=iteration)
    buffer = add_tasks(read_table(previous), new, config.buffer.max_size)
    return write_table(buffer, out, inputs=[previous, tasks_path], schema=schemas.BUFFER, config_hash=config.config_hash(),
                       seconds=time.perf_counter() - started)
