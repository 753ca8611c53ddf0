"""Evaluate: the policy after an iteration on the held-out sets, written to ``eval/iter-NNNN.parquet``.

The training flow calls, after iteration N's update (and with N = 0 before the first one):

    if should_evaluate(config, N):
        evaluate_iteration(config, run_dir, N)
        metrics = iteration_eval_metrics(config, run_dir, N)   # log with step = N
"""

from __future__ import annotations

from pathlib import Path

from azr.artifacts import RunDir, read_table
from azr.checkpoint import latest_checkpoint, load_policy, meta_path
from azr.config import AZRConfig
from azr.evaluation import benchmark_path, benchmark_task_types, eval_metrics, run_evaluation
from azr.pipeline import EVALUATE, run_stage


def should_evaluate(config: AZRConfig, iteration: int) -> bool:
    """True at iteration 0 (the base model), every `eval.every` iterations, and at the last one."""
    every = config.eval.every
    return every > 0 and (iteration % every == 0 or iteration == config.num_iterations)


def _benchmark_inputs(config: AZRConfig) -> list[Path]:
    paths = []
    for set_name in config.eval.sets:
        served = benchmark_task_types(set_name)
        paths += [benchmark_path(set_name, t) for t in config.eval.task_types if t in served]
    return list(dict.fromkeys(paths))


def evaluate_iteration(config: AZRConfig, run_dir: RunDir, iteration: int) -> Path:
    """Write ``eval/iter-NNNN.parquet``: the weights after `iteration`'s update (0 = the base model)
    answering every configured held-out set; returns at once when it is already written for them."""
    checkpoint = latest_checkpoint(run_dir, before_iteration=iteration + 1)
    inputs = ([meta_path(checkpoint)] if checkpoint else []) + _benchmark_inputs(config)

    def build():
        model, tokenizer = load_policy(config.model, checkpoint)
        return run_evaluation(model, tokenizer, config, run=run_dir.name, iteration=iteration)

    return run_stage(EVALUATE, config, run_dir, iteration, inputs, build)


def iteration_eval_metrics(config: AZRConfig, run_dir: RunDir, iteration: int) -> dict[str, float]:
    """`{"eval/<set>/<type>/pass_at_1": value, ...}` of an evaluated iteration, for MLflow (step = iteration)."""
    return eval_metrics(read_table(EVALUATE.output(run_dir, iteration)), config.eval.pass_k)
