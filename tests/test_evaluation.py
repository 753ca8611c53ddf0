"""Held-out evaluation (issue 8): benchmarks, the checking path, pass@k, `azr eval`, `azr compare`.

Everything runs for real: the sandbox (docker when the daemon and image are there, else the process
backend), the tiny-random model, a SQLite MLflow store.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from azr.artifacts import read_manifest, read_table
from azr.config import load_config
from azr.evaluation import (
    EVAL, HELDOUT_DIR, BenchmarkError, answer_response, benchmark_task_types, eval_metrics,
    gold_answer, load_set, pass_at_k, read_problems,
)
from azr import task_types
from azr.answers import score_responses
from azr.sandbox import open_sandbox
from tests.conftest import ROOT, SMOKE_CONFIG, run_azr

CRUXEVAL = ROOT.parent / "shared" / "data" / "cruxeval" / "cruxeval.jsonl"
needs_cruxeval = pytest.mark.skipif(not CRUXEVAL.is_file(), reason=f"CRUXEval not found at {CRUXEVAL}")


@pytest.fixture(scope="module")
def config():
    return load_config(SMOKE_CONFIG)


@pytest.fixture(scope="module")
def sandbox(config):
    with open_sandbox(config.executor) as box:
        yield box


def frame_of(problems, scores) -> pd.DataFrame:
    rows = [{"set": "s", "task_id": p["task_id"], "task_type": p["task_type"], **s} for p, s in zip(problems, scores)]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- pass@k


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (10, 0, 5), (10, 8, 5), (20, 1, 10)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_refuses_k_above_samples():
    with pytest.raises(ValueError, match="pass@5 needs at least 5 samples"):
        pass_at_k(3, 1, 5)


def test_metrics_average_pass_at_k_over_problems_and_skip_k_above_samples():
    frame = pd.DataFrame({
        "set": "s", "task_type": "deduction", "task_id": ["a"] * 4 + ["b"] * 4,
        "correct": [True, False, False, False, True, True, True, True], "parsed": [True] * 7 + [False],
    })
    metrics = eval_metrics(frame, [1, 2, 5])
    assert metrics["eval/s/deduction/pass_at_1"] == pytest.approx((0.25 + 1.0) / 2)
    assert metrics["eval/s/deduction/pass_at_2"] == pytest.approx((0.5 + 1.0) / 2)
    assert "eval/s/deduction/pass_at_5" not in metrics
    assert metrics["eval/s/deduction/parse_rate"] == pytest.approx(7 / 8)


# ---------------------------------------------------------------- reading benchmarks


@needs_cruxeval
def test_cruxeval_rows_are_read_directly_as_both_modes():
    assert benchmark_task_types(str(CRUXEVAL)) == ("abduction", "deduction")
    first = json.loads(CRUXEVAL.read_text().splitlines()[0])
    for mode in ("deduction", "abduction"):
        problems = read_problems(CRUXEVAL, mode, limit=20)
        assert len(problems) == 20
        assert problems[0]["task_id"] == first["id"] and problems[0]["program"] == first["code"]
        assert problems[0]["input"] == first["input"] and problems[0]["output"] == first["output"]
    assert gold_answer(read_problems(CRUXEVAL, "deduction", 1)[0]) == first["output"]
    assert gold_answer(read_problems(CRUXEVAL, "abduction", 1)[0]) == first["input"]


@pytest.mark.parametrize("line,message", [
    ("{not json", "not valid JSON"),
    ('{"code": "def f(x):\\n    return x", "input": "1", "id": "p"}', "needs 'output'"),
    ('{"input": "1", "output": "1"}', "'code' or 'program'"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_benchmark_rows_are_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "bench.jsonl"
    path.write_text('{"code": "def f(x):\\n    return x", "input": "1", "output": "1", "id": "ok"}\n' + line + "\n")
    with pytest.raises(BenchmarkError, match=message) as err:
        read_problems(path, "deduction")
    assert f"{path}:2" in str(err.value)


def test_induction_file_needs_a_list_of_inputs(tmp_path):
    path = tmp_path / "ind.jsonl"
    path.write_text(json.dumps({"id": "x", "program": "def f(a):\n    return a", "inputs": "1, 2"}) + "\n")
    assert benchmark_task_types(str(path)) == ("induction",)
    with pytest.raises(BenchmarkError, match="'inputs', a list of at least 2"):
        read_problems(path, "induction")


def test_unknown_mode_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(BenchmarkError, match="unknown mode 'prediction'"):
        read_problems(HELDOUT_DIR / "deduction.jsonl", "prediction")
    with pytest.raises(BenchmarkError, match="nope.jsonl: benchmark file not found"):
        benchmark_task_types(str(tmp_path / "nope.jsonl"))


# ---------------------------------------------------------------- the checking path, with given answers


@needs_cruxeval
@pytest.mark.parametrize("mode", ["deduction", "abduction"])
def test_gold_cruxeval_answers_score_full_marks_and_wrong_ones_do_not(sandbox, mode):
    problems = read_problems(CRUXEVAL, mode, limit=20)
    gold = score_responses(sandbox, problems, [answer_response(mode, gold_answer(p)) for p in problems], strict=True)
    assert [s["check_status"] for s in gold] == ["ok"] * 20
    assert eval_metrics(frame_of(problems, gold))[f"eval/s/{mode}/pass_at_1"] == 1.0
    # Each problem answered with the next problem's gold answer: the checker must say no.
    shifted = [answer_response(mode, gold_answer(p)) for p in problems[1:] + problems[:1]]
    wrong = score_responses(sandbox, problems, shifted, strict=True)
    assert eval_metrics(frame_of(problems, wrong))[f"eval/s/{mode}/pass_at_1"] <= 0.1


def test_unparsed_answers_are_wrong_and_not_run(sandbox):
    problems = read_problems(HELDOUT_DIR / "deduction.jsonl", "deduction", limit=2)
    output = problems[0]["output"]
    scores = score_responses(sandbox, problems, [output, "I am not sure."], strict=True)
    assert [(s["parsed"], s["correct"], s["check_status"]) for s in scores] == [
        (False, False, "unparsed"), (False, False, "unparsed")]
    lenient = score_responses(sandbox, problems[:1], [f"The answer is:\n{output}"], strict=False)
    assert lenient[0]["correct"], "lenient parsing takes the last line as the answer"


def test_heldout_sets_are_shipped_with_outputs_the_sandbox_reproduces(sandbox):
    for mode in ("deduction", "abduction"):
        problems = read_problems(HELDOUT_DIR / f"{mode}.jsonl", mode)
        assert 30 <= len(problems) <= 40
        results = sandbox.validate([(p["program"], [p["input"]]) for p in problems])
        assert [(r.status, r.outputs) for r in results] == [("ok", [p["output"]]) for p in problems]
    induction = load_set(sandbox, "heldout", "induction")
    assert 30 <= len(induction) <= 40
    assert all(0 < len(p["shown"]) < len(p["inputs"]) == len(p["outputs"]) for p in induction)
    assert induction[0]["outputs"] == ["1", "2", "5", "10", "17", "101"]  # f(x) = x * x + 1


@pytest.mark.parametrize("mode", ["deduction", "abduction", "induction"])
def test_gold_heldout_answers_score_full_marks(sandbox, mode):
    problems = load_set(sandbox, "heldout", mode)
    scores = score_responses(sandbox, problems, [answer_response(mode, gold_answer(p)) for p in problems], strict=True)
    assert eval_metrics(frame_of(problems, scores))[f"eval/s/{mode}/pass_at_1"] == 1.0


def test_induction_checks_hidden_pairs_and_names_a_broken_problem(sandbox):
    problems = task_types.get("induction").complete(sandbox, read_problems(HELDOUT_DIR / "induction.jsonl", "induction", limit=1))
    # A program that only memorises the shown pairs fails on the hidden ones.
    shown = {problems[0]["inputs"][i]: problems[0]["outputs"][i] for i in problems[0]["shown"]}
    table = ", ".join(f"{k}: {v}" for k, v in shown.items())
    memoriser = f"def f(x):\n    return {{{table}}}.get(x, 0)"
    assert score_responses(sandbox, problems, [answer_response("induction", memoriser)], strict=True)[0]["correct"] is False
    broken = [{**problems[0], "task_id": "boom", "program": "def f(x):\n    return 1 // 0"}]
    with pytest.raises(BenchmarkError, match="induction problem boom: the program does not run"):
        task_types.get("induction").complete(sandbox, broken)


# ---------------------------------------------------------------- `azr eval` with tiny-random


@needs_cruxeval
@pytest.mark.parametrize("mode", ["deduction", "abduction"])
def test_azr_eval_tiny_random_on_20_cruxeval_problems(tmp_path, mode):
    out = tmp_path / f"{mode}.parquet"
    result = run_azr("eval", "--model", "tiny-random", "--benchmark", CRUXEVAL, "--mode", mode, "--limit", "20",
                     "--out", out, "--config", SMOKE_CONFIG, "--set", "eval.max_new_tokens=24")
    assert result.returncode == 0, result.stdout + result.stderr
    frame = read_table(out)
    assert list(frame.columns) == EVAL.names
    assert len(frame) == 20 and frame["task_id"].is_unique and set(frame["task_type"]) == {mode}
    assert set(frame["set"]) == {"cruxeval"} and (frame["response_tokens"] <= 24).all()
    assert set(frame["check_status"]) <= {"ok", "unparsed", "syntax", "error", "timeout", "banned", "memory"}
    pass_at_1 = frame["correct"].mean()
    assert f"eval/cruxeval/{mode}/pass_at_1" in result.stdout and f"{pass_at_1:.4f}" in result.stdout
    assert read_manifest(out)["rows"] == 20


def test_azr_eval_errors_name_what_is_wrong(tmp_path):
    missing = run_azr("eval", "--mode", "deduction", "--benchmark", tmp_path / "none.jsonl", "--out", tmp_path / "o.parquet",
                      "--model", "tiny-random")
    assert missing.returncode == 2 and "none.jsonl: benchmark file not found" in " ".join(missing.stderr.split())
    not_a_run = run_azr("eval", "--mode", "deduction", "--iteration", "1", "--out", tmp_path / "o.parquet",
                        "--model", "tiny-random")
    assert not_a_run.returncode == 2
    assert "--iteration needs --model to be a run directory" in " ".join(not_a_run.stderr.split())


def eval_rows(correct: list[list[bool]], task_type: str = "deduction") -> pd.DataFrame:
    """Evaluation rows: problem i answered len(correct[i]) times."""
    return pd.DataFrame([{"set": "s", "task_type": task_type, "task_id": f"p{i}", "sample": k, "correct": c}
                         for i, answers in enumerate(correct) for k, c in enumerate(answers)])


def test_paired_comparison_greedy_is_an_exact_mcnemar_test():
    from scipy.stats import binomtest

    from azr.evaluation import paired_comparison

    # 10 problems: both right on 2, only B right on 6, only A right on 1, both wrong on 1.
    a = eval_rows([[True], [True], *[[False]] * 6, [True], [False]])
    b = eval_rows([[True], [True], *[[True]] * 6, [False], [False]])
    [row] = paired_comparison(a, b)
    assert (row["problems"], row["only_a"], row["only_b"]) == (10, 1, 6)
    assert row["pass_at_1_a"] == 0.3 and row["pass_at_1_b"] == 0.8 and row["difference"] == pytest.approx(0.5)
    assert row["p_value"] == pytest.approx(binomtest(1, 7, 0.5).pvalue) and row["test"] == "McNemar"
    assert paired_comparison(a, a)[0]["p_value"] == 1.0


def test_paired_comparison_with_samples_bootstraps_and_needs_shared_problems():
    from azr.evaluation import paired_comparison

    a = eval_rows([[False, False, True, False]] * 30)
    b = eval_rows([[True, True, True, False]] * 30)
    [row] = paired_comparison(a, b)
    assert row["difference"] == pytest.approx(0.5) and row["p_value"] < 0.001 and row["test"] == "bootstrap"
    with pytest.raises(BenchmarkError, match="share no problem"):
        paired_comparison(a, eval_rows([[True]], task_type="abduction"))


def test_azr_compare_two_evaluation_files_prints_the_p_value(tmp_path):
    from azr.artifacts import write_table

    a = eval_rows([[True], [False], [False], [False]]).assign(run="", iteration=0)
    b = eval_rows([[True], [True], [True], [False]]).assign(run="", iteration=0)
    write_table(a, tmp_path / "a.parquet")
    write_table(b, tmp_path / "b.parquet")
    result = run_azr("compare", tmp_path / "a.parquet", tmp_path / "b.parquet")
    assert result.returncode == 0, result.stderr
    assert "McNemar" in result.stdout and "+0.500" in result.stdout and "0.5" in result.stdout
