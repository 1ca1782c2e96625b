"""Dead and runaway layers flagged at each measurement, warned about once, and counted in the logs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_rwc.decide.health import HealthCheck
from lightning_rwc.keys import health_prefix
from lightning_rwc.parts.base import Part, Record
from lightning_rwc.warn_once import WarnOnce

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_rwc.callback import RelativeWeightChange


class HealthFlags(Part):
    """Flag dead layers (not changing while the rest does) and runaway ones (changing far more than the median).

    Each newly flagged layer is warned about once (one warning for all the layers flagged at a measurement) and
    ``{log_prefix}_health/dead_layers`` and ``{log_prefix}_health/runaway_layers`` count them at every measurement
    (see :class:`~lightning_rwc.decide.HealthCheck` for the rules).

    Args:
        factor: how many times the median RWC makes a layer a runaway.
        patience: measurements in a row a layer must meet a condition to be flagged.
        head_factor: the same for the last layer (a classifier head), which moves more as a matter of course.

    Example::

        >>> HealthFlags().check.factor
        30.0
    """

    def __init__(self, factor: float = 30.0, patience: int = 2, head_factor: float = 300.0) -> None:
        self.check = HealthCheck(factor=factor, patience=patience, head_factor=head_factor)
        self._warn = WarnOnce(rank_zero_warn)
        self._head = health_prefix()

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, rwc: RelativeWeightChange) -> None:
        self._head = health_prefix(rwc.log_prefix)

    @override
    def on_measurement(self, trainer: pl.Trainer, record: Record) -> None:
        dead, runaway = self.check.update(record.values)
        self._warn.many(
            "dead",
            dead,
            "Layer {layer} did not change at all while the rest of the network did: is it missing from the "
            "optimizer, or is its learning rate 0?",
            "{count} layers did not change at all while the rest of the network did ({names}): are they missing "
            "from the optimizer, or frozen without requires_grad=False?",
        )
        self._warn.many(
            "runaway",
            runaway,
            f"Layer {{layer}} changes over {self.check.factor:g}x as much as the median layer: check its learning "
            "rate and initialisation (its RWC curve shows how far it runs away).",
            f"{{count}} layers change over {self.check.factor:g}x as much as the median layer ({{names}}): check "
            "their learning rates and initialisation.",
        )
        record.extra[f"{self._head}/dead_layers"] = float(len(self.check.dead))
        record.extra[f"{self._head}/runaway_layers"] = float(len(self.check.runaway))
