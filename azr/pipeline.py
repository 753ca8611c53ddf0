"""The stages of a run, declared once: what each one writes, what it reads, its schema and its seed stream.

Everything that needs to know the stage graph reads `STAGES`: the stage functions (`stages/`), the
flow (`flows/training.py`, one Prefect task per stage, in this order), where a run stands and its
metrics (`azr/runs.py`), what MLflow gets as artifacts (`azr/tracking.py`) and the stage table in
docs/design.md. A file name appears here and nowhere else.

    iteration N:  propose -> validate -> solve -> score -> train -> buffer (-> evaluate, every eval.every)

`reads` names the stages whose outputs a stage reads, in the order of its manifest's inputs:
``"buffer@prev"`` is the buffer after the previous iteration (iteration 0's is the seed tasks). A
stage that generates also reads the policy it generates with (the newest checkpoint before the
iteration), and evaluate the checkpoint of its own iteration; those are added by the stage, as
before the first update there is none.

`run_stage` is the skeleton every table-writing stage shares: return at once when the output is
complete for these inputs and this config (section 2 of the design), else build the table, time it,
write it with its schema and manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from azr import schemas
from azr.artifacts import RunDir, stage_complete, write_table
from azr.config import AZRConfig
from azr.seeding import stage_rng, stage_seed

PREVIOUS_BUFFER = "buffer@prev"


@dataclass(frozen=True)
class Stage:
    """One stage: its name (progress lines, `seconds/<name>` metrics), output, inputs and schema."""

    name: str
    task: str  # the Prefect task's name
    output: Callable[[RunDir, int], Path]  # (run, iteration) -> the file whose manifest says the stage is done
    reads: tuple[str, ...] = ()  # stages whose outputs it reads, in manifest order (see the module docstring)
    schema: pa.Schema | None = None  # of a Parquet output (train writes JSON and a checkpoint)
    seed_stream: str | None = None  # the name its random numbers are derived from (azr.seeding)
    artifact: bool = field(default=False)  # logged to MLflow with the iteration (tracking.log_artifacts)

    def inputs(self, run: RunDir, iteration: int) -> list[Path]:
        """The outputs of the stages it reads (without the policy checkpoint; see the module docstring)."""
        return [_buffer_file(run, iteration - 1) if name == PREVIOUS_BUFFER else STAGE[name].output(run, iteration)
                for name in self.reads]

    def seed(self, config: AZRConfig, iteration: int) -> int:
        """This stage's seed in this iteration: a re-run after a crash draws the same numbers."""
        return stage_seed(config.seed, iteration, self.seed_stream or self.name)

    def rng(self, config: AZRConfig, iteration: int):
        return stage_rng(config.seed, iteration, self.seed_stream or self.name)


def _in_iteration(name: str) -> Callable[[RunDir, int], Path]:
    return lambda run, iteration: run.stage_file(iteration, name)


def _buffer_file(run: RunDir, iteration: int) -> Path:
    """The buffer after `iteration` (0: the seed tasks), outside the iteration directories."""
    return run.root / "buffer" / f"iter-{iteration:04d}.parquet"


def _eval_file(run: RunDir, iteration: int) -> Path:
    """The held-out evaluation of the weights after `iteration`'s update (0: the base model)."""
    return run.root / "eval" / f"iter-{iteration:04d}.parquet"


STAGES: tuple[Stage, ...] = (
    Stage("propose", "propose", _in_iteration("proposals.parquet"), (PREVIOUS_BUFFER,),
          schemas.PROPOSALS, "propose", artifact=True),
    Stage("validate", "validate", _in_iteration("tasks.parquet"), ("propose", PREVIOUS_BUFFER),
          schemas.TASKS, "validate", artifact=True),
    Stage("solve", "solve", _in_iteration("solutions.parquet"), ("validate",),
          schemas.SOLUTIONS, "solve", artifact=True),
    Stage("score", "score", _in_iteration("rewards.parquet"), ("propose", "validate", "solve", PREVIOUS_BUFFER),
          schemas.REWARDS, None, artifact=True),
    Stage("train", "train", _in_iteration("train.json"), ("score",), None, "train", artifact=True),
    Stage("buffer", "update-buffer", _buffer_file, (PREVIOUS_BUFFER, "validate"),
          schemas.BUFFER, None),
    # Evaluation seeds each (set, mode) of its own (azr.evaluation.run_evaluation).
    Stage("evaluate", "evaluate", _eval_file, (), schemas.EVAL),
)
STAGE: dict[str, Stage] = {stage.name: stage for stage in STAGES}
ITERATION_STEPS: tuple[str, ...] = ("propose", "validate", "solve", "score", "train", "buffer")  # every iteration
PROPOSE, VALIDATE, SOLVE, SCORE, TRAIN, BUFFER, EVALUATE = STAGES


def run_stage(stage: Stage, config: AZRConfig, run: RunDir, iteration: int, inputs: Sequence[Path],
              build: Callable[[], pd.DataFrame]) -> Path:
    """Write ``stage``'s table for ``iteration`` unless it is already complete for ``inputs`` and the config.

    ``build`` makes the rows (it is not called when the stage is complete); the table is written
    with the stage's schema and a manifest that records the inputs, the config hash and the seconds.
    """
    out = stage.output(run, iteration)
    if stage_complete([out], list(inputs), config.config_hash()):
        return out
    started = time.perf_counter()
    frame = build()
    return write_table(frame, out, inputs=list(inputs), schema=stage.schema, config_hash=config.config_hash(),
                       seconds=time.perf_counter() - started)


def evaluations(run: RunDir) -> list[Path]:
    """The run's held-out evaluations, oldest first."""
    return sorted(_eval_file(run, 0).parent.glob("iter-*.parquet"))
