"""Buffer checks per proposal (duplicate / near duplicate) as the buffer grows, against the old rule.

    .venv/bin/python bench/bench_buffer.py [--sizes 100,1000,5000] [--proposals 800] [--baseline-proposals 20]

The buffer is CRUXEval's 800 programs on their inputs, cycled up to N tasks; copy k of a program has its
parameters renamed (`x` -> `x_k`), so every buffer task is distinct. A proposal is a CRUXEval program
with one parameter renamed on its own input (as in issue 18: the exact-duplicate rule does not answer
first), a text the fingerprint cache has not seen. Figures:
- `buffer N: X ms per proposal`: `TaskIndex.reason` for each proposal (fingerprint of the proposal, the
  hashed task key, the vocabulary bucket and its Jaccard comparisons), the index already built; the
  median of `--repeats` passes;
- building the index from the buffer (once per validate stage): cold (a fresh process) and warm (the
  fingerprints of the previous iteration's buffer cached);
- the baseline, measured in the same run: the rule this replaced (every buffer program re-parsed and
  compared with difflib for each proposal), on `--baseline-proposals` proposals.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "cruxeval"

from azr.dedup import TaskIndex, fingerprint  # noqa: E402
from azr.literals import arguments_key  # noqa: E402


def rename_parameters(program: str, suffix: str, only_first: bool = False) -> str:
    """The program with its parameters (or the first one) renamed by appending `suffix`."""
    function = next(node for node in ast.parse(program).body if isinstance(node, ast.FunctionDef))
    names = [a.arg for a in function.args.args][: 1 if only_first else None]
    for name in names:
        program = re.sub(rf"\b{re.escape(name)}\b", name + suffix, program)
    return program


def buffer_tasks(problems: list[dict], size: int) -> list[dict]:
    tasks = []
    for n in range(size):
        problem, copy = problems[n % len(problems)], n // len(problems)
        program = problem["code"] if copy == 0 else rename_parameters(problem["code"], f"_{copy}")
        tasks.append({"task_type": "deduction", "program": program, "input": problem["input"]})
    return tasks


def proposals(problems: list[dict], count: int) -> list[dict]:
    return [{"task_type": "deduction", "program": rename_parameters(p["code"], "_proposed", only_first=True), "input": p["input"]}
            for p in (problems * (count // len(problems) + 1))[:count]]


def per_proposal_ms(index: TaskIndex, queries: list[dict], repeats: int) -> tuple[float, int]:
    """Median over `repeats` passes; every pass sees texts the process has not fingerprinted or keyed yet."""
    times = []
    for _ in range(repeats):
        fingerprint.cache_clear()
        arguments_key.cache_clear()
        started = time.perf_counter()
        found = sum(index.reason(q) is not None for q in queries)
        times.append((time.perf_counter() - started) / len(queries) * 1000)
    return statistics.median(times), found


def build_seconds(tasks: list[dict]) -> tuple[float, float, TaskIndex]:
    fingerprint.cache_clear()
    arguments_key.cache_clear()
    started = time.perf_counter()
    TaskIndex(tasks)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    index = TaskIndex(tasks)
    return cold, time.perf_counter() - started, index


def baseline_ms(buffer_programs: list[str], queries: list[dict]) -> float:
    """The replaced rule: normalised program text compared with each buffer program, then difflib's ratio
    of AST node-type sequences against each, everything re-parsed for every proposal."""
    def shape(program: str) -> list[str]:
        return [type(node).__name__ for node in ast.walk(ast.parse(program))]

    started = time.perf_counter()
    for query in queries:
        key = ast.dump(ast.parse(query["program"]))
        if any(ast.dump(ast.parse(p)) == key for p in buffer_programs):
            continue
        mine = shape(query["program"])
        max((difflib.SequenceMatcher(None, mine, shape(p), autojunk=False).ratio() for p in buffer_programs), default=0.0)
    return (time.perf_counter() - started) / len(queries) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000", help="Buffer sizes, comma-separated.")
    parser.add_argument("--proposals", type=int, default=800, help="Proposals checked per buffer size.")
    parser.add_argument("--baseline-proposals", type=int, default=20, help="Proposals for the old rule (0: skip it).")
    parser.add_argument("--repeats", type=int, default=5, help="Passes over the proposals per size (the median counts).")
    args = parser.parse_args()
    problems = [json.loads(line) for line in (DATA / "cruxeval.jsonl").read_text().splitlines() if line.strip()]
    sizes = [int(s) for s in args.sizes.split(",")]
    queries = proposals(problems, args.proposals)
    figures = {}
    for size in sizes:
        tasks = buffer_tasks(problems, size)
        cold, warm, index = build_seconds(tasks)
        figures[size], found = per_proposal_ms(index, queries, args.repeats)
        line = f"buffer {size}: {figures[size]:.3f} ms per proposal"
        print(f"{line:<40} ({found}/{len(queries)} near duplicates found; index built in {cold:.2f} s cold, {warm:.3f} s warm)")
        if args.baseline_proposals:
            old = baseline_ms([t["program"] for t in tasks], queries[: args.baseline_proposals])
            print(f"  baseline (re-parse + difflib per proposal) buffer {size}: {old:.1f} ms per proposal, {old / figures[size]:.0f}x ours")
    if len(sizes) > 1:
        print(f"ratio {sizes[-1]}/{sizes[0]}: {figures[sizes[-1]] / figures[sizes[0]]:.2f}")


if __name__ == "__main__":
    main()
