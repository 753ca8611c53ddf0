"""What a sandbox container killed mid-batch costs: the 800 CRUXEval programs x 5 (4,000 validations).

    .venv/bin/python bench/bench_faults.py [--copies 5] [--repeats 3] [--kill-at 0.33] [--pool-size N]

Each repeat validates the 4,000 items twice on one warm docker pool: undisturbed (the baseline, in
the same run), then with one container killed (`docker kill`) a `--kill-at` fraction into the
undisturbed time. Prints both times, the extra seconds, the ratio, and how many verdicts (status and
outputs) equal the undisturbed run's, which must be all of them. Figures are medians over repeats.
CRUXEval is read from ../shared/data/cruxeval beside the repository, or AZR_CRUXEVAL_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("AZR_CRUXEVAL_DIR") or ROOT.parent / "shared" / "data" / "cruxeval")

from azr.config import ExecutorConfig  # noqa: E402
from azr.sandbox import open_sandbox  # noqa: E402


def timed_validate(sandbox, items: list, fault: threading.Timer | None = None) -> tuple[float, list]:
    started = time.perf_counter()
    if fault is not None:
        fault.start()
    results = sandbox.validate(items)
    seconds = time.perf_counter() - started
    if fault is not None:
        fault.join()
    return seconds, [(r.status, r.outputs) for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=5, help="times each CRUXEval program is validated per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kill-at", type=float, default=0.33, help="when to kill, as a fraction of the undisturbed time")
    parser.add_argument("--pool-size", type=int, default=None, help="containers; default: CPU count")
    args = parser.parse_args()
    problems = [json.loads(line) for line in (DATA / "cruxeval.jsonl").read_text().splitlines() if line.strip()]
    items = [(p["code"], [p["input"]]) for p in problems] * args.copies
    undisturbed, disturbed, equal = [], [], []
    with open_sandbox(ExecutorConfig(backend="docker", pool_size=args.pool_size)) as sandbox:
        sandbox.validate(items[:200])  # warm-up
        for _ in range(args.repeats):
            base_seconds, base = timed_validate(sandbox, items)
            victim = sandbox._slots[0].worker
            fault = threading.Timer(base_seconds * args.kill_at, lambda: victim.client.api.kill(victim.container))
            replaced = sandbox.replaced
            seconds, got = timed_validate(sandbox, items, fault)
            assert sandbox.replaced == replaced + 1, "the kill landed after the batch: raise --copies or lower --kill-at"
            undisturbed.append(base_seconds)
            disturbed.append(seconds)
            equal.append(sum(a == b for a, b in zip(base, got)))
    base, hit = statistics.median(undisturbed), statistics.median(disturbed)
    print(f"validations per batch        {len(items)}  (pool of {sandbox.config.pool_size or os.cpu_count()} containers)")
    print(f"undisturbed                  {base:.2f} s  (median of {args.repeats})")
    print(f"one container killed         {hit:.2f} s")
    print(f"extra                        {hit - base:+.2f} s  (x{hit / base:.2f} the undisturbed time)")
    print(f"verdicts equal (each repeat) {', '.join(f'{n}/{len(items)}' for n in equal)}")


if __name__ == "__main__":
    main()
