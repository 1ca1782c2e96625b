"""What a part of :class:`~lightning_rwc.RelativeWeightChange` is: the hooks it may implement, and what it is handed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_rwc.callback import RelativeWeightChange
    from lightning_rwc.measure import Measurement


@dataclass
class Record:
    """One measurement as the parts receive it, in the order the measurements were taken.

    Attributes:
        step: the global step it was taken at.
        epoch: the epoch it was taken in.
        measurement: the values and the per-tensor sums (see :class:`~lightning_rwc.measure.Measurement`).
        values: ``{layer: RWC}`` plus ``"_all"``, as the tracker gives them.
        metrics: ``values`` under their logged keys (``{log_prefix}/{layer}``).
        extra: further scalars a part logs at this step (health counts, freezing decisions); they also go to
            ``trainer.callback_metrics``.
    """

    step: int
    epoch: int
    measurement: Measurement
    values: dict[str, float]
    metrics: dict[str, float]
    extra: dict[str, float] = field(default_factory=dict)


class Part:
    """One concern of :class:`~lightning_rwc.RelativeWeightChange`, handed every measurement it takes.

    Subclass it and override the hooks you need; every hook does nothing by default. The callback calls them on
    every rank: a part that writes files or images checks ``trainer.is_global_zero``. Under DDP only rank zero
    measures; a part whose decisions must be the same on every rank sets :attr:`every_rank`, and rank zero then
    shares each measurement with the other ranks.

    Example::

        >>> class Slowest(Part):
        ...     '''Log the smallest RWC of each measurement.'''
        ...     def on_measurement(self, trainer, record):
        ...         layers = [v for name, v in record.values.items() if name != "_all"]
        ...         record.extra["rwc_slowest"] = min(layers)
        >>> from lightning_rwc import RelativeWeightChange
        >>> from lightning_rwc.parts import default_parts
        >>> rwc = RelativeWeightChange(parts=[*default_parts(), Slowest()])
    """

    every_rank: bool = False
    """Whether the part needs the measurements on every rank (under DDP, where rank zero alone measures)."""

    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, rwc: RelativeWeightChange) -> None:
        """Training starts (``on_train_start``)."""

    def on_measurement(self, trainer: pl.Trainer, record: Record) -> None:
        """A measurement's values have arrived; add scalars to log at its step to ``record.extra``."""

    def write(self, trainer: pl.Trainer, step: int, scalars: dict[str, float]) -> None:
        """Scalars to log at ``step``: a measurement's metrics with the extras of every part, or a part's own."""

    def epoch_end(self, trainer: pl.Trainer, rwc: RelativeWeightChange) -> None:
        """A training epoch ended; every measurement taken in it has been handed over."""

    def flush(self, trainer: pl.Trainer, force: bool) -> None:
        """After every batch (``force=False``), and at epoch ends and the end of training (``force=True``)."""

    def close(self, trainer: pl.Trainer) -> None:
        """Training ended, or stopped with an exception: release files."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this part (the callback saves it with its own state)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""


def check_parts(parts: Iterable[object]) -> list[Part]:
    """``parts`` as a list, if every one is a :class:`Part`.

    Raises:
        ValueError: naming what is not a part.
    """
    parts = list(parts)
    wrong = [part for part in parts if not isinstance(part, Part)]
    if wrong:
        raise ValueError(f"parts must be Part instances (see lightning_rwc.parts), got {wrong!r}")
    return parts
