"""Generation throughput: batched (one generate call over the whole batch) vs one prompt at a time.

Same model, same prompts, same settings, same process; the headline is the ratio of tokens/s.
Greedy decoding by default, so both runs produce the same tokens and the comparison is like for like.

    .venv/bin/python bench/bench_generation.py                    # SmolLM2-135M-Instruct, batch 16, float32
    .venv/bin/python bench/bench_generation.py --dtype bfloat16   # what the quickstart generates in (generation_dtype: auto)
    .venv/bin/python bench/bench_generation.py --model tiny-random --max-new-tokens 32

In bfloat16 a batch and a single prompt round differently, so greedy outputs may part ways.
"""

from __future__ import annotations

import argparse
import time

import torch

from azr import prompts
from azr.config import DEFAULT_BANNED_MODULES, ModelConfig, SamplingConfig
from azr.generation import Generation, generate
from azr.model import load_model

PROGRAMS = [
    ("def f(a, b):\n    return [x * b for x in a if x % 2 == 0]", "[1, 2, 3, 4], 3", "[6, 12]"),
    ("def f(s):\n    return {c: s.count(c) for c in sorted(set(s))}", "'abca'", "{'a': 2, 'b': 1, 'c': 1}"),
    ("def f(n):\n    return sum(int(d) for d in str(n))", "1234", "10"),
    ("def f(xs):\n    out = []\n    for x in xs:\n        if x not in out:\n            out.append(x)\n    return out", "[3, 1, 3, 2, 1]", "[3, 1, 2]"),
]


def bench_prompts(n: int) -> list[str]:
    """`n` user prompts cycling over the six roles, with varying references (so varying lengths)."""
    refs = [{"program": p, "input": i, "output": o} for p, i, o in PROGRAMS]
    roles = []
    for k in range(n):
        task_type = prompts.TASK_TYPES[k % 3]
        ref = refs[k % len(refs)]
        if k % 2 == 0:
            chosen = [ref] if task_type == "induction" else refs[: 1 + k % len(refs)]
            roles.append(prompts.proposer_prompt(task_type, chosen, DEFAULT_BANNED_MODULES, 10))
        elif task_type == "induction":
            roles.append(prompts.solver_prompt(task_type, {"inputs": [ref["input"]], "outputs": [ref["output"]], "message": "Try it."}))
        else:
            roles.append(prompts.solver_prompt(task_type, ref))
    return roles


def timed(model, tokenizer, rendered: list[str], sampling: SamplingConfig) -> tuple[list[Generation], float]:
    start = time.perf_counter()
    gens = generate(model, tokenizer, rendered, sampling, seed=0)
    return gens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=16, help="prompts, all in one batch")
    # Long enough that decoding dominates, as in a run (max_new_tokens 512): the padded prefill of a
    # short generation is compute-bound either way, and batching only speeds up decoding.
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model.dtype")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model(ModelConfig(name_or_path=args.model, dtype=args.dtype))
    rendered = [prompts.render_chat(tokenizer, p) for p in bench_prompts(args.batch)]
    settings = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
    batched_cfg = SamplingConfig(batch_size=args.batch, **settings)
    single_cfg = SamplingConfig(batch_size=1, **settings)
    generate(model, tokenizer, rendered[:2], SamplingConfig(batch_size=2, temperature=0.0, max_new_tokens=4), seed=0)  # warm-up

    batched, batched_s = timed(model, tokenizer, rendered, batched_cfg)
    single, single_s = timed(model, tokenizer, rendered, single_cfg)
    batched_tokens = sum(len(g.response_ids) for g in batched)
    single_tokens = sum(len(g.response_ids) for g in single)
    prompt_lengths = [len(g.prompt_ids) for g in batched]

    print(f"model {args.model}, {args.batch} prompts ({min(prompt_lengths)}-{max(prompt_lengths)} prompt tokens), "
          f"max_new_tokens {args.max_new_tokens}, {args.dtype}, temperature {args.temperature}, torch threads {torch.get_num_threads()}")
    print(f"one at a time : {single_tokens:6d} tokens in {single_s:7.2f} s = {single_tokens / single_s:8.1f} tokens/s")
    print(f"batch of {args.batch:<5d}: {batched_tokens:6d} tokens in {batched_s:7.2f} s = {batched_tokens / batched_s:8.1f} tokens/s")
    if args.temperature == 0:
        same = sum(a.response_ids == b.response_ids for a, b in zip(batched, single))
        print(f"identical greedy outputs: {same}/{args.batch}")
    print(f"speed-up (batched / one at a time, tokens/s): {(batched_tokens / batched_s) / (single_tokens / single_s):.2f}x")


if __name__ == "__main__":
    main()
