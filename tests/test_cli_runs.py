"""`azr runs` and `azr tasks` on a finished smoke run (in-process: these commands only read files)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from azr.artifacts import RunDir, read_table
from azr.runs import iterations_done, list_runs, position, task_status, task_table
from cli.main import app

pytestmark = pytest.mark.slow  # runs azr end to end (tiny-random, Prefect, MLflow)

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], terminal_width=200)


def test_runs_lists_the_finished_run(smoke_run):
    _, root = smoke_run
    (summary,) = list_runs(root.parent)
    assert (summary.name, summary.status, summary.iterations_done, summary.num_iterations) == ("smoke", "finished", 2, 2)
    assert set(summary.metrics) >= {"solve_rate/all", "train/loss"}
    result = invoke("runs", "--runs-dir", root.parent)
    assert result.exit_code == 0, result.output
    assert "smoke" in result.output and "finished" in result.output and "2/2" in result.output


def test_position_is_the_first_missing_step(smoke_run):
    _, root = smoke_run
    run = RunDir(root)
    assert iterations_done(run) == 2 and position(run, 2) is None
    assert position(run, 3) == (3, "propose")


def test_tasks_table_has_one_row_per_task_with_status(smoke_run):
    _, root = smoke_run
    run = RunDir(root)
    frame = task_table(run)
    raw = read_table(run.stage_file(1, "tasks.parquet"))
    assert len(frame) == len(raw) + len(read_table(run.stage_file(2, "tasks.parquet")))
    assert set(frame["status"]) <= {"accepted", "rejected", "forced"}
    first = frame[frame["iteration"] == 1].reset_index(drop=True)
    assert list(first["status"]) == [task_status(a, f) for a, f in zip(raw["accepted"], raw["forced"])]
    solved = first.dropna(subset=["solve_rate"])
    assert set(solved["task_id"]) == set(raw.loc[raw["accepted"], "task_id"])  # only accepted tasks are solved


@pytest.mark.parametrize("option, value, column", [("--type", "deduction", "task_type"), ("--status", "rejected", "status")])
def test_tasks_filters(smoke_run, option, value, column):
    _, root = smoke_run
    frame = task_table(RunDir(root), **{"task_type" if column == "task_type" else "status": value})
    assert set(frame[column]) <= {value}
    result = invoke("tasks", root, option, value, "--limit", "1000")
    assert result.exit_code == 0, result.output
    for task_id in frame["task_id"]:
        assert task_id in result.output


def test_tasks_iteration_and_limit(smoke_run):
    _, root = smoke_run
    result = invoke("tasks", root, "--iteration", "2", "--limit", "1")
    assert result.exit_code == 0, result.output
    frame = task_table(RunDir(root), iteration=2)
    assert frame["task_id"].iloc[0] in result.output
    assert frame["task_id"].iloc[1] not in result.output
    assert f"{len(frame) - 1} more" in result.output


def test_show_prints_the_task_whole(smoke_run):
    _, root = smoke_run
    run = RunDir(root)
    tasks = read_table(run.stage_file(2, "tasks.parquet"))
    task = tasks[tasks["accepted"]].iloc[0]
    solutions = read_table(run.stage_file(2, "solutions.parquet"))
    rollouts = solutions[solutions["task_id"] == task["task_id"]]
    result = invoke("tasks", root, "--show", task["task_id"], "--iteration", "2")
    assert result.exit_code == 0, result.output
    out = result.output
    assert task["task_id"] in out and task["task_type"] in out
    for line in task["program"].strip().splitlines():
        assert line.strip() in out
    assert "solver rollouts" in out and len(rollouts) > 0
    for status in rollouts["check_status"]:
        assert status in out


@pytest.mark.parametrize("args, named", [
    (["--status", "maybe"], "--status 'maybe'"),
    (["--type", "riddle"], "--type 'riddle'"),
    (["--show", "no-such-task"], "no-such-task"),
])
def test_tasks_bad_input_names_the_option(smoke_run, args, named):
    _, root = smoke_run
    result = invoke("tasks", root, *args)
    assert result.exit_code != 0
    assert named in " ".join(result.output.split())


def test_tasks_refuses_a_directory_that_is_not_a_run(tmp_path):
    result = invoke("tasks", tmp_path)
    assert result.exit_code == 2
    assert "no config.yaml" in result.output


def test_runs_names_a_missing_runs_dir(tmp_path):
    result = invoke("runs", "--runs-dir", tmp_path / "nope")
    assert result.exit_code == 2
    assert "nope" in result.output


def test_report_draws_the_curves_and_prints_them(smoke_run, tmp_path):
    _, root = smoke_run
    from azr.report import report_frame

    frame = report_frame(RunDir(root))
    assert list(frame.index) == [0, 1, 2]  # the base model's evaluation, then each iteration
    assert {"tasks/valid_rate", "solve_rate/all", "advantage/propose/nonzero", "advantage/solve/nonzero",
            "reward/propose/reward", "seconds/train", "eval/heldout/deduction/pass_at_1"} <= set(frame.columns)
    out = tmp_path / "report.png"
    result = invoke("report", root, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    lines = [line.split() for line in result.output.splitlines()]
    rows = [line for line in lines if line and line[0] in ("0", "1", "2")]
    assert [row[0] for row in rows] == ["0", "1", "2"]
    valid = float(rows[1][1])
    assert valid == pytest.approx(frame.loc[1, "tasks/valid_rate"], abs=0.005)
    assert invoke("report", root.parent / "nope").exit_code != 0
