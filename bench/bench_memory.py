"""Training throughput and peak memory of one policy update: the log-prob computation before and after
chunking, activation checkpointing, and LoRA.

    .venv/bin/python bench/bench_memory.py                       # synthetic samples shaped like the quickstart's
    .venv/bin/python bench/bench_memory.py --rewards runs/quickstart/iter-0001/rewards.parquet   # a real iteration

Each variant runs in its own process (so peak memory is its own), through the same code the train
stage uses (`load_policy`, `rl.build_optimizer`, `rl.train_step`). The batch is a real iteration's
samples (`--rewards`) or synthetic ones with the quickstart's shape: `--proposals` samples with their
own prompt, and `--tasks` prompts each answered `--rollouts` times (solver rollouts share a prompt and
go through the model as one packed row). As in the quickstart (generation in another dtype), the PPO
old log-probs are the update's own. The AdamW state is allocated before the timed steps, so the peak
includes it. Peak memory is the process's peak RSS during the timed steps on CPU (weights, gradients,
optimizer state, activations), or the CUDA allocator's peak on a GPU.

    .venv/bin/python bench/bench_memory.py --growth 6          # memory left after each of 6 updates, new shapes each

`--growth N` runs N updates in one process, each on samples of new lengths (as a run's iterations
are), with a fresh model each time (as each train stage loads its own), and prints the resident memory
left after each (freed memory returned to the system first): with oneDNN's default cache sizes (1,024,
the baseline) and with the caps `import azr` sets.

Variants:
    full-vocab  full fine-tuning with the log-probs as computed before: the model's logits at every
                response position and a full-vocabulary log_softmax over them (the baseline)
    full        full fine-tuning: log-probs from the final hidden states, a chunk of positions at a time
    full+gc     full, with activation checkpointing (what configs/quickstart.yaml runs)
    lora        LoRA adapters only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    "full-vocab": {},
    "full": {},
    "full+gc": {"gradient_checkpointing": True},
    "lora": {"lora": {"enabled": True}},
}


def full_vocabulary_logprobs(model, batch, temperature: float = 1.0):
    """The log-prob computation before chunking, for the baseline: the logits of every response
    position, then log_softmax over the whole vocabulary (kept for the backward pass, with its exp)."""
    import torch.nn.functional as F

    if "positions" in batch:  # a packed row of rollouts sharing one prompt
        n, resp_len = batch["positions"].shape
        keep, targets = batch["positions"].flatten(), batch["response_ids"]
    else:
        resp_len = batch["response_mask"].shape[1]
        keep, targets = resp_len + 1, batch["input_ids"][:, -resp_len:]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=keep).logits.float()
    logits = logits.view(n, resp_len, -1) if "positions" in batch else logits[:, :-1]
    log_probs = F.log_softmax(logits / temperature, dim=-1)
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(log_probs.exp() * log_probs).sum(-1)


def make_samples(args: argparse.Namespace, vocab: int) -> list:
    import torch

    from azr import rl
    from azr.artifacts import read_table

    if args.rewards:
        return rl.samples_from_frame(read_table(args.rewards), source=args.rewards)
    generator = torch.Generator().manual_seed(0)

    def tokens(count: int) -> list[int]:
        return torch.randint(0, vocab, (count,), generator=generator).tolist()

    samples = [rl.Sample(tokens(args.proposal_prompt), tokens(args.proposal_response), [0.0] * args.proposal_response,
                         1.0 if i % 2 else -1.0, role="propose") for i in range(args.proposals)]
    for _ in range(args.tasks):
        prompt = tokens(args.solver_prompt)
        samples += [rl.Sample(prompt, tokens(args.solver_response), [0.0] * args.solver_response,
                              1.0 if j % 2 else -1.0, role="solve") for j in range(args.rollouts)]
    return samples


def run_variant(args: argparse.Namespace) -> dict:
    import torch

    from azr import rl
    from azr.checkpoint import load_policy
    from azr.config import ModelConfig, TrainingConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant == "full-vocab":
        rl.response_logprobs = full_vocabulary_logprobs
    model_config = ModelConfig(name_or_path=args.model, **VARIANTS[args.variant])
    model, _ = load_policy(model_config, trainable=True)
    if model_config.gradient_checkpointing:
        rl.enable_gradient_checkpointing(model)
    cfg = TrainingConfig(micro_batch_size=args.micro_batch_size)
    optimizer, scheduler = rl.build_optimizer(model, cfg)
    samples = make_samples(args, model.get_input_embeddings().num_embeddings)

    for p in model.parameters():  # allocate the AdamW state: one step on zero gradients leaves the weights as they are
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    rl.reset_peak_memory()
    start = time.perf_counter()
    metrics = [rl.train_step(model, optimizer, scheduler, samples, cfg, use_recorded_logprobs=False)
               for _ in range(args.steps)]
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"variant": args.variant, "tokens_per_second": sum(m["tokens"] for m in metrics) / seconds,
            "seconds_per_step": seconds / args.steps, "peak_memory_mb": rl.peak_memory_mb(),
            "trainable_parameters": trainable, "loss": metrics[0]["loss"], "samples": len(samples),
            "tokens": sum(len(s.prompt_ids) + len(s.response_ids) for s in samples),
            "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"}


def run_growth(args: argparse.Namespace) -> dict:
    """`args.growth` updates on new shapes each; the resident MiB left after each (after malloc_trim)."""
    import ctypes
    import gc

    import psutil
    import torch

    from azr import rl
    from azr.checkpoint import load_policy
    from azr.config import ModelConfig, TrainingConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    libc, process, left = ctypes.CDLL("libc.so.6"), psutil.Process(), []
    cfg = TrainingConfig(micro_batch_size=args.micro_batch_size, precision="bf16-mixed")
    for update in range(args.growth):
        model, _ = load_policy(ModelConfig(name_or_path=args.model, gradient_checkpointing=True), trainable=True)
        rl.enable_gradient_checkpointing(model)
        optimizer, scheduler = rl.build_optimizer(model, cfg)
        shaped = argparse.Namespace(**{**vars(args), "proposal_prompt": args.proposal_prompt + 37 * update,
                                       "solver_prompt": args.solver_prompt + 23 * update})
        rl.train_step(model, optimizer, scheduler, make_samples(shaped, model.get_input_embeddings().num_embeddings),
                      cfg, use_recorded_logprobs=False)
        del model, optimizer, scheduler
        gc.collect()
        libc.malloc_trim(0)
        left.append(process.memory_info().rss / 2**20)
    return {"left_mb": left}


def growth(args: argparse.Namespace, passthrough: list[str]) -> None:
    results = {}
    for name, env in (("oneDNN default caches", {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "LRU_CACHE_CAPACITY": "1024"}),
                      ("azr's caps", {})):
        out = subprocess.run([sys.executable, __file__, *passthrough, "--variant", "growth"], check=True,
                             capture_output=True, text=True, env={**os.environ, **env}).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])["left_mb"]
    print(f"model {args.model}, {args.growth} updates (bf16-mixed, gradient checkpointing), new sequence lengths each; "
          "resident MiB left after each")
    for name, left in results.items():
        print(f"{name:<22}" + " ".join(f"{mb:7.0f}" for mb in left)
              + f"   growth after the first: {left[-1] - left[0]:+.0f} MiB")
    base, ours = (left[-1] - left[0] for left in results.values())
    print(f"growth, caps / default: x{ours / base:.2f}" if base > 0 else "no growth with the default caches")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rewards", help="A rewards.parquet whose samples make the batch (instead of synthetic ones).")
    parser.add_argument("--proposals", type=int, default=8, help="Synthetic: samples with a prompt of their own.")
    parser.add_argument("--proposal-prompt", type=int, default=600, help="Synthetic: tokens of a proposer prompt.")
    parser.add_argument("--proposal-response", type=int, default=250, help="Synthetic: tokens of a proposal.")
    parser.add_argument("--tasks", type=int, default=8, help="Synthetic: solver prompts.")
    parser.add_argument("--rollouts", type=int, default=4, help="Synthetic: answers per solver prompt.")
    parser.add_argument("--solver-prompt", type=int, default=300, help="Synthetic: tokens of a solver prompt.")
    parser.add_argument("--solver-response", type=int, default=60, help="Synthetic: tokens of an answer.")
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1, help="Timed updates.")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default). On a busy machine 1 thread avoids OpenMP oversubscription.")
    parser.add_argument("--variants", default="full-vocab,full,full+gc", help="Comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--growth", type=int, default=0,
                        help="Instead of the variants: memory left after each of this many updates on new shapes.")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_growth(args) if args.variant == "growth" else run_variant(args)))
        return

    passthrough = [item for key, value in vars(args).items() if key not in ("variants", "variant") and value is not None
                   for item in (f"--{key.replace('_', '-')}", str(value))]
    if args.growth:
        growth(args, passthrough)
        return
    results = {}
    for variant in args.variants.split(","):
        out = subprocess.run([sys.executable, __file__, *passthrough, "--variant", variant],
                             check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    first = results[next(iter(results))]
    source = args.rewards or "synthetic, quickstart-shaped"
    print(f"model {args.model}, {first['samples']} samples ({source}), {first['tokens']} tokens, "
          f"micro-batch {args.micro_batch_size}, {args.steps} timed step(s), {first['device']}")
    print(f"{'variant':<11}{'tokens/s':>10}{'s/step':>9}{'peak MiB':>10}{'trainable':>13}{'loss':>12}")
    for r in results.values():
        print(f"{r['variant']:<11}{r['tokens_per_second']:>10.1f}{r['seconds_per_step']:>9.2f}"
              f"{r['peak_memory_mb']:>10.0f}{r['trainable_parameters']:>13,}{r['loss']:>12.6f}")
    base = results.get("full-vocab")
    for name, r in results.items():
        if base and name != "full-vocab":
            print(f"{name}/full-vocab: tokens/s x{r['tokens_per_second'] / base['tokens_per_second']:.2f}, "
                  f"peak memory x{r['peak_memory_mb'] / base['peak_memory_mb']:.2f}")


if __name__ == "__main__":
    main()
