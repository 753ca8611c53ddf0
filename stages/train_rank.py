"""One torchrun rank of the train stage: `python -m stages.train_rank RUN_DIR ITERATION`.

Started by the train stage (or `azr train-node`) through torchrun, never by hand: it reads the
launch the stage announced (config, rendezvous id), joins the process group and runs its share of
the update. `record` writes an exception to torchrun's error file, so the stage's error names it.
"""

from __future__ import annotations

import logging
import os
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from azr.artifacts import RunDir, read_json
from azr.config import AZRConfig
from azr.distributed import process_group
from azr.torchrun import exit_with_parent
from stages.train import launch_path, update


@record
def main(argv: list[str] | None = None) -> None:
    exit_with_parent(lambda: os._exit(1))  # an orphan: its agent was killed, nobody waits for this update
    root, iteration = argv if argv is not None else sys.argv[1:]
    run_dir, iteration = RunDir(root), int(iteration)
    config = AZRConfig.model_validate(read_json(launch_path(run_dir, iteration))["config"])
    with process_group(config.training.distributed) as ranks:
        update(config, run_dir, iteration, ranks)


def exit_without_teardown() -> None:
    """Leave the way a multiprocessing child does, with os._exit once the output is flushed. At the
    interpreter's teardown, after the update was done, its files closed and the process group
    destroyed, a rank sometimes aborted in a C++ destructor of torch's distributed objects
    ("terminate called without an active exception", FSDP ranks under load), and torchrun then
    failed the stage. Nothing the rank owes anyone is left for teardown."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
    exit_without_teardown()
