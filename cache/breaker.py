"""A small circuit breaker: after `failures` consecutive errors, calls fail fast for
`reset_s`, then one trial call is let through (half-open)."""
from __future__ import annotations

from collections.abc import Callable


class CircuitOpen(RuntimeError):
    pass


class CircuitBreaker:
    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float]) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self._count = 0
        self._opened_at: float | None = None

    def check(self) -> None:
        """Raise CircuitOpen while open; let one trial through once reset_s has passed."""
        if self._opened_at is None:
            return
        if self.clock() - self._opened_at < self.reset_s:
            raise CircuitOpen("circuit open")
        self._opened_at = self.clock()  # half-open: this call is the trial; others still fail fast

    def success(self) -> None:
        self._count = 0
        self._opened_at = None

    def failure(self) -> None:
        self._count += 1
        if self._count >= self.failures:
            self._opened_at = self.clock()

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None
