"""The layers clustered during training, with ids that stay stable from one clustering to the next."""

from __future__ import annotations

from typing import TYPE_CHECKING

from typing_extensions import override

from lightning_rwc.keys import cluster_prefix
from lightning_rwc.parts.base import Part
from lightning_rwc.validate import check_count

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_rwc.callback import RelativeWeightChange
    from lightning_rwc.clustering import ClusterResult


class LiveClustering(Part):
    """Cluster the layers of ``callback.history`` every ``every_n_epochs`` epochs and log each cluster's summary.

    Logs ``{log_prefix}_cluster/{id}/{mean,lower,upper}``: the latest value of each live cluster's mean and
    quartiles (see :func:`~lightning_rwc.clustering.cluster_layers`). Ids stay stable from one clustering to the
    next. It reads ``callback.history``, so the callback needs a :class:`~lightning_rwc.parts.History` part.
    When it cannot cluster (fewer than two measurements or three layers, or no history), it says why: once when
    the reason appears, and at the end of training if it never clustered.

    Args:
        every_n_epochs: cluster at the end of every n-th epoch (once two measurements are known).

    Example::

        >>> LiveClustering(every_n_epochs=2).result is None
        True
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        check_count("every_n_epochs", every_n_epochs)
        self.every_n_epochs = every_n_epochs
        self.result: ClusterResult | None = None
        """The latest clustering."""
        self._rwc: RelativeWeightChange | None = None
        self._why_not = "no epoch ended"

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, rwc: RelativeWeightChange) -> None:
        self._rwc = rwc

    @override
    def epoch_end(self, trainer: pl.Trainer, rwc: RelativeWeightChange) -> None:
        from lightning_rwc.clustering import cluster_layers

        history = rwc.history
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if history is None:
            self._why_not = "the callback keeps no history: add a History part"
            rwc.warn("cluster-history", f"LiveClustering cannot cluster: {self._why_not}.")
            return
        if len(history) < 2:
            self._why_not = f"{len(history)} measurement(s) so far, and clustering needs 2"
            return
        try:
            result = cluster_layers(history, previous=self.result)
        except ValueError as err:
            self._why_not = str(err)
            rwc.warn("cluster", f"Live clustering skipped: {err}")
            return
        self.result = result
        head, metrics = cluster_prefix(rwc.log_prefix), {}
        for summary in result.summaries:
            for key, curve in (("mean", summary.mean), ("lower", summary.lower), ("upper", summary.upper)):
                metrics[f"{head}/{summary.cluster_id}/{key}"] = float(curve[-1])
        rwc.log_scalars(trainer, metrics, trainer.global_step, metrics)

    @override
    def close(self, trainer: pl.Trainer) -> None:
        if self.result is None and self._rwc is not None:
            self._rwc.warn("cluster-never", f"LiveClustering did not cluster in this run: {self._why_not}.")
