"""Pictures of the measurements in TensorBoard: the histogram of the layers' values and the heatmap so far."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

from lightning_rwc.keys import ALL_KEY, DEFAULT_PREFIX
from lightning_rwc.parts.base import Part, Record
from lightning_rwc.tensorboard import heatmap_image
from lightning_rwc.validate import check_choice, choices

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_rwc.callback import RelativeWeightChange

HistogramTime = Literal["epoch", "measurement"]


class Histogram(Part):
    """With TensorBoard, the histogram ``{log_prefix}/distribution`` of the per-layer values.

    Args:
        every: ``"epoch"`` (of the latest measurement, at each epoch end) or ``"measurement"`` (at each one).

    Example::

        >>> Histogram(every="measurement").every
        'measurement'
    """

    def __init__(self, every: HistogramTime = "epoch") -> None:
        check_choice("every", every, choices(HistogramTime))
        self.every = every
        self._prefix = DEFAULT_PREFIX
        self._latest: Record | None = None

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, rwc: RelativeWeightChange) -> None:
        self._prefix = rwc.log_prefix

    @override
    def on_measurement(self, trainer: pl.Trainer, record: Record) -> None:
        self._latest = record
        if self.every == "measurement":
            self._write(trainer, record)

    @override
    def epoch_end(self, trainer: pl.Trainer, rwc: RelativeWeightChange) -> None:
        if self.every == "epoch" and self._latest is not None:
            self._write(trainer, self._latest)

    def _write(self, trainer: pl.Trainer, record: Record) -> None:
        import numpy as np

        finite = [value for name, value in record.values.items() if name != ALL_KEY and math.isfinite(value)]
        for logger in tensorboard_loggers(trainer):
            if finite:
                tag = f"{self._prefix}/distribution"
                logger.experiment.add_histogram(tag, np.array(finite), global_step=record.step)


class Heatmap(Part):
    """With TensorBoard, the image ``{log_prefix}/heatmap`` of every layer's curve so far, at each epoch end.

    Layers are rows, measurements columns, brighter is more change (``log10`` scale); the image is at most 512 x
    1024 pixels however long the run (see :func:`~lightning_rwc.tensorboard.heatmap_image`). It reads
    ``callback.history``, so the callback needs a :class:`~lightning_rwc.parts.History` part.

    Example::

        >>> from lightning_rwc import RelativeWeightChange
        >>> from lightning_rwc.parts import Heatmap, default_parts
        >>> rwc = RelativeWeightChange(parts=[*default_parts(), Heatmap()])
    """

    def __init__(self) -> None:
        self._step: int | None = None  # of the latest measurement (a bounded history may not hold it)

    @override
    def on_measurement(self, trainer: pl.Trainer, record: Record) -> None:
        self._step = record.step

    @override
    def epoch_end(self, trainer: pl.Trainer, rwc: RelativeWeightChange) -> None:
        history = rwc.history
        if history is None or self._step is None:
            return
        image = heatmap_image(history.values)
        for logger in tensorboard_loggers(trainer):
            logger.experiment.add_image(f"{rwc.log_prefix}/heatmap", image, global_step=self._step, dataformats="CHW")


def tensorboard_loggers(trainer: pl.Trainer) -> list[TensorBoardLogger]:
    """The Trainer's TensorBoard loggers, on rank zero (none elsewhere)."""
    if not trainer.is_global_zero:
        return []
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
