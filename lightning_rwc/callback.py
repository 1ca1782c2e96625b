"""Relative Weight Change Monitor.

Measures how much each layer's weights change between consecutive measurements and logs it through every logger
attached to the Trainer.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_rwc.decide.health import HealthCheck
from lightning_rwc.history import RWCHistory
from lightning_rwc.keys import ALL_KEY, DEFAULT_PREFIX, cluster_prefix, health_prefix, values_folder
from lightning_rwc.measure import Norm, ParamSelection, WeightChangeTracker
from lightning_rwc.measure.backends import Kernel
from lightning_rwc.measure.sharding import is_sharded
from lightning_rwc.measure.tracker import Measurement, check_settings
from lightning_rwc.tensorboard import heatmap_image, layer_layout, log_and_find_head, write_scalars
from lightning_rwc.validate import check_choice
from lightning_rwc.values_file import ValuesWriter
from lightning_rwc.warn_once import WarnOnce

if TYPE_CHECKING:
    from lightning_rwc.clustering import ClusterResult

STATE_VERSION = 2  # 2: the history as RWCHistory.state() (tensors); 1: as RWCHistory.to_dict() (lists)

HISTOGRAMS = ("epoch", "measurement")

Listener = Callable[[pl.Trainer, int, Measurement], None]


class RelativeWeightChange(Callback):
    r"""Log the relative weight change (RWC) of every layer during training.

    At the end of every ``every_n_epochs``-th training epoch, and/or after every ``every_n_steps``-th optimizer step,
    each tracked layer's ``||W(t) - W(t-1)||_1 / ||W(t-1)||_1`` is computed on the device where its weights live
    (see :class:`~lightning_rwc.WeightChangeTracker`) and logged with ``step=trainer.global_step``. The first
    measurement is against the weights at the start of training.

    Logged metrics:

    - ``{log_prefix}/{parameter name}``: the RWC of one tracked parameter, for example ``rwc/layer1.0.conv1.weight``.
    - ``{log_prefix}/_all``: the RWC of all tracked weights taken as one vector.
    - ``{log_prefix}_cluster/{id}/{mean,lower,upper}``: with ``cluster_every_n_epochs``, the latest value of each
      live cluster's mean and quartiles.
    - ``{log_prefix}_health/dead_layers`` and ``{log_prefix}_health/runaway_layers``: with ``check_health``, how
      many layers are flagged at each measurement.

    ``trainer.callback_metrics`` receives ``{log_prefix}/_all``, the cluster and health keys, and each per-layer key
    that a callback or learning-rate scheduler monitors, so ``EarlyStopping(monitor="rwc/_all")`` or
    ``ModelCheckpoint(monitor="rwc/fc.weight")`` can use them (under DDP rank zero then broadcasts its values to the
    other ranks); every value is in :attr:`history` and in the loggers. With a
    :class:`~lightning.pytorch.loggers.TensorBoardLogger` the values of one measurement are written as one event,
    under the same tags as its ``log_metrics`` (``TensorBoardLogger(prefix="train")`` gives ``train-rwc/...``); it
    also writes, once per run, a custom-scalars layout with one chart per block, a histogram
    ``{log_prefix}/distribution`` of the per-layer values (see ``log_histogram``) and, with ``log_heatmap``, an image
    ``{log_prefix}/heatmap`` of all curves so far at each epoch end. The values are kept in :attr:`history` (bounded,
    see ``history_capacity``) and in the callback's checkpoint state, so a resumed run continues its curves.

    On CUDA a measurement does not make the host wait for the device: its sums travel to the host behind the
    measuring kernels and are read at a later batch end, and at the latest at the epoch end, the end of training, a
    checkpoint or an exception; they are logged at the step they were measured at. Loggers are flushed at most every
    ``flush_every_s`` seconds, and always at epoch ends, at the end of training and on exceptions (``SIGTERM``
    included).

    With ``write_values``, rank zero also appends every measurement to a compact binary values file beside the logs
    (``{log_prefix}_values`` in ``trainer.log_dir``), which :func:`~lightning_rwc.history.load_history` and the
    ``lightning-rwc cluster`` command read instead of the event files: in a fraction of a second however long the
    run, where event files take about 4.5 us a value (see :mod:`lightning_rwc.values_file`).

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
        kernel: how CUDA weights are measured: ``"auto"`` (a fused Triton kernel where it works), ``"foreach"``
            (PyTorch's multi-tensor kernels) or ``"triton"`` (see :class:`~lightning_rwc.WeightChangeTracker`).
        cluster_every_n_epochs: when set, cluster the layers every n epochs during training (see
            :func:`~lightning_rwc.clustering.cluster_layers`) and log each cluster's summary; cluster ids stay stable
            from one clustering to the next.
        log_heatmap: with TensorBoard, also log the layers x measurements heatmap so far as an image
            ``{log_prefix}/heatmap`` at each epoch end (at most 512 x 1024 pixels, however long the run).
        log_histogram: with TensorBoard, when to log the histogram of the per-layer values: ``"epoch"`` (of the
            latest measurement, at each epoch end), ``"measurement"`` (at each measurement) or ``None``.
        flush_every_s: the longest time, in seconds, a logged measurement may wait in the loggers' buffers before
            they are flushed (``0`` flushes after every measurement).
        history_capacity: the most measurements :attr:`history` keeps (and the checkpoint stores), evenly spread
            over the run however long it is (see :class:`~lightning_rwc.history.RWCHistory`); ``None`` keeps all.
            The loggers receive every measurement.
        check_health: flag dead layers (not changing at all while the rest does: often a parameter missing from the
            optimizer) and runaway ones (changing 30x more than the median layer), each with one warning, and log
            how many there are (see :class:`~lightning_rwc.decide.HealthCheck`).
        write_values: also append every measurement to the values file (above); turn it on from the start of a run,
            since the readers then take it for the whole run.

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
        kernel: Kernel = "auto",
        cluster_every_n_epochs: int | None = None,
        log_heatmap: bool = False,
        log_histogram: Literal["epoch", "measurement"] | None = "epoch",
        flush_every_s: float = 10.0,
        check_health: bool = True,
        history_capacity: int | None = 200,
        write_values: bool = False,
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
        check_settings(norm, params, include, exclude, kernel)
        if not isinstance(log_prefix, str) or not log_prefix or "/" in log_prefix:
            raise ValueError(f"log_prefix must be a non-empty string without '/', got {log_prefix!r}")
        if snapshot_device not in (None, "cpu"):
            raise ValueError(f"snapshot_device must be None (beside the weights) or 'cpu', got {snapshot_device!r}")
        if log_histogram is not None:
            check_choice("log_histogram", log_histogram, HISTOGRAMS)
        if isinstance(flush_every_s, bool) or not isinstance(flush_every_s, (int, float)) or not flush_every_s >= 0:
            raise ValueError(f"flush_every_s must be a number of seconds >= 0, got {flush_every_s!r}")
        switches = {"log_heatmap": log_heatmap, "check_health": check_health, "write_values": write_values}
        for name, value in switches.items():
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.norm = norm
        self.params = params
        self.include = include
        self.exclude = exclude
        self.log_prefix = log_prefix
        self.snapshot_device = snapshot_device
        self.kernel = kernel
        self.cluster_every_n_epochs = cluster_every_n_epochs
        self.log_heatmap = log_heatmap
        self.log_histogram = log_histogram
        self.flush_every_s = float(flush_every_s)
        self.history_capacity = history_capacity
        self.write_values = write_values
        self.history = RWCHistory(capacity=history_capacity)
        self._latest: dict[str, float] = {}  # the values of the latest measurement (the history may not hold it)
        self._latest_step = -1
        self.clusters: ClusterResult | None = None  # the latest live clustering
        self._tracker: WeightChangeTracker | None = None
        self._last_step = -1
        self._current_step = -1
        self._pending_snapshot: dict[str, Any] | None = None
        self._in_flight: deque[tuple[int, int, Measurement]] = deque()  # (step, epoch, measurement), oldest first
        self._unlogged: list[tuple[int, int, Measurement]] = []  # in the history, not yet logged: (step, epoch, ...)
        self._unflushed_since: float | None = None  # when the oldest value not yet flushed was logged
        self._tag_heads: dict[int, str | None] = {}  # per TensorBoard logger: what its tags put before each key
        self._values_dir: Path | None = None  # where rank zero writes the values file, with write_values
        self._values_file: ValuesWriter | None = None
        self._share = False  # whether rank zero hands its values to ranks that do not measure
        self._monitors: set[str] = {f"{log_prefix}/{ALL_KEY}"}  # the per-layer keys put in callback_metrics
        self._names: list[str] = []  # the names of the latest measurement, and their metric keys
        self._keys: list[str] = []
        self._listeners: list[Listener] = []
        self._health = HealthCheck() if check_health else None
        self._warn = WarnOnce(rank_zero_warn)

    @property
    @override
    def state_key(self) -> str:
        settings = {
            "every_n_epochs": self.every_n_epochs,
            "every_n_steps": self.every_n_steps,
            "norm": self.norm,
            "params": self.params,
            "include": _patterns(self.include),
            "exclude": _patterns(self.exclude),
            "log_prefix": self.log_prefix,
        }
        return f"{type(self).__qualname__}{settings}"

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
            self._warn(
                "no-logger",
                "RelativeWeightChange found no logger: values are measured and kept in `callback.history` but not "
                "logged. Pass `logger=True` (TensorBoard) or another logger to the Trainer to see the curves.",
            )
        # Replicated weights (single device, DDP) are measured on rank zero alone, with no collective; sharded
        # (FSDP2) weights on every rank, each reducing its own shard, with one all-reduce per measurement.
        sharded = any(is_sharded(p) for p in pl_module.parameters())
        monitored = self._monitored(trainer)
        self._monitors = {f"{self.log_prefix}/{ALL_KEY}", *monitored}
        self._share = trainer.world_size > 1 and not sharded and bool(monitored or self._listeners)
        if self.write_values:  # trainer.log_dir is a collective: every rank asks
            log_dir = trainer.log_dir
            self._values_dir = None if log_dir is None else Path(log_dir) / values_folder(self.log_prefix)
            if log_dir is None:
                self._warn(
                    "no-log-dir",
                    "write_values=True, but the first logger has no directory: no values file is written. Put a "
                    "TensorBoardLogger or CSVLogger first in the Trainer's loggers.",
                )
        if self._tracker is None and (trainer.is_global_zero or sharded):
            self._tracker = WeightChangeTracker(
                pl_module,
                norm=self.norm,
                params=self.params,
                include=self.include,
                exclude=self.exclude,
                snapshot_device=self.snapshot_device,
                kernel=self.kernel,
                warn=rank_zero_warn,
            )
            if self._pending_snapshot:
                try:
                    self._tracker.load_snapshot(self._pending_snapshot)
                except ValueError as err:  # a checkpoint of another model: its baseline does not fit this one
                    self._tracker.reset()
                    self._warn(
                        "snapshot",
                        f"The checkpoint's baseline does not fit this model ({err}): the curves "
                        "start again from the checkpoint's weights.",
                    )
        self._pending_snapshot = None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = self._current_step = trainer.global_step
        if self.every_n_steps and step > 0 and step != self._last_step and step % self.every_n_steps == 0:
            self._start(trainer)
        self._collect(wait=False)
        self._emit(trainer)
        self._flush(trainer, force=False)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._current_step = trainer.global_step
        epoch_due = self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if epoch_due and trainer.global_step != self._last_step:
            self._start(trainer)
        self._collect(wait=True)
        self._emit(trainer)
        if self._latest and trainer.is_global_zero:
            self._write_epoch_images(trainer)
        cluster_due = self.cluster_every_n_epochs and (trainer.current_epoch + 1) % self.cluster_every_n_epochs == 0
        if cluster_due and len(self.history) >= 2:
            self._cluster(trainer)
        self._flush(trainer, force=True)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(wait=True)
        self._emit(trainer)
        self._flush(trainer, force=True)
        self._close_values_file()
        self._tracker = None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # An interrupted run (an error, Ctrl-C, SIGTERM) keeps every measurement already taken.
        try:
            self._collect(wait=True)
            self._emit(trainer)
            self._flush(trainer, force=True)
            self._close_values_file()
        except Exception as err:  # the device may be what failed: say so, and let the original exception through
            self._warn("exception", f"RelativeWeightChange could not save its last measurements: {err}")

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.state_key not in checkpoint.get("callbacks", {}):
            self._warn(
                "no-state",
                "The checkpoint holds no RelativeWeightChange state (an older checkpoint, or other settings): the "
                "curves start again from the checkpoint's weights.",
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        self._collect(wait=True)  # a checkpoint holds every measurement taken; they are logged at the next hook
        state = {"version": STATE_VERSION, "history": self.history.state(), "last_step": self._last_step}
        tracker = self._tracker
        if tracker is not None and self._current_step != self._last_step and not tracker.sharded:
            # Saved between two measurements: the baseline is not the checkpoint's weights, so keep it.
            state["snapshot"] = tracker.snapshot_state()
        if self._unlogged:  # in the history, but not yet handed to the loggers and listeners: they get them on resume
            state["unlogged"] = [
                {"step": step, "epoch": epoch, "values": m.values(), "names": m.sums()[0], "sums": m.sums()[1]}
                for step, epoch, m in self._unlogged
            ]
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        history = state_dict.get("history", {})
        if state_dict.get("version", 1) == 1:
            self.history = RWCHistory.from_dict(history)
            self.history.capacity = self.history_capacity
        else:
            self.history = RWCHistory.from_state(history)
        self._last_step = state_dict.get("last_step", -1)
        self._pending_snapshot = state_dict.get("snapshot")
        self._unlogged = [
            (entry["step"], entry.get("epoch", -1), Measurement.of(entry["values"], entry["names"], entry["sums"]))
            for entry in state_dict.get("unlogged", [])
        ]

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(trainer, step, measurement)`` for every measurement, in order, once its values are known.

        The measurement (:class:`~lightning_rwc.measure.Measurement`) holds the values and the per-tensor sums;
        ``step`` is the global step it was taken at. Under DDP rank zero's measurement reaches every rank, so that
        all of them see the same values. This is how :class:`~lightning_rwc.LayerFreezer` reuses the measurements.
        """
        self._listeners.append(listener)

    def _check_health(self, values: dict[str, float]) -> dict[str, float]:
        """Warn once about each layer newly found dead or running away; the numbers of both, as scalars."""
        dead, runaway = self._health.update(values)
        for layer in dead:
            self._warn(
                ("dead", layer),
                f"Layer {layer!r} did not change at all while the rest of the network did: is it missing from the "
                "optimizer, or is its learning rate 0?",
            )
        for layer in runaway:
            factor = self._health.factor
            self._warn(
                ("runaway", layer),
                f"Layer {layer!r} changes over {factor:g}x as much as the median layer: check its learning rate and "
                "initialisation (its RWC curve shows how far it runs away).",
            )
        head = health_prefix(self.log_prefix)
        return {
            f"{head}/dead_layers": float(len(self._health.dead)),
            f"{head}/runaway_layers": float(len(self._health.runaway)),
        }

    def _monitored(self, trainer: pl.Trainer) -> set[str]:
        """The keys this callback logs that a callback or learning-rate scheduler monitors."""
        monitors = [getattr(callback, "monitor", None) for callback in trainer.callbacks]
        monitors += [config.monitor for config in trainer.lr_scheduler_configs]
        heads = (f"{self.log_prefix}/", f"{cluster_prefix(self.log_prefix)}/", f"{health_prefix(self.log_prefix)}/")
        return {monitor for monitor in monitors if isinstance(monitor, str) and monitor.startswith(heads)}

    def _start(self, trainer: pl.Trainer) -> None:
        """Launch a measurement (this rank's part of it); its values are collected when they have arrived."""
        self._last_step = trainer.global_step
        if self._tracker is None and not self._share:
            return
        measurement = Measurement.of({}) if self._tracker is None else self._tracker.measure()
        if self._share:  # every rank's monitors and listeners need the values: rank zero measured them
            shared = trainer.strategy.broadcast((measurement.values(), *measurement.sums()), src=0)
            measurement = Measurement.of(*shared)
        self._in_flight.append((trainer.global_step, trainer.current_epoch, measurement))

    def _collect(self, wait: bool) -> None:
        """Move measurements whose values have arrived (all of them with ``wait``) into the history, in order."""
        while self._in_flight and (wait or self._in_flight[0][2].ready()):
            step, epoch, measurement = self._in_flight.popleft()
            values = measurement.values()
            if values:
                self.history.append(step, epoch, values)
                self._unlogged.append((step, epoch, measurement))
                self._latest, self._latest_step = values, step

    def _emit(self, trainer: pl.Trainer) -> None:
        """Hand the collected measurements on, in order: loggers (at their steps), health check, listeners."""
        unlogged, self._unlogged = self._unlogged, []
        for step, epoch, measurement in unlogged:
            values = measurement.values()
            metrics = dict(zip(self._metric_keys(values), values.values(), strict=True))
            health = {} if self._health is None else self._check_health(values)
            exported = {key: metrics[key] for key in self._monitors if key in metrics} | health
            self._log(trainer, metrics | health, step, exported)
            if self._values_dir is not None and trainer.is_global_zero:
                self._values_file = self._values_file or ValuesWriter(self._values_dir)
                self._values_file.append(step, epoch, values)
            if self.log_histogram == "measurement" and trainer.is_global_zero:
                self._write_histogram(trainer, values, step)
            for listener in self._listeners:
                listener(trainer, step, measurement)

    def _metric_keys(self, values: dict[str, float]) -> list[str]:
        """``{log_prefix}/{name}`` for each name of ``values``, remembered while the names stay the same."""
        names = list(values)
        if names != self._names:
            self._names, self._keys = names, [f"{self.log_prefix}/{name}" for name in names]
        return self._keys

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float], step: int, exported: dict[str, float]) -> None:
        """``metrics`` to every logger (TensorBoard in one event), ``exported`` to ``trainer.callback_metrics``.

        The loggers come last: TensorBoard's writer thread then encodes the event while training goes on, instead of
        competing for the interpreter with the rest of this hook.
        """
        values = torch.tensor(list(exported.values())).unbind()  # one tensor viewed per key: cheaper than one each
        trainer.callback_metrics.update(zip(exported, values, strict=True))
        if self._unflushed_since is None:
            self._unflushed_since = time.monotonic()
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                if id(logger) not in self._tag_heads:  # the first values show how the logger names its tags
                    self._tag_heads[id(logger)] = head = log_and_find_head(logger, metrics, step)
                    self._write_layout(logger, metrics, head or "")
                    continue
                head = self._tag_heads[id(logger)]
                if head is not None and write_scalars(logger.experiment, metrics, step, head):
                    continue
            logger.log_metrics(metrics, step=step)

    def _flush(self, trainer: pl.Trainer, force: bool) -> None:
        """Flush every logger if a logged value has waited ``flush_every_s`` (or, with ``force``, at all)."""
        since = self._unflushed_since
        if since is None or not (force or time.monotonic() - since >= self.flush_every_s):
            return
        for logger in trainer.loggers:
            logger.save()  # TensorBoard: flushes the event file; CSV: writes the rows
        if self._values_file is not None:
            self._values_file.flush()
        self._unflushed_since = None

    def _close_values_file(self) -> None:
        if self._values_file is not None:
            self._values_file.close()
        self._values_file = None

    def _write_layout(self, logger: TensorBoardLogger, metrics: dict[str, float], tag_head: str) -> None:
        head = f"{self.log_prefix}/"
        names = [key[len(head) :] for key in metrics if key.startswith(head) and key != head + ALL_KEY]
        logger.experiment.add_custom_scalars(layer_layout(names, tag_head + self.log_prefix))

    def _write_histogram(self, trainer: pl.Trainer, values: dict[str, float], step: int) -> None:
        import numpy as np

        finite = [value for name, value in values.items() if name != ALL_KEY and math.isfinite(value)]
        for logger in _tensorboard_loggers(trainer):
            if finite:
                logger.experiment.add_histogram(f"{self.log_prefix}/distribution", np.array(finite), global_step=step)

    def _write_epoch_images(self, trainer: pl.Trainer) -> None:
        """The epoch-end histogram of the latest measurement and, with ``log_heatmap``, the heatmap so far."""
        step = self._latest_step
        if self.log_histogram == "epoch":
            self._write_histogram(trainer, self._latest, step)
        if self.log_heatmap:
            image = heatmap_image(self.history.values)
            for logger in _tensorboard_loggers(trainer):
                logger.experiment.add_image(f"{self.log_prefix}/heatmap", image, global_step=step, dataformats="CHW")

    def _cluster(self, trainer: pl.Trainer) -> None:
        from lightning_rwc.clustering import cluster_layers

        try:
            result = cluster_layers(self.history, previous=self.clusters)
        except ValueError as err:
            self._warn("cluster", f"Live clustering skipped: {err}")
            return
        self.clusters = result
        head, metrics = cluster_prefix(self.log_prefix), {}
        for summary in result.summaries:
            for key, curve in (("mean", summary.mean), ("lower", summary.lower), ("upper", summary.upper)):
                metrics[f"{head}/{summary.cluster_id}/{key}"] = float(curve[-1])
        self._log(trainer, metrics, trainer.global_step, metrics)


def _tensorboard_loggers(trainer: pl.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def _patterns(patterns: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """The patterns as a tuple, for the state key (one pattern or a list of one give the same key)."""
    return None if patterns is None else (patterns,) if isinstance(patterns, str) else tuple(patterns)
