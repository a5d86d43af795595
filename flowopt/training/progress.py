"""Where a run stands: the typed progress record it checkpoints, and whether its budget is spent."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flowopt.training.config import TrainConfig


@dataclasses.dataclass
class Progress:
    """A run's position in its data and its sums since the last metrics row (checkpointed as a JSON record).

    Attributes:
      epoch: epochs completed.
      batch: batches of the current epoch completed.
      loss_sum: sum of the minibatch losses since the last row.
      correct: correct predictions since the last row.
      count: training examples since the last row.
      last_cost: gradient evaluations of the last step (``None`` before the first).
      time_s: training time up to the last checkpoint, in seconds.
    """

    epoch: int
    batch: int
    loss_sum: float
    correct: int
    count: int
    last_cost: int | None
    time_s: float

    @classmethod
    def start(cls) -> Progress:
        """The progress of a run that has not taken a step."""
        return cls(epoch=0, batch=0, loss_sum=0.0, correct=0, count=0, last_cost=None, time_s=0.0)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Progress:
        """The progress a checkpoint recorded (fields it lacks keep their values from :meth:`start`)."""
        known = {field.name: record[field.name] for field in dataclasses.fields(cls) if field.name in record}
        return dataclasses.replace(cls.start(), **known)

    def to_record(self) -> dict[str, Any]:
        """The JSON record a checkpoint stores."""
        return dataclasses.asdict(self)

    def position(self, steps_per_epoch: int) -> float:
        """Epochs completed, fractional within an epoch."""
        return self.epoch + self.batch / steps_per_epoch

    def add_step(self, loss: float, correct: int, examples: int, cost: int) -> None:
        """Count one step: its minibatch loss, correct predictions, examples and gradient evaluations."""
        self.last_cost = cost
        self.batch += 1
        self.loss_sum += loss
        self.correct += correct
        self.count += examples

    def start_row(self) -> None:
        """Zero the sums after a metrics row."""
        self.loss_sum, self.correct, self.count = 0.0, 0, 0

    def next_epoch(self) -> None:
        """Move to the first batch of the next epoch."""
        self.epoch, self.batch = self.epoch + 1, 0


def budget_left(config: TrainConfig, step: int, evals: int, last_cost: int | None) -> bool:
    """Whether another step fits ``config``'s step and gradient-evaluation budgets (it costs ``last_cost``)."""
    if config.steps is not None and step >= config.steps:
        return False
    if config.grad_evals is not None and evals + (last_cost or 1) > config.grad_evals:
        return False
    return True


def budget_spent(config: TrainConfig, step: int, evals: int, progress: Progress, steps_per_epoch: int) -> bool:
    """Whether a run at ``step``/``evals`` with ``progress`` has reached one of ``config``'s budgets."""
    epochs_done = progress.epoch + (progress.batch >= steps_per_epoch)
    return not budget_left(config, step, evals, progress.last_cost) or (
        config.epochs is not None and epochs_done >= config.epochs
    )
