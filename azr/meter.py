"""Live figures from inside a long stage: fields and tokens while generating, programs while validating,
micro-batches while training.

A stage makes a `Meter` and advances it as work gets done. The meter keeps its latest line where
`azr run`'s live display reads it (`latest()`, drawn under the progress bar on a terminal, nothing
printed otherwise) and logs the same line on the ``azr.meter`` logger at most every `LOG_SECONDS`
and once at the end, so a run's Prefect logs (and any log file) get the same figures.

    meter = Meter("propose", iteration, total=16, unit="fields")
    meter.advance(done=3, tokens=120)   # -> "propose 1: 3/16 fields, 42 tokens/s, 1.1 fields/s"
    meter.finish()
"""

from __future__ import annotations

import logging
import threading
import time

LOG_SECONDS = 10.0  # a log line at most this often while a stage runs
log = logging.getLogger("azr.meter")
log.setLevel(logging.INFO)  # Prefect gives the extra loggers its handlers, not a level
_latest = ""
_lock = threading.Lock()


def latest() -> str:
    """The newest line of any meter in this process ('' when none is running)."""
    return _latest


class Meter:
    """Progress of one stage of one iteration: `done` of `total` units, and tokens when generating."""

    def __init__(self, stage: str, iteration: int, total: int, unit: str) -> None:
        self.stage, self.iteration, self.total, self.unit = stage, iteration, total, unit
        self.started = self.logged = time.monotonic()
        self.done = self.tokens = 0

    def line(self) -> str:
        seconds = max(time.monotonic() - self.started, 1e-9)
        parts = [f"{self.stage} {self.iteration}: {self.done}/{self.total} {self.unit}"]
        if self.tokens:
            parts.append(f"{self.tokens / seconds:.0f} tokens/s")
        parts.append(f"{self.done / seconds:.2f} {self.unit}/s")
        return ", ".join(parts)

    def advance(self, done: int | None = None, tokens: int | None = None, by: int = 0) -> None:
        """Set (`done`, `tokens`: totals so far) or add to (`by`) the work done; publish the line."""
        global _latest
        self.done = done if done is not None else self.done + by
        self.tokens = tokens if tokens is not None else self.tokens
        text = self.line()
        with _lock:
            _latest = text
        if time.monotonic() - self.logged >= LOG_SECONDS:
            self.logged = time.monotonic()
            log.info(text)

    def generation_callback(self):
        """A `progress(fields done, fields in all, tokens)` callback for `azr.generation.generate`."""
        def report(done: int, total: int, tokens: int) -> None:
            self.total = total
            self.advance(done=done, tokens=tokens)
        return report

    def micro_batch_callback(self):
        """A `progress(micro-batches done, in all)` callback for `azr.rl.train_step`."""
        def report(done: int, total: int) -> None:
            self.total = total
            self.advance(done=done)
        return report

    def finish(self) -> None:
        """Log the final figures and clear the live line."""
        global _latest
        log.info(self.line())
        with _lock:
            _latest = ""
