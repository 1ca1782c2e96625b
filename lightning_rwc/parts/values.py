"""Every measurement appended to the compact values file beside the logs (see :mod:`lightning_rwc.values_file`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from typing_extensions import override

from lightning_rwc.keys import values_folder
from lightning_rwc.parts.base import Part, Record
from lightning_rwc.values_file import ValuesWriter

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_rwc.callback import RelativeWeightChange


class ValuesFile(Part):
    """On rank zero, append every measurement to the values file ``{log_prefix}_values`` in ``trainer.log_dir``.

    :func:`~lightning_rwc.runs.load_history` and ``lightning-rwc cluster`` read it instead of the event files, in a
    fraction of a second however long the run. Add it from the start of a run, since the readers then take it for
    the whole run. The file is flushed after every batch, so the measurements outlive a killed process.

    Example::

        >>> from lightning_rwc import RelativeWeightChange
        >>> from lightning_rwc.parts import ValuesFile, default_parts
        >>> rwc = RelativeWeightChange(parts=[*default_parts(), ValuesFile()])
    """

    def __init__(self) -> None:
        self.directory: Path | None = None
        """Where the segments are written (set when training starts)."""
        self._writer: ValuesWriter | None = None

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, rwc: RelativeWeightChange) -> None:
        log_dir = trainer.log_dir  # a collective: every rank asks
        self.directory = None if log_dir is None else Path(log_dir) / values_folder(rwc.log_prefix)
        if log_dir is None:
            rwc.warn(
                "no-log-dir",
                "ValuesFile: the first logger has no directory, so no values file is written. Put a "
                "TensorBoardLogger or CSVLogger first in the Trainer's loggers.",
            )

    @override
    def on_measurement(self, trainer: pl.Trainer, record: Record) -> None:
        if self.directory is not None and trainer.is_global_zero:
            self._writer = self._writer or ValuesWriter(self.directory)
            self._writer.append(record.step, record.epoch, record.values)

    @override
    def flush(self, trainer: pl.Trainer, force: bool) -> None:
        if self._writer is not None:
            self._writer.flush()

    @override
    def close(self, trainer: pl.Trainer) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None
