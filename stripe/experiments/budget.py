"""Time budgets: a wall clock that stages consult (:class:`Budget`), and a training callback that stops
training before the next epoch would overrun it (:class:`Deadline`)."""
from __future__ import annotations

import time


class Budget:
    """A wall-clock budget: ``left()`` seconds remain; stages ask before they start and while they run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.start = time.perf_counter()

    def used(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds remaining (negative when over)."""
        return self.seconds - self.used()


class Deadline:
    """A training callback that stops training (cleanly, resumable) when the next epoch would overrun ``budget``,
    keeping ``reserve`` seconds for what follows."""

    def __init__(self, budget: Budget, reserve: float = 0.0) -> None:
        self.budget, self.reserve = budget, reserve
        self.stopped_at: int | None = None

    def on_epoch_end(self, state) -> None:
        """Stop after this epoch when the next one (taken as 1.2 times this one) would not fit."""
        seconds = state.row.get("epoch_seconds") or 0.0
        if state.epoch < state.cfg.epochs and self.budget.left() - self.reserve < 1.2 * seconds:
            state.stop = True
            self.stopped_at = state.epoch
