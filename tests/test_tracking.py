"""MLflow tracking of a finished smoke run, read back with the MLflow client."""

from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient

from azr.artifacts import RunDir
from azr.config import AZRConfig, load_config
from azr.runs import iteration_metrics
from azr.tracking import flatten, tracking_uri, ui_command
from azr.pipeline import EVALUATE
from tests.conftest import ROOT


pytestmark = pytest.mark.slow  # runs azr end to end (tiny-random, Prefect, MLflow)

def test_flatten_gives_dotted_string_params():
    flat = flatten(AZRConfig().model_dump(mode="json"))
    assert flat["model.lora.r"] == "16"
    assert flat["num_iterations"] == "100"
    assert flat["tracking.mlflow_tracking_uri"] == "None"
    assert not any(isinstance(v, dict) for v in flat.values())


def test_default_store_is_sqlite_under_the_runs_dir(tmp_path):
    assert tracking_uri(AZRConfig(), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    custom = AZRConfig.model_validate({"tracking": {"mlflow_tracking_uri": "http://mlflow:5000"}})
    assert tracking_uri(custom, tmp_path) == "http://mlflow:5000"
    assert ui_command(AZRConfig(), tmp_path) == f"mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db"


@pytest.fixture(scope="module")
def logged(smoke_run):
    _, root = smoke_run
    run = RunDir(root)
    client = MlflowClient(tracking_uri=f"sqlite:///{root.parent / 'mlflow.db'}")
    run_id = (root / "mlflow_run_id").read_text().strip()
    return run, client, client.get_run(run_id)


def test_one_finished_mlflow_run_in_the_configured_experiment(logged):
    run, client, mlflow_run = logged
    experiment = client.get_experiment(mlflow_run.info.experiment_id)
    assert experiment.name == load_config(run.config_path).tracking.experiment
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.info.run_name == "smoke"
    assert len(client.search_runs([experiment.experiment_id])) == 1
    uuid.UUID(mlflow_run.data.tags["prefect.flow_run_id"])  # the Prefect flow run that produced it


def test_params_are_the_flattened_config(logged):
    run, _, mlflow_run = logged
    assert mlflow_run.data.params == flatten(load_config(run.config_path).model_dump(mode="json"))
    assert mlflow_run.data.params["model.name_or_path"] == "tiny-random"


def test_metrics_per_iteration_match_the_run_files(logged):
    run, client, mlflow_run = logged
    run_id = mlflow_run.info.run_id
    for iteration in (1, 2):
        expected = iteration_metrics(run, iteration)
        for key in ("proposals/count", "tasks/accepted", "tasks/forced", "solve_rate/all", "reward/propose/reward",
                    "reward/solve/correctness", "train/loss", "train/entropy", "train/grad_norm",
                    "train/tokens_per_second", "seconds/propose", "seconds/solve", "seconds/train"):
            history = {m.step: m.value for m in client.get_metric_history(run_id, key)}
            assert history[iteration] == pytest.approx(expected[key]), key
    steps = [m.step for m in client.get_metric_history(run_id, "iteration")]
    assert steps == [1, 2]  # each iteration logged exactly once
    names = set(mlflow_run.data.metrics)
    assert any(n.startswith("proposals/") and n.split("/")[1] in ("abduction", "deduction", "induction") for n in names)
    assert any(n.startswith("solve_rate/") and n != "solve_rate/all" for n in names)


def test_forced_count_follows_force_acceptance(logged):
    """smoke.yaml forces acceptance in iteration 1 only; the logged counts say so."""
    run, client, mlflow_run = logged
    forced = {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, "tasks/forced")}
    accepted = {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, "tasks/accepted")}
    assert forced[1] == accepted[1]
    assert forced[2] == 0


def test_parquet_files_and_train_json_are_artifacts(logged):
    _, client, mlflow_run = logged
    run_id = mlflow_run.info.run_id
    for iteration in ("iter-0001", "iter-0002"):
        names = {f.path.split("/")[-1] for f in client.list_artifacts(run_id, iteration)}
        assert names == {"proposals.parquet", "tasks.parquet", "solutions.parquet", "rewards.parquet", "train.json",
                         "summary.csv"}
    assert {f.path for f in client.list_artifacts(run_id, "buffer")} == {"buffer/iter-0001.parquet", "buffer/iter-0002.parquet"}


def test_held_out_evaluation_is_logged_before_training_and_after_each_iteration(logged):
    """smoke.yaml evaluates every iteration: steps 0 (base model), 1 and 2, from eval/iter-N.parquet."""
    import pandas as pd

    from azr.evaluation import eval_metrics

    run, client, mlflow_run = logged
    for task_type in ("abduction", "deduction", "induction"):
        key = f"eval/heldout/{task_type}/pass_at_1"
        history = {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, key)}
        assert sorted(history) == [0, 1, 2], key
        for step, value in history.items():
            frame = pd.read_parquet(EVALUATE.output(run, step))
            assert value == pytest.approx(eval_metrics(frame)[key])


def _readme_metric_names(task_types: list[str]) -> set[str]:
    """Every metric the README's table lists, its <placeholders> expanded (eval/: when evaluated)."""
    from azr.runs import REJECTION_REASONS, REWARD_COMPONENTS, REWARD_ROLES, STEPS, TRAIN_METRICS

    names = {"proposals/count", "proposals/parsed", "tasks/valid_rate", "tasks/accepted", "tasks/rejected",
             "tasks/forced", "tasks/from_buffer", "solve_rate/all", "solutions/parsed", "solutions/count",
             "seconds/iteration", "buffer/size"}
    names |= {f"proposals/{t}" for t in task_types} | {f"solve_rate/{t}" for t in task_types}
    names |= {f"tasks/rejected/{r}" for r in REJECTION_REASONS}
    names |= {f"reward/{role}/{c}" for role in REWARD_ROLES for c in REWARD_COMPONENTS}
    names |= {f"train/{m}" for m in TRAIN_METRICS} | {f"seconds/{step}" for step in STEPS}
    names |= {f"eval/heldout/{t}/pass_at_1" for t in task_types}
    return names


def test_every_readme_metric_is_logged_every_iteration(logged):
    """A metric with nothing to count (a rejection reason that did not occur, the KL term with
    kl_coef 0) is logged as 0, so its chart has a point per iteration instead of scattered dots."""
    import re

    run, client, mlflow_run = logged
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| metric | meaning |"):readme.index("## Resume")]
    listed = set(re.findall(r"`([a-z_]+/[^`]*)`", table))
    assert {"train/kl", "tasks/rejected/<reason>", "reward/<role>/<component>"} <= listed  # the README's own words
    config = load_config(run.config_path)
    for name in sorted(_readme_metric_names(config.task_types)):
        steps = [m.step for m in client.get_metric_history(mlflow_run.info.run_id, name)]
        assert steps[-2:] == [1, 2], f"{name}: logged at steps {steps}"
    kl = {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, "train/kl")}
    assert kl == {1: 0.0, 2: 0.0}  # smoke.yaml: kl_coef 0, no KL term


def test_summary_csv_per_iteration_matches_the_metrics(logged, tmp_path):
    import csv

    from azr.summary import SUMMARY_COLUMNS

    run, client, mlflow_run = logged
    for iteration in (1, 2):
        path = client.download_artifacts(mlflow_run.info.run_id, f"iter-{iteration:04d}/summary.csv", str(tmp_path))
        rows = dict(csv.reader(open(path)))
        assert rows.pop("metric") == "value" and rows["iteration"] == str(iteration)
        metrics = iteration_metrics(run, iteration)
        for title, key in SUMMARY_COLUMNS.items():
            assert float(rows[title]) == pytest.approx(metrics[key], rel=1e-5), title


def test_experiment_is_marked_as_training_and_links_open_the_training_view(logged):
    from azr.tracking import run_link

    run, client, mlflow_run = logged
    experiment = client.get_experiment(mlflow_run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run_link(load_config(run.config_path), run) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{mlflow_run.info.run_id}"
        "?workflowType=machine_learning")
