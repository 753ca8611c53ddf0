"""Propose: sample task types, build proposer prompts from buffer references, generate, parse."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from azr import schemas, task_types
from azr.artifacts import RunDir, read_table
from azr.config import AZRConfig
from azr.data_construction import proposer_request
from azr.meter import Meter
from azr.pipeline import PROPOSE, run_stage
from azr.formats import format_for, program_arity
from stages.common import generate_batch, generation_columns, iteration_policy, policy_inputs, prompt_fits


def propose(config: AZRConfig, run_dir: RunDir, iteration: int) -> Path:
    """Write ``iter-N/proposals.parquet``: one row per proposer generation, parsed or with a reason."""
    inputs = [*PROPOSE.inputs(run_dir, iteration), *policy_inputs(run_dir, iteration)]
    return run_stage(PROPOSE, config, run_dir, iteration, inputs, lambda: _proposals(config, run_dir, iteration))


def _proposals(config: AZRConfig, run_dir: RunDir, iteration: int) -> pd.DataFrame:
    started = time.perf_counter()
    buffer = read_table(PROPOSE.inputs(run_dir, iteration)[0])
    rng = PROPOSE.rng(config, iteration)
    types = rng.choice(config.task_types, size=config.tasks_per_iteration, p=config.task_distribution)
    policy = iteration_policy(config, run_dir, iteration)
    fits = prompt_fits(config, policy[1])
    requests = [proposer_request(str(t), buffer, config, rng, fits) for t in types]
    formats = [format_for(config, "propose", str(t), program_arity(program) if program else None)
               for t, (_, _, program) in zip(types, requests)]
    meter = Meter(PROPOSE.name, iteration, len(requests), "fields")
    rendered, generations = generate_batch(config, policy, [r[0] for r in requests], formats,
                                           PROPOSE.seed(config, iteration), meter)
    meter.finish()
    strict = not config.is_forced(iteration)
    n_inputs = config.validation.induction_num_inputs
    rows = []
    for index, (task_type, (_, reference_ids, program), prompt, gen) in enumerate(zip(types, requests, rendered, generations)):
        kind = task_types.get(str(task_type))
        parsed = kind.parse_proposal(gen.text, strict, n_inputs)
        rows.append(schemas.row(schemas.PROPOSALS, {
            "run": run_dir.name, "iteration": iteration, "task_id": f"i{iteration:04d}-p{index:03d}",
            "task_type": str(task_type), **generation_columns(prompt, gen),
            "parsed": parsed.ok, "parse_reason": parsed.reason,
            "program": program if kind.given_program else parsed.program,
            "input": parsed.input, "inputs": parsed.inputs, "message": parsed.message,
            "reference_ids": reference_ids,
        }, later=("generate_seconds",)))
    seconds = time.perf_counter() - started
    frame = pd.DataFrame(rows)
    frame["generate_seconds"] = seconds / max(len(rows), 1)
    return frame
