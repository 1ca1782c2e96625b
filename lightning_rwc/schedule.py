"""When the callback measures: every n optimizer steps, at the end of every n-th epoch, or both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lightning_rwc.validate import check_count

UNEVEN = (
    "RelativeWeightChange: measurements cover different numbers of optimizer steps ({} and {}){}. RWC grows with the "
    "steps it covers, so values of different intervals are not comparable: the RWC tab shows each one's interval "
    "and the clustering divides by it. For equal intervals, set one schedule."
)


@dataclass(frozen=True)
class Schedule:
    """Measure every ``every_n_steps`` optimizer steps and/or at the end of every ``every_n_epochs``-th epoch.

    Steps are optimizer steps (Lightning's global step), counted from the previous measurement: a measurement is
    taken at the end of the first batch that brings ``every_n_steps`` or more of them since the previous one. With
    one optimizer step per batch that is every ``every_n_steps``-th step; with several optimizers stepping in each
    batch (manual optimization, as in a GAN) it is the first batch end at or past each ``every_n_steps`` more, so
    every interval holds the same number of steps. With both schedules the steps count from the latest
    measurement of either, so only a measurement at an epoch's end may cover fewer steps. A step is measured once
    even when both fall on it. With ``source="optimizer"`` (each measurement is one
    optimizer step's update) every step is measured: ``every_n_steps`` must be 1.

    Raises:
        ValueError: if a setting is not a whole number >= 1 or ``None``, or both are ``None``, or ``source`` is
            ``"optimizer"`` and ``every_n_steps`` is not 1.

    Example::

        >>> schedule = Schedule(every_n_epochs=None, every_n_steps=5)
        >>> last, measured = -1, []
        >>> for step in range(2, 25, 2):  # two optimizer steps per batch
        ...     if schedule.after_step(step, last):
        ...         last = step
        ...         measured.append(step)
        >>> measured
        [6, 12, 18, 24]
        >>> schedule.at_epoch_end(epoch=0, step=15, last=15)
        False
    """

    every_n_epochs: int | None = 1
    every_n_steps: int | None = None
    source: str = "snapshot"

    def __post_init__(self) -> None:
        check_count("every_n_epochs", self.every_n_epochs, optional=True)
        check_count("every_n_steps", self.every_n_steps, optional=True)
        if self.every_n_epochs is None and self.every_n_steps is None:
            raise ValueError("Set every_n_epochs or every_n_steps (or both): with both None nothing is measured")
        if self.source == "optimizer" and self.every_n_steps != 1:
            raise ValueError(
                f"source='optimizer' measures the update of each optimizer step, so every_n_steps must be 1 (got "
                f"{self.every_n_steps}): a change over several steps needs the old weights. Use source='snapshot' "
                "to measure less often."
            )

    def __str__(self) -> str:
        return f"every_n_epochs={self.every_n_epochs}, every_n_steps={self.every_n_steps}"

    def after_step(self, step: int, last: int) -> bool:
        """Whether to measure after optimizer step ``step`` (the global step), ``last`` being the last measured."""
        return bool(self.every_n_steps) and step - max(last, 0) >= self.every_n_steps

    def at_epoch_end(self, epoch: int, step: int, last: int) -> bool:
        """Whether to measure at the end of ``epoch`` (counted from 0), reached at global ``step``."""
        return self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0 and step != last


class Intervals:
    """Warns once when a measurement other than the last covered another number of optimizer steps than the first.

    The last one may be short without a warning: a run that ends mid-interval.

    Example::

        >>> said = []
        >>> intervals = Intervals(Schedule(every_n_epochs=1, every_n_steps=4))
        >>> for interval in (4, 2, 4):
        ...     intervals.add(interval, lambda key, message: said.append(message))
        >>> said[0][:75]
        'RelativeWeightChange: measurements cover different numbers of optimizer ste'
    """

    def __init__(self, schedule: Schedule) -> None:
        both = schedule.every_n_epochs is not None and schedule.every_n_steps is not None
        self._why = ": an epoch's end falls between step measurements" if both else ""
        self._first: int | None = None
        self._odd: int | None = None  # an interval other than the first, not yet followed by a measurement

    def add(self, interval: int, warn: Callable[[str, str], object]) -> None:
        """The next measurement covered ``interval`` steps; ``warn(key, message)`` says so where it matters."""
        if self._odd is not None:
            warn("intervals", UNEVEN.format(self._first, self._odd, self._why))
        if self._first is None:
            self._first = interval
        self._odd = interval if interval != self._first else None
