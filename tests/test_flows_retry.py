"""Stage tasks retry transient errors only, under a real (test-harness) Prefect server."""

from __future__ import annotations

import pytest
from prefect import flow, task
from prefect.testing.utilities import prefect_test_harness

from flows.training import STAGE_TASK, default_run_name, with_location
from azr.config import AZRConfig


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=90):
        yield


def run_flaky(error: BaseException, retries: int) -> tuple[str, int]:
    """Run a task with the stage-task options that raises ``error`` on its first call only."""
    calls = []

    @task(**STAGE_TASK)
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return "done"

    @flow
    def one_task() -> str:
        return flaky.with_options(retries=retries, retry_delay_seconds=0)()

    state = one_task(return_state=True)
    return ("done" if state.is_completed() else "failed"), len(calls)


@pytest.mark.parametrize("error", [ConnectionResetError("peer went away"), TimeoutError("slow"), OSError("EIO")])
def test_transient_error_is_retried(error):
    assert run_flaky(error, retries=1) == ("done", 2)


@pytest.mark.parametrize("error", [ValueError("bad rows"), FileNotFoundError("gone"), RuntimeError("bug")])
def test_other_errors_fail_at_once(error):
    assert run_flaky(error, retries=3) == ("failed", 1)


def test_no_retries_when_configured_off():
    assert run_flaky(ConnectionResetError("peer went away"), retries=0) == ("failed", 1)


def test_run_location_helpers():
    from datetime import datetime, timezone

    config = with_location(AZRConfig(), "/data/runs", "r1")
    assert (config.orchestration.runs_dir, config.orchestration.run_name) == ("/data/runs", "r1")
    assert with_location(config).orchestration == config.orchestration  # nothing given, nothing changed
    name = default_run_name(datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert name.startswith("azr-2030010") and len(name) == len("azr-20300102-030405")
