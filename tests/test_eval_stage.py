"""The evaluate stage a training run calls, and `azr compare` over two runs' MLflow metrics (issue 8)."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from azr.artifacts import RunDir, read_manifest, read_table
from azr.checkpoint import load_policy, meta_path, save_checkpoint
from cli.main import app
from azr.config import load_config
from azr.tracking import RUN_ID_FILE, start_run
from azr.pipeline import EVALUATE
from stages.evaluate import evaluate_iteration, iteration_eval_metrics, should_evaluate
from tests.conftest import SMOKE_CONFIG

TYPES = ("abduction", "deduction", "induction")


def eval_config(tmp_path, *overrides):
    return load_config(SMOKE_CONFIG, [f"orchestration.runs_dir={tmp_path}", "eval.every=2", "eval.limit=3",
                                      "eval.max_new_tokens=16", *overrides])


def test_should_evaluate_before_the_first_iteration_every_n_and_at_the_end(tmp_path):
    config = eval_config(tmp_path, "num_iterations=5")
    assert [i for i in range(6) if should_evaluate(config, i)] == [0, 2, 4, 5]
    assert not any(should_evaluate(eval_config(tmp_path, "eval.every=0"), i) for i in range(6))


def _save_perturbed_checkpoint(config, run: RunDir, iteration: int):
    """A real checkpoint of the run whose weights differ from the base model's."""
    model, tokenizer = load_policy(config.model, trainable=True)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return save_checkpoint(run.checkpoint_dir(iteration), model, tokenizer, optimizer, scheduler, {},
                           iteration=iteration, model_config=config.model)


def test_evaluate_iteration_uses_the_weights_after_that_iteration(tmp_path):
    config = eval_config(tmp_path)
    run = RunDir(tmp_path / "run")
    base = evaluate_iteration(config, run, 0)
    assert base == EVALUATE.output(run, 0)
    frame = read_table(base)
    assert len(frame) == 9 and set(frame["task_type"]) == set(TYPES) and set(frame["set"]) == {"heldout"}
    assert set(frame["run"]) == {"run"} and set(frame["iteration"]) == {0}
    metrics = iteration_eval_metrics(config, run, 0)
    assert {f"eval/heldout/{t}/pass_at_1" for t in TYPES} <= set(metrics)
    assert metrics["eval/heldout/deduction/pass_at_1"] == frame[frame["task_type"] == "deduction"]["correct"].mean()

    written = read_manifest(base)["written_at"], base.stat().st_mtime_ns
    assert evaluate_iteration(config, run, 0) == base
    assert (read_manifest(base)["written_at"], base.stat().st_mtime_ns) == written, "a finished eval is not redone"

    checkpoint = _save_perturbed_checkpoint(config, run, 2)
    after = evaluate_iteration(config, run, 2)
    assert meta_path(checkpoint).name in read_manifest(after)["inputs"]
    assert "checkpoint.json" not in read_manifest(base)["inputs"]
    responses = read_table(after)["response"].tolist()
    assert responses != frame["response"].tolist(), "iteration 2 must answer with the updated weights"


def test_compare_prints_final_and_best_of_two_runs(tmp_path):
    from mlflow import MlflowClient

    from azr.tracking import tracking_uri

    config = eval_config(tmp_path)
    client = MlflowClient(tracking_uri=tracking_uri(config, tmp_path))
    curves = {"a": [0.10, 0.40, 0.30], "b": [0.10, 0.20, 0.50]}
    for name, values in curves.items():
        run = RunDir(tmp_path / name)
        run.root.mkdir()
        run_id = start_run(config, run)
        assert (run.root / RUN_ID_FILE).read_text().strip() == run_id
        for step, value in enumerate(values):
            client.log_metric(run_id, "eval/heldout/deduction/pass_at_1", value, step=step * 2)
            client.log_metric(run_id, "train/loss", 1.0 - value, step=step * 2)
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "eval/heldout/deduction/pass_at_1" in line)
    assert row.split() == [
        "eval/heldout/deduction/pass_at_1", "0.3", "0.4", "0.5", "0.5", "0.2"]
    assert "train/loss" not in result.output
    losses = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--prefix", "train/"])
    row = next(line for line in losses.output.splitlines() if "train/loss" in line)
    assert row.split()[1:] == ["0.7", "0.6", "0.5", "0.5", "-0.2"]


def test_compare_names_a_directory_without_an_mlflow_run(tmp_path):
    (tmp_path / "x").mkdir()
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "x"), str(tmp_path / "x")])
    assert result.exit_code == 2 and f"{tmp_path / 'x'}: no {RUN_ID_FILE} file" in " ".join(result.output.split())


def test_azr_eval_on_a_run_directory_loads_the_checkpoint_of_that_iteration(tmp_path):
    from azr.config import dump_config

    config = eval_config(tmp_path)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.config_path.write_text(dump_config(config))
    checkpoint = _save_perturbed_checkpoint(config, run, 1)
    for iteration, loaded in ((None, str(checkpoint)), ("1", str(checkpoint)), ("0", "base model tiny-random")):
        out = tmp_path / f"eval-{iteration}.parquet"
        args = ["eval", "--model", str(run.root), "--mode", "abduction", "--limit", "2", "--out", str(out)]
        result = CliRunner().invoke(app, args + (["--iteration", iteration] if iteration else []))
        assert result.exit_code == 0, result.output
        assert "".join(f"model: {loaded}".split()) in "".join(result.output.split())  # rich wraps long paths
        frame = read_table(out)
        assert set(frame["run"]) == {"run"} and set(frame["iteration"]) == {int(iteration or 1)}
