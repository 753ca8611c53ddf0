"""Training throughput and peak memory of one policy update: full fine-tuning vs LoRA.

    .venv/bin/python bench/bench_train.py [--model smollm2-135m-instruct] [--samples 8] ...

Each variant runs in its own process (so peak memory is its own), through the same code the train
stage uses (`load_policy`, `rl.build_optimizer`, `rl.train_step`), on a synthetic batch whose
recorded log-probs are the model's own. Full fine-tuning is the baseline; LoRA is reported against
it as a ratio. Peak memory is the process's peak RSS during the update on CPU (weights, optimizer
state, activations), or the CUDA allocator's peak on a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

VARIANTS = {
    "full": {},
    "lora": {"lora": {"enabled": True}},
    "full+gc": {"gradient_checkpointing": True},
}


def run_variant(args: argparse.Namespace) -> dict:
    import torch

    from azr import rl
    from azr.checkpoint import load_policy
    from azr.config import ModelConfig, TrainingConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    model_config = ModelConfig(name_or_path=args.model, **VARIANTS[args.variant])
    model, _ = load_policy(model_config, trainable=True)
    if model_config.gradient_checkpointing:
        rl.enable_gradient_checkpointing(model)
    cfg = TrainingConfig(micro_batch_size=args.micro_batch_size)
    optimizer, scheduler = rl.build_optimizer(model, cfg)

    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    samples = []
    for i in range(args.samples):
        ids = torch.randint(0, vocab, (args.prompt_tokens + args.response_tokens,), generator=generator).tolist()
        draft = rl.Sample(ids[:args.prompt_tokens], ids[args.prompt_tokens:], [0.0] * args.response_tokens, 0.0)
        with torch.no_grad():
            recorded = rl.response_logprobs(model, rl.collate([draft]))[0][0].tolist()
        samples.append(rl.Sample(draft.prompt_ids, draft.response_ids, recorded, 1.0 if i % 2 else -1.0))

    rl.train_step(model, optimizer, scheduler, samples, cfg)  # warm-up: allocations, optimizer state
    rl.reset_peak_memory()
    start = time.perf_counter()
    tokens = sum(rl.train_step(model, optimizer, scheduler, samples, cfg)["tokens"] for _ in range(args.steps))
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"variant": args.variant, "tokens_per_second": tokens / seconds, "seconds_per_step": seconds / args.steps,
            "peak_memory_mb": rl.peak_memory_mb(), "trainable_parameters": trainable,
            "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--samples", type=int, default=8, help="Samples in the batch.")
    parser.add_argument("--prompt-tokens", type=int, default=192)
    parser.add_argument("--response-tokens", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="Timed updates after one warm-up update.")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default). On a busy machine 1 thread avoids OpenMP oversubscription.")
    parser.add_argument("--variants", default="full,lora,full+gc", help="Comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    passthrough = ["--model", args.model, "--samples", str(args.samples), "--prompt-tokens", str(args.prompt_tokens),
                   "--response-tokens", str(args.response_tokens), "--micro-batch-size", str(args.micro_batch_size),
                   "--steps", str(args.steps), "--threads", str(args.threads)]
    results = {}
    for variant in args.variants.split(","):
        out = subprocess.run([sys.executable, __file__, *passthrough, "--variant", variant],
                             check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    print(f"model {args.model}, batch {args.samples} x ({args.prompt_tokens} prompt + {args.response_tokens} "
          f"response tokens), micro-batch {args.micro_batch_size}, {args.steps} timed steps, "
          f"{results[next(iter(results))]['device']}")
    print(f"{'variant':<10}{'tokens/s':>10}{'s/step':>9}{'peak MiB':>10}{'trainable':>13}")
    for r in results.values():
        print(f"{r['variant']:<10}{r['tokens_per_second']:>10.1f}{r['seconds_per_step']:>9.2f}"
              f"{r['peak_memory_mb']:>10.0f}{r['trainable_parameters']:>13,}")
    base = results.get("full")
    for name, r in results.items():
        if base and name != "full":
            print(f"{name}/full: tokens/s x{r['tokens_per_second'] / base['tokens_per_second']:.2f}, "
                  f"peak memory x{r['peak_memory_mb'] / base['peak_memory_mb']:.2f}")


if __name__ == "__main__":
    main()
