"""The measurements kept in memory (bounded), for the parts that read them and for checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import override

from lightning_rwc.history import RWCHistory
from lightning_rwc.parts.base import Part, Record

if TYPE_CHECKING:
    import lightning.pytorch as pl


class History(Part):
    """Keep the measurements in ``callback.history``, at most ``capacity`` evenly spread.

    The checkpoint stores it, so a resumed run continues its curves; the heatmap and live clustering read it. The
    loggers receive every measurement whatever the capacity.

    Args:
        capacity: the most measurements kept (see :class:`~lightning_rwc.history.RWCHistory`); ``None`` keeps all.

    Example::

        >>> History(capacity=None).history.capacity is None
        True
    """

    def __init__(self, capacity: int | None = 200) -> None:
        self.history = RWCHistory(capacity=capacity)

    @override
    def on_measurement(self, trainer: pl.Trainer, record: Record) -> None:
        self.history.append(record.step, record.epoch, record.values)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history.load_state_dict(state_dict["history"])
