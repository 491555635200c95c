"""Hooks into a running :class:`~shiftlab.engine.loop.Trainer`, for sweeps, early stopping and logging.

A callback sees the metrics after every evaluation and may stop the run early by setting
``trainer.should_stop = True`` (Ray Tune reports through one; ASHA stops trials through one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import Trainer


class Callback:
    """Override what you need; every hook is optional."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch of this process (also when resuming)."""

    def on_evaluation(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """After each evaluation: ``metrics`` is the epoch's row of ``metrics.csv``. The checkpoint of this
        epoch is already written, so stopping here loses nothing."""

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """After ``summary.json`` is written."""


class LambdaCallback(Callback):
    """A plain function ``fn(trainer, metrics)`` called after each evaluation."""

    def __init__(self, fn: Callable[[Trainer, dict[str, Any]], Any]):
        self.fn = fn

    def on_evaluation(self, trainer, metrics) -> None:
        self.fn(trainer, metrics)


class EarlyStopping(Callback):
    """Stop when ``monitor`` (a metric that reads no target label by default) has not improved for
    ``patience`` evaluations."""

    def __init__(self, monitor: str = "source_val_acc", patience: int = 5, min_delta: float = 0.0):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.best: float | None = None
        self.waited = 0

    def on_fit_start(self, trainer) -> None:
        # a resumed run replays its evaluations so far, so patience counts as in an uninterrupted run
        self.best, self.waited = None, 0
        for row in getattr(trainer, "history", []):
            if self.monitor in row and row[self.monitor] is not None:
                self._update(row[self.monitor])

    def on_evaluation(self, trainer, metrics) -> None:
        if self.monitor not in metrics:
            raise KeyError(
                f"EarlyStopping monitors '{self.monitor}', which this run does not log; logged: {', '.join(metrics)}"
            )
        if self._update(metrics[self.monitor]):
            trainer.should_stop = True

    def _update(self, value: float) -> bool:
        """Count one evaluation; True when patience has run out."""
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.waited = value, 0
            return False
        self.waited += 1
        return self.waited >= self.patience


def as_callback(obj: Callback | Callable) -> Callback:
    return obj if isinstance(obj, Callback) else LambdaCallback(obj)
