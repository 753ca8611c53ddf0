"""flows.signals with real signals sent to this process: a stop signal raises inside a stage body, or, when
it lands outside one (Prefect's bookkeeping), as the next stage body starts, before any of it runs."""

from __future__ import annotations

import os
import signal
import time

import pytest
from prefect.exceptions import TerminationSignal

from flows.signals import interruptible, received, stop_in_stages


def deliver(signum: int) -> None:
    """Send a signal to this process and give the main thread the chance to run its handler."""
    os.kill(os.getpid(), signum)
    for _ in range(100):
        time.sleep(0.001)


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, TerminationSignal)])
def test_a_signal_between_stages_waits_for_the_next_stage(signum, raised):
    ran = []
    stage = interruptible(lambda: ran.append(1))
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when started in the background
    with stop_in_stages():
        deliver(signum)  # outside any stage: held back
        assert received() == signum
        with pytest.raises(raised):
            stage()
    assert ran == []  # raised as the stage started, before its body
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, TerminationSignal)])
def test_a_signal_inside_a_stage_raises_there(signum, raised):
    reached = []

    @interruptible
    def stage() -> None:
        deliver(signum)
        reached.append("after the signal")

    with stop_in_stages(), pytest.raises(raised):
        stage()
    assert reached == []


def test_a_second_signal_raises_wherever_the_main_thread_is():
    with stop_in_stages():
        deliver(signal.SIGTERM)
        with pytest.raises(TerminationSignal):
            deliver(signal.SIGTERM)


def test_prefect_installs_our_handler_for_sigterm_during_a_flow_run():
    from prefect.utilities.engine import capture_sigterm

    from flows import signals

    with stop_in_stages(), capture_sigterm():
        assert signal.getsignal(signal.SIGTERM) is signals._on_stop_signal
