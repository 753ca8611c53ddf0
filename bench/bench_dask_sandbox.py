"""Sandbox throughput through Dask with one and two workers, against the local backend, in one run.

    .venv/bin/python bench/bench_dask_sandbox.py [--worker-backend docker] [--containers 2] [--repeats 3]

Figures: validations/s of the 800 CRUXEval programs (`Sandbox.validate`) and checks/s of
CodeLlama's 8,000 output-prediction answers (`Sandbox.check_deduction`), each the median of
`--repeats` passes over a warm pool, for:
- the local backend (`--worker-backend`, a pool of `--containers` workers in this process);
- `executor.backend: dask` on a LocalCluster started by azr (loopback, TLS, worker processes
  under nannies) with 1 and with 2 Dask workers, the same `--containers` in all, split between them.
Ratios are against the local backend measured in the same run. On a 2-core machine the Dask
figures show the overhead (task round trips, pickling, TLS, one chunk at a time per worker), not a
speed-up: the workers share the cores the local pool has to itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sandbox import load  # noqa: E402

from azr.config import ExecutorConfig  # noqa: E402
from azr.sandbox import open_sandbox  # noqa: E402


def rates(config: ExecutorConfig, problems: list[dict], checks: list[tuple[str, str]], repeats: int) -> dict:
    started = time.perf_counter()
    with open_sandbox(config) as sandbox:
        startup = time.perf_counter() - started
        items = [(p["code"], [p["input"]]) for p in problems]
        sandbox.validate(items[:100])  # warm-up
        validate, check = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            results = sandbox.validate(items)
            validate.append(len(items) / (time.perf_counter() - t))
            assert all(r.status == "ok" for r in results), [r for r in results if r.status != "ok"][:3]
            t = time.perf_counter()
            sandbox.check_deduction(checks)
            check.append(len(checks) / (time.perf_counter() - t))
    return {"startup_s": startup, "validations_per_s": statistics.median(validate), "checks_per_s": statistics.median(check)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker-backend", default="docker", choices=["docker", "process"])
    parser.add_argument("--containers", type=int, default=os.cpu_count() or 1, help="sandbox workers in all, each config")
    parser.add_argument("--worker-slots", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=ExecutorConfig().dask_chunk_size)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    problems, checks = load()
    limits = {"worker_slots": args.worker_slots, "dask_chunk_size": args.chunk_size}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {len(problems)} programs, {len(checks)} answer checks; "
          f"{args.containers} {args.worker_backend} workers in each configuration")
    configs = {f"local {args.worker_backend}": ExecutorConfig(backend=args.worker_backend, pool_size=args.containers, **limits)}
    for workers in (1, 2):
        configs[f"dask, {workers} worker{'s' * (workers > 1)}"] = ExecutorConfig(
            backend="dask", dask_worker_backend=args.worker_backend, dask_local_workers=workers,
            pool_size=max(1, args.containers // workers), **limits,
        )
    baseline = None
    for name, config in configs.items():
        figures = rates(config, problems, checks, args.repeats)
        baseline = baseline or figures
        print(
            f"{name:>16}: {figures['validations_per_s']:8.1f} validations/s (x{figures['validations_per_s'] / baseline['validations_per_s']:.2f})  "
            f"{figures['checks_per_s']:8.1f} checks/s (x{figures['checks_per_s'] / baseline['checks_per_s']:.2f})  "
            f"start {figures['startup_s']:.1f} s"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
