"""SIGINT (Ctrl-C) and SIGTERM (kill, a job scheduler) stop a run inside a stage, never inside Prefect's bookkeeping.

An exception raised by a signal wherever the main thread happens to be can land in Prefect's own
code between two stages, while it creates or finishes a task run: Prefect then recorded a failure
(`ValueError: Task run is not set`) instead of an interrupted run. While `azr run` or `azr resume`
runs a flow (`stop_in_stages`), a stop signal raises at once when a stage runs (`interruptible`
marks the stage tasks' bodies) and otherwise when the next stage starts, a fraction of a second
later; a second signal raises at once wherever the main thread is.

The exceptions are the ones Prefect expects from these signals: KeyboardInterrupt for SIGINT and
Prefect's TerminationSignal for SIGTERM (Prefect's own SIGTERM handler raises it anywhere; during
`stop_in_stages` Prefect installs ours in its place). Prefect then records the flow run as crashed.
"""

from __future__ import annotations

import functools
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from prefect.exceptions import TerminationSignal
from prefect.utilities import engine as prefect_engine

F = TypeVar("F", bound=Callable[..., Any])
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()  # the handler may run while the main thread holds it
        self.in_stage = 0  # interruptible bodies running (a stage may call another)
        self.pending: int | None = None  # a signal waiting for the next stage
        self.received: int | None = None  # the first signal (what azr reports)


_state = _State()


def _raise(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise TerminationSignal(signal=signum)


def _on_stop_signal(signum: int, frame: Any) -> None:
    """Runs in the main thread, wherever it is: raise there only inside a stage, or when insisted."""
    with _state.lock:
        insisted = _state.received is not None
        _state.received = _state.received or signum
        if not (_state.in_stage or insisted):
            _state.pending = signum
            return
    _raise(signum)


@contextmanager
def stop_in_stages() -> Iterator[None]:
    """Route SIGINT and SIGTERM through `_on_stop_signal` (main thread only) until the block ends."""
    previous = {signum: signal.signal(signum, _on_stop_signal) for signum in STOP_SIGNALS}
    prefect_handler = getattr(prefect_engine, "_prefect_sigterm_handler", None)
    prefect_engine._prefect_sigterm_handler = _on_stop_signal  # what Prefect installs for SIGTERM during a flow run
    _state.pending, _state.received = None, None
    try:
        yield
    finally:
        if prefect_handler is not None:
            prefect_engine._prefect_sigterm_handler = prefect_handler
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def received() -> int | None:
    """The first stop signal received during the last `stop_in_stages`, if any."""
    return _state.received


def interruptible(function: F) -> F:
    """Mark a stage task's body: a stop signal raises inside it, and one held back raises as it starts."""

    @functools.wraps(function)
    def body(*args: Any, **kwargs: Any) -> Any:
        with _state.lock:
            _state.in_stage += 1
            pending, _state.pending = _state.pending, None
        try:
            if pending is not None:
                _raise(pending)
            return function(*args, **kwargs)
        finally:
            with _state.lock:
                _state.in_stage -= 1

    return body  # type: ignore[return-value]
