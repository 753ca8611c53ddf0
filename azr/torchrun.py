"""Start a stage's torchrun ranks on this node, wait, and say which rank died (design.md section 7).

`run_ranks` runs `python -m azr.torchrun TORCHRUN-OPTIONS -m MODULE ARGS` as a subprocess: that is
torchrun's elastic agent, built from torchrun's own argument parser and launcher API, which starts
this node's ranks, restarts none, stops the others when one fails, and here also writes each
failure (rank, exit code or signal, the exception a rank raised) to a JSON file. `run_ranks` turns
that file into a `RankFailed` error naming the rank that failed first. Each rank's output goes to
the console, prefixed `[rank]:`, and to `LOG_DIR/<rdzv id>_*/attempt_0/<local rank>/`. The agent
and its ranks exit when the process that started them dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from azr.config import DistributedConfig

FAILURES_ENV = "AZR_TORCHRUN_FAILURES"  # where the agent writes the failures it saw
PARENT_ENV = "AZR_PARENT_PID"  # the pid of the process that started this one (see exit_with_parent)


class RankFailed(RuntimeError):
    """A torchrun rank exited with an error or was killed; the message names it and how it ended."""


def torchrun_options(config: DistributedConfig, rdzv_id: str, log_dir: Path, *, host: bool) -> list[str]:
    """torchrun's options for one node: one rendezvous id per launch, no restarts (a rank's failure
    fails the stage). One node meets on a free loopback port; several at `rdzv_endpoint`, which the
    node running the stage (`host`) serves."""
    options = ["--nnodes", str(config.nnodes), "--nproc-per-node", str(config.nproc_per_node),
               "--max-restarts", "0", "--rdzv-backend", "c10d", "--rdzv-id", rdzv_id,
               "--log-dir", str(log_dir), "--redirects", "3", "--tee", "3"]
    if config.nnodes == 1:
        return [*options, "--rdzv-endpoint", "localhost:0"]
    return [*options, "--rdzv-endpoint", config.rdzv_endpoint, "--rdzv-conf", f"is_host={int(host)}"]


def run_ranks(module: str, args: Sequence[str], options: Sequence[str], failures: Path) -> None:
    """Run `python -m module args` on this node's ranks; raise RankFailed naming the first to fail."""
    failures.unlink(missing_ok=True)
    command = [sys.executable, "-m", "azr.torchrun", *options, "-m", module, *args]
    agent = subprocess.Popen(command, env={**os.environ, FAILURES_ENV: str(failures), PARENT_ENV: str(os.getpid())})
    try:
        code = agent.wait()
    except BaseException:  # interrupted: the agent stops its ranks on SIGTERM
        agent.terminate()
        agent.wait()
        raise
    if code == 0:
        return
    if not failures.is_file():
        raise RankFailed(f"torchrun for {module} exited with code {code} before any rank failed "
                         "(rendezvous or launch error; see its output above)")
    raise RankFailed(describe(json.loads(failures.read_text()), module))


def describe(failures: list[dict[str, Any]], module: str) -> str:
    """One message for the failures an agent reported: the first rank to fail, how, and where its log is.

    Ranks that torchrun stopped itself (SIGTERM, after another failed) are the consequence, not the cause."""
    first, *others = sorted(failures, key=lambda f: (f["signal"] == "SIGTERM", f["timestamp"], f["rank"]))
    how = f"was killed by {first['signal']}" if first["signal"] else f"exited with code {first['exitcode']}"
    message = f"train rank {first['rank']} (local rank {first['local_rank']}, pid {first['pid']}) {how}"
    if first["error"]:
        message += f": {first['error']}"
    if first["stderr"]:
        message += f" (its output: {first['stderr']})"
    if others:
        message += f"; torchrun then stopped rank(s) {', '.join(str(f['rank']) for f in others)}"
    return f"{module}: {message}"


def exit_with_parent(exit_now: Callable[[], None], poll_seconds: float = 0.5) -> None:
    """Call `exit_now` once the process that started this one is gone (this one is then orphaned).

    torchrun starts each rank in a session of its own, so a SIGKILL to the stage's process group
    would otherwise leave the ranks training, and writing, next to those of the resumed stage. The
    starter's pid comes in PARENT_ENV (it may die while this process is still importing torch);
    this process puts its own there for the processes it starts."""
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())
    os.environ[PARENT_ENV] = str(os.getpid())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        exit_now()

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _failure(rank: int, failure, logs: list[Path]) -> dict[str, Any]:
    """A ProcessFailure as JSON, with the exception message from the rank's error file (torch's @record)."""
    error = failure.message if Path(failure.error_file).is_file() else ""
    if isinstance(error, dict):
        error = error.get("message", "")
    stderr = next((p for p in logs if p.parent.name == str(failure.local_rank)), None)
    return {"rank": rank, "local_rank": failure.local_rank, "pid": failure.pid, "exitcode": failure.exitcode,
            "signal": failure.signal_name() if failure.exitcode < 0 else "", "timestamp": failure.timestamp,
            "error": error, "stderr": str(stderr) if stderr else ""}


def _agent(argv: Sequence[str]) -> int:
    """torchrun's elastic agent (`torch.distributed.run`'s parser and launcher), reporting failures as JSON."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    exit_with_parent(lambda: os.kill(os.getpid(), signal.SIGTERM))  # torchrun stops its ranks on SIGTERM
    args = parse_args(list(argv))
    config, entrypoint, entry_args = config_from_args(args)
    try:
        elastic_launch(config, entrypoint)(*entry_args)
    except ChildFailedError as exc:
        logs = sorted(Path(args.log_dir).glob(f"{args.rdzv_id}_*/attempt_*/*/stderr.log")) if args.log_dir else []
        report = [_failure(rank, failure, logs) for rank, failure in exc.failures.items()]
        Path(os.environ[FAILURES_ENV]).write_text(json.dumps(report, indent=2))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_agent(sys.argv[1:]))
