"""Every measurement to every logger of the Trainer: TensorBoard's in one event, with its layout; timed flushes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

from lightning_rwc.keys import ALL_KEY, DEFAULT_PREFIX
from lightning_rwc.parts.base import Part
from lightning_rwc.tensorboard import layer_layout, log_and_find_head, use_fast_checksums, write_scalars
from lightning_rwc.validate import check_seconds

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_rwc.callback import RelativeWeightChange


class Loggers(Part):
    """Log every scalar through every logger attached to the Trainer, at the step it was measured at.

    With a :class:`~lightning.pytorch.loggers.TensorBoardLogger` the scalars of one measurement are written as one
    event, under the same tags as its ``log_metrics`` (``TensorBoardLogger(prefix="train")`` gives
    ``train-rwc/...``), and a custom-scalars layout with one chart per block (:mod:`lightning_rwc.blocks`) is
    written once per run. Loggers are flushed when a logged value has waited ``flush_every_s`` seconds, and always
    at epoch ends, at the end of training and on exceptions (``SIGTERM`` included).

    Args:
        flush_every_s: the longest time, in seconds, a logged value may wait in the loggers' buffers (``0`` flushes
            after every measurement).

    Raises:
        ValueError: if ``flush_every_s`` is not a number of seconds >= 0.

    Example::

        >>> Loggers(flush_every_s=0).flush_every_s
        0.0
    """

    def __init__(self, flush_every_s: float = 10.0) -> None:
        check_seconds("flush_every_s", flush_every_s)
        self.flush_every_s = float(flush_every_s)
        self._prefix = DEFAULT_PREFIX
        self._heads: dict[int, str | None] = {}  # per TensorBoard logger: what its tags put before each key
        self._unflushed_since: float | None = None  # when the oldest value not yet flushed was logged

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, rwc: RelativeWeightChange) -> None:
        self._prefix = rwc.log_prefix
        if any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
            use_fast_checksums()
        if not trainer.loggers:
            rwc.warn(
                "no-logger",
                "RelativeWeightChange found no logger: values are measured and kept in `callback.history` but not "
                "logged. Pass `logger=True` (TensorBoard) or another logger to the Trainer to see the curves.",
            )

    @override
    def write(self, trainer: pl.Trainer, step: int, scalars: dict[str, float]) -> None:
        if self._unflushed_since is None:
            self._unflushed_since = time.monotonic()
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                if id(logger) not in self._heads:  # the first values show how the logger names its tags
                    self._heads[id(logger)] = head = log_and_find_head(logger, scalars, step)
                    self._write_layout(logger, scalars, head or "")
                    continue
                head = self._heads[id(logger)]
                if head is not None and write_scalars(logger.experiment, scalars, step, head):
                    continue
            logger.log_metrics(scalars, step=step)

    @override
    def flush(self, trainer: pl.Trainer, force: bool) -> None:
        since = self._unflushed_since
        if since is None or not (force or time.monotonic() - since >= self.flush_every_s):
            return
        for logger in trainer.loggers:
            logger.save()  # TensorBoard: flushes the event file; CSV: writes the rows
        self._unflushed_since = None

    def _write_layout(self, logger: TensorBoardLogger, scalars: dict[str, float], tag_head: str) -> None:
        head = f"{self._prefix}/"
        names = [key[len(head) :] for key in scalars if key.startswith(head) and key != head + ALL_KEY]
        if names:
            logger.experiment.add_custom_scalars(layer_layout(names, tag_head + self._prefix))
