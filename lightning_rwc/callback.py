"""Relative Weight Change Monitor.

Measures how much each layer's weights change between consecutive measurements and logs it through every logger
attached to the Trainer.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_rwc.history import RWCHistory
from lightning_rwc.keys import ALL_KEY, CLUSTER_PREFIX, DEFAULT_PREFIX
from lightning_rwc.tracker import (
    Norm,
    ParamSelection,
    WeightChangeTracker,
    compile_patterns,
    is_sharded,
    validate_norm,
    validate_params,
)

if TYPE_CHECKING:
    from lightning_rwc.clustering import ClusterResult

STATE_VERSION = 1


class RelativeWeightChange(Callback):
    r"""Log the relative weight change (RWC) of every layer during training.

    At the end of every ``every_n_epochs``-th training epoch, and/or after every ``every_n_steps``-th optimizer step,
    each tracked layer's ``||W(t) - W(t-1)||_1 / ||W(t-1)||_1`` is computed on the device where its weights live
    (see :class:`~lightning_rwc.WeightChangeTracker`) and logged with ``step=trainer.global_step``. The first
    measurement is against the weights at the start of training.

    Logged metrics:

    - ``{log_prefix}/{parameter name}``: the RWC of one tracked parameter, for example ``rwc/layer1.0.conv1.weight``.
    - ``{log_prefix}/_all``: the RWC of all tracked weights taken as one vector.
    - ``rwc_cluster/{id}/{mean,lower,upper}``: with ``cluster_every_n_epochs``, the latest value of each live
      cluster's mean and quartiles.

    With a :class:`~lightning.pytorch.loggers.TensorBoardLogger` it also writes, once per run, a custom-scalars
    layout with one chart per top-level block, a histogram ``{log_prefix}/distribution`` of the per-layer values at
    each measurement and, with ``log_heatmap``, an image ``{log_prefix}/heatmap`` of all curves so far. The values
    are kept in :attr:`history` and in the callback's checkpoint state, so a resumed
    run continues its curves.

    Args:
        every_n_epochs: measure at the end of every n-th training epoch; ``None`` to measure by steps only.
        every_n_steps: measure after every n-th optimizer step (``trainer.global_step``, so gradient accumulation is
            respected); ``None`` to measure by epochs only.
        norm: ``"l1"`` (the paper's formula), ``"l2"`` or ``"elementwise"`` (the original code's mean of element
            ratios).
        params: ``"weights"`` (trainable tensors with more than one dimension) or ``"trainable"`` (all trainable).
        include: regular expressions; only parameters whose name matches one are tracked.
        exclude: regular expressions; parameters whose name matches one are not tracked.
        log_prefix: prefix of the logged keys.
        snapshot_device: ``None`` keeps the snapshot beside the weights; ``"cpu"`` keeps it in host memory.
        cluster_every_n_epochs: when set, cluster the layers every n epochs during training (see
            :func:`~lightning_rwc.clustering.cluster_layers`) and log each cluster's summary; cluster ids stay stable
            from one clustering to the next.
        log_heatmap: with TensorBoard, also log the layers x measurements heatmap so far as an image
            ``{log_prefix}/heatmap`` at each measurement.

    Distributed training: with replicated weights (DDP) rank zero measures alone, with no collective; with
    sharded weights (FSDP2: ``ModelParallelStrategy`` with ``fully_shard`` in ``configure_model``) every rank
    reduces its own shard and one all-reduce per measurement combines them, so no rank gathers full weights.

    Raises:
        ValueError: if an argument has an invalid value, or neither ``every_n_epochs`` nor ``every_n_steps`` is set.
        MisconfigurationException: at ``setup``, for ``FSDPStrategy`` (FSDP1) and ``DeepSpeedStrategy``, whose
            flattened shards hide the layers' shapes.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_rwc import RelativeWeightChange
        >>> rwc = RelativeWeightChange(every_n_epochs=1)
        >>> trainer = Trainer(callbacks=[rwc])
    """

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        norm: Norm = "l1",
        params: ParamSelection = "weights",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        log_prefix: str = DEFAULT_PREFIX,
        snapshot_device: str | None = None,
        cluster_every_n_epochs: int | None = None,
        log_heatmap: bool = False,
    ) -> None:
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("every_n_steps", every_n_steps),
            ("cluster_every_n_epochs", cluster_every_n_epochs),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
        if every_n_epochs is None and every_n_steps is None:
            raise ValueError("Set every_n_epochs or every_n_steps (or both): with both None nothing is measured")
        validate_norm(norm)
        validate_params(params)
        compile_patterns(include, "include")
        compile_patterns(exclude, "exclude")
        if not isinstance(log_prefix, str) or not log_prefix or "/" in log_prefix:
            raise ValueError(f"log_prefix must be a non-empty string without '/', got {log_prefix!r}")
        if snapshot_device not in (None, "cpu"):
            raise ValueError(f"snapshot_device must be None (beside the weights) or 'cpu', got {snapshot_device!r}")
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.norm = norm
        self.params = params
        self.include = include
        self.exclude = exclude
        self.log_prefix = log_prefix
        self.snapshot_device = snapshot_device
        self.cluster_every_n_epochs = cluster_every_n_epochs
        self.log_heatmap = log_heatmap
        self.history = RWCHistory()
        self.clusters: ClusterResult | None = None  # the latest live clustering
        self._tracker: WeightChangeTracker | None = None
        self._last_step = -1
        self._current_step = -1
        self._pending_snapshot: dict[str, Any] | None = None
        self._layout_written: set[int] = set()
        self._warned: set[str] = set()

    @property
    @override
    def state_key(self) -> str:
        return (
            f"{type(self).__qualname__}[every_n_epochs={self.every_n_epochs}, every_n_steps={self.every_n_steps}, "
            f"norm={self.norm}, log_prefix={self.log_prefix}]"
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy)):
            raise MisconfigurationException(
                f"RelativeWeightChange does not support {type(trainer.strategy).__name__}: its flattened parameter "
                "shards hide the layers' shapes. Use strategy='ddp', or ModelParallelStrategy() with "
                "torch.distributed.fsdp.fully_shard in configure_model (FSDP2), which it measures shard by shard."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.loggers:
            self._warn_once(
                "no-logger",
                "RelativeWeightChange found no logger: values are measured and kept in `callback.history` but not "
                "logged. Pass `logger=True` (TensorBoard) or another logger to the Trainer to see the curves.",
            )
        # Replicated weights (single device, DDP) are measured on rank zero alone, with no collective; sharded
        # (FSDP2) weights on every rank, each reducing its own shard, with one all-reduce per measurement.
        measures_here = trainer.is_global_zero or any(is_sharded(p) for p in pl_module.parameters())
        if self._tracker is None and measures_here:
            self._tracker = WeightChangeTracker(
                pl_module,
                norm=self.norm,
                params=self.params,
                include=self.include,
                exclude=self.exclude,
                snapshot_device=self.snapshot_device,
            )
            if self._pending_snapshot:
                self._tracker.load_snapshot(self._pending_snapshot)
        self._pending_snapshot = None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = self._current_step = trainer.global_step
        if self.every_n_steps and step > 0 and step != self._last_step and step % self.every_n_steps == 0:
            self._measure(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._current_step = trainer.global_step
        epoch_due = self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if epoch_due and trainer.global_step != self._last_step:
            self._measure(trainer)
        cluster_due = self.cluster_every_n_epochs and (trainer.current_epoch + 1) % self.cluster_every_n_epochs == 0
        if cluster_due and len(self.history) >= 2:
            self._cluster(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tracker = None

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.state_key not in checkpoint.get("callbacks", {}):
            self._warn_once(
                "no-state",
                "The checkpoint holds no RelativeWeightChange state (an older checkpoint, or other settings): the "
                "curves start again from the checkpoint's weights.",
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        state = {"version": STATE_VERSION, "history": self.history.to_dict(), "last_step": self._last_step}
        sharded = self._tracker is not None and any(is_sharded(t) for t in self._tracker.model.parameters())
        if self._tracker is not None and self._current_step != self._last_step and not sharded:
            # Saved between two measurements: the baseline is not the checkpoint's weights, so keep it.
            state["snapshot"] = self._tracker.snapshot_state()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = RWCHistory.from_dict(state_dict.get("history", {}))
        self._last_step = state_dict.get("last_step", -1)
        self._pending_snapshot = state_dict.get("snapshot")

    def _measure(self, trainer: pl.Trainer) -> None:
        if self._tracker is None:
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = self._tracker.step()
        for warning in caught:
            self._warn_once(str(warning.message), str(warning.message))
        step = trainer.global_step
        self._last_step = step
        if not values:
            return
        self.history.append(step, trainer.current_epoch, values)
        metrics = {f"{self.log_prefix}/{name}": value for name, value in values.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                self._write_tensorboard_extras(logger, values, step)
                logger.experiment.flush()  # a crash must not lose measurements already taken
            logger.save()

    def _write_tensorboard_extras(self, logger: TensorBoardLogger, values: dict[str, float], step: int) -> None:
        import numpy as np

        from lightning_rwc.tensorboard import heatmap_image, layer_layout

        if id(logger) not in self._layout_written:
            logger.experiment.add_custom_scalars(layer_layout([n for n in values if n != ALL_KEY], self.log_prefix))
            self._layout_written.add(id(logger))
        finite = np.array([v for n, v in values.items() if n != ALL_KEY], dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            logger.experiment.add_histogram(f"{self.log_prefix}/distribution", finite, global_step=step)
        if self.log_heatmap:
            image = heatmap_image(self.history.values)
            logger.experiment.add_image(f"{self.log_prefix}/heatmap", image, global_step=step, dataformats="CHW")

    def _cluster(self, trainer: pl.Trainer) -> None:
        from lightning_rwc.clustering import cluster_layers

        try:
            result = cluster_layers(self.history, previous=self.clusters)
        except ValueError as err:
            self._warn_once("cluster", f"Live clustering skipped: {err}")
            return
        self.clusters = result
        metrics = {}
        for summary in result.summaries:
            for key, curve in (("mean", summary.mean), ("lower", summary.lower), ("upper", summary.upper)):
                metrics[f"{CLUSTER_PREFIX}/{summary.cluster_id}/{key}"] = float(curve[-1])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)
