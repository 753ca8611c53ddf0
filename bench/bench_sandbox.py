"""Sandbox throughput on CRUXEval, per backend, against a naive baseline measured in the same run.

    .venv/bin/python bench/bench_sandbox.py [--backends process,docker] [--repeats 3] [--naive 200]

Figures:
- validations/s: the 800 CRUXEval programs through `Sandbox.validate` (host AST checks, a fresh
  forked child per program, `determinism_runs` calls each, the repr round trip);
- checks/s: CodeLlama's 8,000 output-prediction generations through `Sandbox.check_deduction` under
  CRUXEval's rule (`expressions=True`: each answer evaluated in a forked child), the figure earlier
  versions of this script measured; literal checks/s: the same generations under azr's literal rule
  (what self-play and `azr eval` use: a non-literal is refused on the host, a literal is compared in the
  runner's server without a fork);
- the naive baseline: a fresh `python -c` subprocess per program doing the same work, one at a
  time, as the reference AZR executor runs them; and, as a stricter comparison, as many at once as
  there are CPUs. It runs on the first `--naive` items and is reported per second. (Issue #3's
  targets, 1,500 validations/s and 20x naive on 2 cores, agree only with the one-at-a-time
  baseline: 20x the parallel one would be about 2,000/s.)
Each sandbox figure is the median of `--repeats` passes over a warm pool.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "cruxeval"

from azr.config import ExecutorConfig  # noqa: E402
from azr.sandbox import open_sandbox  # noqa: E402


def load() -> tuple[list[dict], list[tuple[str, str]]]:
    problems = [json.loads(line) for line in (DATA / "cruxeval.jsonl").read_text().splitlines() if line.strip()]
    gold = {p["id"]: p["output"] for p in problems}
    generations = json.loads((DATA / "codellama-7b-temp0.2-output-scored.json").read_text())["raw_generations"]
    checks = [(gold[key], g) for key, gens in generations.items() for g in gens]
    return problems, checks


def naive_validation_code(program: str, text: str, runs: int) -> str:
    calls = "\n".join(f"r{i} = repr(f({text}))" for i in range(runs))
    same = " == ".join(f"r{i}" for i in range(runs)) if runs > 1 else "True"
    return f"{program}\n{calls}\nassert {same}\nassert eval(r0) == f({text})\nprint(r0)"


def naive_rate(codes: list[str], parallel: int) -> float:
    def one(code: str) -> int:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=10, env={"PYTHONHASHSEED": "0"}).returncode

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, codes))
    return len(codes) / (time.perf_counter() - started)


def sandbox_rates(backend: str, problems: list[dict], checks: list[tuple[str, str]], repeats: int, config: dict) -> dict:
    started = time.perf_counter()
    with open_sandbox(ExecutorConfig(backend=backend, **config)) as sandbox:
        startup = time.perf_counter() - started
        items = [(p["code"], [p["input"]]) for p in problems]
        sandbox.validate(items[:100])  # warm-up
        validate, check, literal = [], [], []
        for _ in range(repeats):
            t = time.perf_counter()
            results = sandbox.validate(items)
            validate.append(len(items) / (time.perf_counter() - t))
            assert all(r.status == "ok" for r in results), [r for r in results if r.status != "ok"][:3]
            t = time.perf_counter()
            sandbox.check_deduction(checks, expressions=True)
            check.append(len(checks) / (time.perf_counter() - t))
            t = time.perf_counter()
            sandbox.check_deduction(checks)
            literal.append(len(checks) / (time.perf_counter() - t))
    return {"startup_s": startup, "validations_per_s": statistics.median(validate), "checks_per_s": statistics.median(check),
            "literal_checks_per_s": statistics.median(literal)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="process,docker")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive", type=int, default=200, help="items the naive baseline runs")
    parser.add_argument("--pool-size", type=int, default=None)
    parser.add_argument("--worker-slots", type=int, default=4)
    args = parser.parse_args()
    problems, checks = load()
    config = {"pool_size": args.pool_size, "worker_slots": args.worker_slots}
    runs = ExecutorConfig().determinism_runs
    cpus = os.cpu_count() or 1
    print(f"{cpus} CPUs, load average {os.getloadavg()[0]:.1f}; {len(problems)} programs x {runs} determinism runs; {len(checks)} answer checks")

    validation_codes = [naive_validation_code(p["code"], p["input"], runs) for p in problems[: args.naive]]
    # Model output never runs outside the sandbox, so the naive check compares the gold with itself: same cost.
    check_codes = [f"assert {gold} == {gold}" for gold, _ in checks[: args.naive]]
    naive = {
        "validations_per_s": naive_rate(validation_codes, cpus),
        "validations_per_s_serial": naive_rate(validation_codes[: args.naive // 2], 1),
        "checks_per_s": naive_rate(check_codes, cpus),
    }
    print(f"naive python -c, {cpus} at once: {naive['validations_per_s']:8.1f} validations/s  {naive['checks_per_s']:8.1f} checks/s")
    print(f"naive python -c, one at a time: {naive['validations_per_s_serial']:8.1f} validations/s")
    for backend in args.backends.split(","):
        try:
            rates = sandbox_rates(backend, problems, checks, args.repeats, config)
        except Exception as exc:  # report the other backend anyway
            print(f"{backend:>8}: unavailable: {exc}")
            continue
        print(
            f"{backend:>8}: {rates['validations_per_s']:8.1f} validations/s "
            f"(x{rates['validations_per_s'] / naive['validations_per_s']:.1f} naive parallel, "
            f"x{rates['validations_per_s'] / naive['validations_per_s_serial']:.1f} naive serial)  "
            f"{rates['checks_per_s']:8.1f} checks/s (x{rates['checks_per_s'] / naive['checks_per_s']:.1f})  "
            f"{rates['literal_checks_per_s']:8.1f} literal checks/s  "
            f"pool start {rates['startup_s']:.1f} s"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
