"""Training throughput, FLOP utilisation and peak memory of one policy update: fp32 vs bf16-mixed,
full fine-tuning vs LoRA.

    .venv/bin/python bench/bench_train.py [--model smollm2-135m-instruct] [--samples 8] ...
    .venv/bin/python bench/bench_train.py --variants full,full+bf16      # the precision comparison

Each variant runs in its own process (so peak memory is its own), through the same code the train
stage uses (`load_policy`, `rl.build_optimizer`, `rl.train_step`), on a synthetic batch whose
recorded log-probs are the model's own. Full fine-tuning in fp32 is the baseline; the others are
reported against it as ratios. Peak memory is the process's peak RSS during the update on CPU
(weights, optimizer state, activations), or the CUDA allocator's peak on a GPU.

FLOP/s. The work of one update is counted as matmul FLOPs, forward and backward (x3 the forward):
2 x (decoder-layer parameters) per token of prompt and response, 2 x vocab x hidden per response
token (the LM head runs on those only), and attention's 4 x layers x hidden x (causal context) per
token. Achieved FLOP/s divided by the peak is the utilisation. The peak is *measured* in the same
process: the best rate of torch.matmul on large square matrices in the variant's compute dtype
(float32, or bfloat16 under bf16-mixed). It is the rate the hardware gives a GEMM, not a datasheet
figure (a virtual CPU's clock and vector units are not reliably known); on a GPU the datasheet
dense peak is printed beside it when the device is one the script knows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

# name: (ModelConfig settings, TrainingConfig settings)
VARIANTS = {
    "full": ({}, {"precision": "fp32"}),
    "full+bf16": ({}, {"precision": "bf16-mixed"}),
    "lora": ({"lora": {"enabled": True}}, {"precision": "fp32"}),
    "full+gc": ({"gradient_checkpointing": True}, {"precision": "fp32"}),
}
DATASHEET_PEAK = {  # dense TFLOP/s (no sparsity) by CUDA device name fragment: (float32, bfloat16)
    "H200": (67.0, 989.0), "H100": (67.0, 989.0), "A100": (19.5, 312.0), "L40S": (91.6, 362.0),
}


def measured_peak(dtype, device: str, size: int) -> float:
    """The best FLOP/s of a size x size matmul in `dtype` on `device` over a few repetitions."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def update_flops(model, samples) -> float:
    """Matmul FLOPs of one update (forward and backward) over `samples`; see the module docstring."""
    config = model.config
    layers, hidden, vocab = config.num_hidden_layers, config.hidden_size, config.vocab_size
    body = sum(p.numel() for name, p in model.named_parameters() if ".layers." in name)
    forward = 0.0
    for s in samples:
        total = len(s.prompt_ids) + len(s.response_ids)
        forward += 2 * body * total + 2 * vocab * hidden * (len(s.response_ids) + 1)
        forward += 4 * layers * hidden * total * (total + 1) / 2  # QK^T and AV over the causal context
    return 3 * forward


def run_variant(args: argparse.Namespace) -> dict:
    import torch

    from azr import rl
    from azr.config import ModelConfig, TrainingConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    model_settings, training_settings = VARIANTS[args.variant]
    model_config = ModelConfig(name_or_path=args.model, **model_settings)
    if args.random_init:  # the model's shape with random weights (bench/gpu.sh: nothing can be downloaded there)
        from transformers import AutoConfig, AutoModelForCausalLM

        from azr.model import prepare_model

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(prepare_model(args.model)), dtype=torch.float32)
    else:
        from azr.checkpoint import load_policy  # peft: only for checkpoints and LoRA

        model, _ = load_policy(model_config, trainable=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    if model_config.gradient_checkpointing:
        rl.enable_gradient_checkpointing(model)
    cfg = TrainingConfig(micro_batch_size=args.micro_batch_size, **training_settings)
    optimizer, scheduler = rl.build_optimizer(model, cfg)

    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    samples = []
    for i in range(args.samples):
        ids = torch.randint(0, vocab, (args.prompt_tokens + args.response_tokens,), generator=generator).tolist()
        draft = rl.Sample(ids[:args.prompt_tokens], ids[args.prompt_tokens:], [0.0] * args.response_tokens, 0.0)
        with torch.no_grad():
            batch = {k: v.to(device) for k, v in rl.collate([draft]).items()}
            recorded = rl.response_logprobs(model, batch)[0][0].tolist()
        samples.append(rl.Sample(draft.prompt_ids, draft.response_ids, recorded, 1.0 if i % 2 else -1.0))

    rl.train_step(model, optimizer, scheduler, samples, cfg)  # warm-up: allocations, optimizer state
    rl.reset_peak_memory()
    start = time.perf_counter()
    tokens = sum(rl.train_step(model, optimizer, scheduler, samples, cfg)["tokens"] for _ in range(args.steps))
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops_per_second = update_flops(model, samples) * args.steps / seconds
    bf16 = rl.training_precision(cfg) == "bf16-mixed"
    peak = measured_peak(torch.bfloat16 if bf16 else torch.float32, device, args.peak_size)
    datasheet = next((v[bf16] * 1e12 for k, v in DATASHEET_PEAK.items()
                      if device == "cuda" and k in torch.cuda.get_device_name()), None)
    return {"variant": args.variant, "tokens_per_second": tokens / seconds, "seconds_per_step": seconds / args.steps,
            "peak_memory_mb": rl.peak_memory_mb(), "trainable_parameters": trainable,
            "flops_per_second": flops_per_second, "measured_peak": peak, "datasheet_peak": datasheet,
            "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"}


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
    parser.add_argument("--variants", default="full,full+bf16,lora,full+gc", help="Comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--random-init", action="store_true", help="random weights of the model's shape")
    parser.add_argument("--peak-size", type=int, default=2048, help="matrix size of the peak-FLOP/s matmul")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    passthrough = ["--model", args.model, "--samples", str(args.samples), "--prompt-tokens", str(args.prompt_tokens),
                   "--response-tokens", str(args.response_tokens), "--micro-batch-size", str(args.micro_batch_size),
                   "--steps", str(args.steps), "--threads", str(args.threads), "--peak-size", str(args.peak_size)]
    passthrough += ["--random-init"] if args.random_init else []
    results = {}
    for variant in args.variants.split(","):
        out = subprocess.run([sys.executable, __file__, *passthrough, "--variant", variant],
                             check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    print(f"model {args.model}, batch {args.samples} x ({args.prompt_tokens} prompt + {args.response_tokens} "
          f"response tokens), micro-batch {args.micro_batch_size}, {args.steps} timed steps, "
          f"{results[next(iter(results))]['device']}")
    print(f"{'variant':<10}{'tokens/s':>10}{'s/step':>9}{'peak MiB':>10}{'trainable':>13}{'TFLOP/s':>9}"
          f"{'GEMM peak':>11}{'util':>7}{'datasheet util':>16}")
    for r in results.values():
        datasheet = f"{r['flops_per_second'] / r['datasheet_peak']:.1%}" if r["datasheet_peak"] else "-"
        print(f"{r['variant']:<10}{r['tokens_per_second']:>10.1f}{r['seconds_per_step']:>9.2f}"
              f"{r['peak_memory_mb']:>10.0f}{r['trainable_parameters']:>13,}{r['flops_per_second'] / 1e12:>9.3f}"
              f"{r['measured_peak'] / 1e12:>11.3f}{r['flops_per_second'] / r['measured_peak']:>7.1%}{datasheet:>16}")
    base = results.get("full")
    for name, r in results.items():
        if base and name != "full":
            print(f"{name}/full: tokens/s x{r['tokens_per_second'] / base['tokens_per_second']:.2f}, "
                  f"peak memory x{r['peak_memory_mb'] / base['peak_memory_mb']:.2f}")


if __name__ == "__main__":
    main()
