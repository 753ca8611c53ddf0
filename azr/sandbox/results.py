"""What the sandbox answers: a validated program, a checked answer. Plain values, importable without
the sandbox client (the task-type registry builds them, and the config imports the registry)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ValidationResult:
    """One validated proposal: status ``ok`` or the failure; ``outputs`` holds one gold repr per input."""

    status: str
    program: str
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class CheckResult:
    """One checked answer; ``status`` says whether the check ran (``ok``) or why it could not."""

    correct: bool
    status: str
    error: str | None = None
    seconds: float = 0.0
