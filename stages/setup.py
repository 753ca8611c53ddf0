"""Create (or reopen) a run directory: the resolved config and the seed buffer (iteration 0)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from azr import schemas
from azr.artifacts import RunDir, discard_damaged, stage_complete, write_table
from azr.buffer import BUFFER_COLUMNS, seed_programs
from azr.checkpoint import discard_damaged_checkpoints
from azr.config import AZRConfig, ConfigError, dump_config, load_config
from azr.sandbox import open_sandbox
from azr.pipeline import BUFFER

log = logging.getLogger(__name__)


def setup_run(config: AZRConfig, runs_dir: str | Path) -> RunDir:
    """Write ``config.yaml`` once and the seed buffer; reopening a run with the same config is a no-op.

    A run directory that already holds a different config is refused: resume it with its own
    config (``azr resume``) or choose another run name. Reopening one checks every finished file and
    checkpoint against its manifest: a damaged one is named and its stage runs again.
    """
    name = config.orchestration.run_name or time.strftime("azr-%Y%m%d-%H%M%S")
    run_dir = RunDir(Path(runs_dir).expanduser() / name)
    run_dir.root.mkdir(parents=True, exist_ok=True)
    if run_dir.config_path.exists():
        saved = load_config(run_dir.config_path)
        if saved.config_hash() != config.config_hash():
            raise ConfigError(
                f"{run_dir.root} already holds a run with a different config; "
                f"use `azr resume {run_dir.root}` or another run name"
            )
        for line in discard_damaged(run_dir.root) + discard_damaged_checkpoints(run_dir):
            log.warning("%s; the stage that wrote it runs again", line)
    else:
        config = config.model_copy(update={"orchestration": config.orchestration.model_copy(update={"run_name": name})})
        run_dir.config_path.write_text(dump_config(config))
    seed_buffer(config, run_dir)
    return run_dir


def seed_buffer(config: AZRConfig, run_dir: RunDir) -> Path:
    """``buffer/iter-0000.parquet``: the shipped seed programs with outputs computed in the sandbox."""
    out = BUFFER.output(run_dir, 0)
    if stage_complete([out], [], config.config_hash()):
        return out
    started = time.perf_counter()
    seeds = seed_programs()
    with open_sandbox(config.executor) as sandbox:
        results = sandbox.validate([(s["program"], s["inputs"]) for s in seeds])
    rows = []
    for seed, result in zip(seeds, results):
        if result.status != "ok":  # a shipped seed that fails is a bug in azr, not in the model
            raise RuntimeError(f"seed task {seed['task_id']} failed in the sandbox: {result.status} {result.error}")
        rows.append(schemas.row(schemas.BUFFER, {
            "task_id": seed["task_id"], "task_type": "deduction", "program": result.program,
            "input": seed["inputs"][0], "output": result.outputs[0], "inputs": seed["inputs"],
            "outputs": result.outputs, "message": None, "origin_iteration": 0,
        }))
    buffer = pd.DataFrame(rows, columns=BUFFER_COLUMNS)
    return write_table(buffer, out, schema=schemas.BUFFER, config_hash=config.config_hash(), seconds=time.perf_counter() - started)
