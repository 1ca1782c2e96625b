"""Relative Weight Change Monitor.

Measures how much each layer's weights change between consecutive measurements and hands every measurement to its
parts (:mod:`lightning_rwc.parts`), which log it through every logger attached to the Trainer and more.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_rwc.history import RWCHistory
from lightning_rwc.keys import ALL_KEY, DEFAULT_PREFIX, cluster_prefix, health_prefix
from lightning_rwc.measure import Measurement, MeasureSettings, Norm, ParamSelection, WeightChangeTracker
from lightning_rwc.measure.backends import Kernel
from lightning_rwc.measure.sharding import is_sharded
from lightning_rwc.parts import History, Part, Record, default_parts
from lightning_rwc.validate import check_count
from lightning_rwc.warn_once import WarnOnce

STATE_VERSION = 3  # 3: parts' states under "parts"; 2: the history at the top, as tensors; 1: as lists


class RelativeWeightChange(Callback):
    r"""Measure the relative weight change (RWC) of every layer during training and hand it to the parts.

    At the end of every ``every_n_epochs``-th training epoch, and/or after every ``every_n_steps``-th optimizer step,
    each tracked layer's ``||W(t) - W(t-1)||_1 / ||W(t-1)||_1`` is computed on the device where its weights live
    (see :class:`~lightning_rwc.WeightChangeTracker`); the first measurement is against the weights at the start of
    training. On CUDA a measurement does not make the host wait: its values are collected at a later batch end (at
    the latest at the epoch end, the end of training, a checkpoint or an exception) and handed, in the order they
    were taken and with the step they were taken at, to each part (:mod:`lightning_rwc.parts`). The default parts
    (:func:`~lightning_rwc.parts.default_parts`) keep the :attr:`history`, flag dead and runaway layers, log through
    every logger and write a histogram at epoch ends; add others (values file, heatmap, live clustering, your own)
    or leave some out with ``parts``.

    Logged metrics (default parts):

    - ``{log_prefix}/{parameter name}``: the RWC of one tracked parameter, for example ``rwc/layer1.0.conv1.weight``.
    - ``{log_prefix}/_all``: the RWC of all tracked weights taken as one vector.
    - ``{log_prefix}_health/dead_layers`` and ``{log_prefix}_health/runaway_layers``: how many layers are flagged.
    - with :class:`~lightning_rwc.parts.LiveClustering`: ``{log_prefix}_cluster/{id}/{mean,lower,upper}``.

    ``trainer.callback_metrics`` receives ``{log_prefix}/_all``, every scalar a part adds, and each per-layer key
    that a callback or learning-rate scheduler monitors, so ``EarlyStopping(monitor="rwc/_all")`` or
    ``ModelCheckpoint(monitor="rwc/fc.weight")`` can use them (under DDP rank zero then shares its values).

    Args:
        every_n_epochs: measure at the end of every n-th training epoch; ``None`` to measure by steps only.
        every_n_steps: measure after every n-th optimizer step (``trainer.global_step``, so gradient accumulation is
            respected); ``None`` to measure by epochs only.
        norm: ``"l1"`` (the paper's formula), ``"l2"`` or ``"elementwise"`` (the original code's mean of element
            ratios).
        params: ``"weights"`` (trainable tensors with more than one dimension) or ``"trainable"`` (all trainable).
        include: regular expressions; only parameters whose name matches one are tracked.
        exclude: regular expressions; parameters whose name matches one are not tracked.
        snapshot_device: ``None`` keeps the snapshot beside the weights; ``"cpu"`` keeps it in host memory.
        kernel: how CUDA weights are measured: ``"auto"``, ``"foreach"`` or ``"triton"`` (see the tracker).
        log_prefix: prefix of the logged keys.
        parts: what is done with each measurement; ``None`` for :func:`~lightning_rwc.parts.default_parts`.

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
        >>> trainer = Trainer(callbacks=[RelativeWeightChange()])
    """

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        norm: Norm = "l1",
        params: ParamSelection = "weights",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        snapshot_device: str | None = None,
        kernel: Kernel = "auto",
        log_prefix: str = DEFAULT_PREFIX,
        parts: Sequence[Part] | None = None,
    ) -> None:
        check_count("every_n_epochs", every_n_epochs, optional=True)
        check_count("every_n_steps", every_n_steps, optional=True)
        if every_n_epochs is None and every_n_steps is None:
            raise ValueError("Set every_n_epochs or every_n_steps (or both): with both None nothing is measured")
        if not isinstance(log_prefix, str) or not log_prefix or "/" in log_prefix:
            raise ValueError(f"log_prefix must be a non-empty string without '/', got {log_prefix!r}")
        parts = default_parts() if parts is None else list(parts)
        if not all(isinstance(part, Part) for part in parts):
            raise ValueError(f"parts must be Part instances (see lightning_rwc.parts), got {parts!r}")
        self.every_n_epochs, self.every_n_steps, self.log_prefix = every_n_epochs, every_n_steps, log_prefix
        self.settings = MeasureSettings(norm, params, include, exclude, snapshot_device, kernel)
        self.parts: list[Part] = parts
        self._tracker: WeightChangeTracker | None = None
        self._last_step = self._current_step = -1
        self._pending_snapshot: dict[str, torch.Tensor] | None = None
        self._in_flight: deque[tuple[int, int, Measurement]] = deque()  # (step, epoch, measurement), oldest first
        self._collected: list[tuple[int, int, Measurement]] = []  # arrived, not yet handed to the parts
        self._share = False  # whether rank zero hands its values to ranks that do not measure
        self._monitors: set[str] = {f"{log_prefix}/{ALL_KEY}"}  # the per-layer keys put in callback_metrics
        self._keys: dict[str, str] = {}  # layer -> metric key, kept while the layers stay the same
        self.warn = WarnOnce(rank_zero_warn)
        """Gives a rank-zero warning once per key for this callback and its parts."""

    @property
    def history(self) -> RWCHistory | None:
        """The measurements kept by the :class:`~lightning_rwc.parts.History` part (``None`` without one)."""
        kept = next((part for part in self.parts if isinstance(part, History)), None)
        return None if kept is None else kept.history

    @property
    @override
    def state_key(self) -> str:
        settings = {"every_n_epochs": self.every_n_epochs, "every_n_steps": self.every_n_steps}
        settings |= {"norm": self.settings.norm, "params": self.settings.params}
        settings |= {"include": self.settings.include, "exclude": self.settings.exclude, "log_prefix": self.log_prefix}
        return f"{type(self).__qualname__}{settings}"

    def attach(self, part: Part) -> None:
        """Add ``part`` before training starts (as :class:`~lightning_rwc.LayerFreezer` does with itself)."""
        if part not in self.parts:
            self.parts.append(part)

    def log_scalars(
        self, trainer: pl.Trainer, scalars: dict[str, float], step: int, exported: dict[str, float]
    ) -> None:
        """Hand ``scalars`` to every part's :meth:`~lightning_rwc.parts.Part.write`; ``exported`` to the metrics."""
        values = torch.tensor(list(exported.values()), dtype=torch.float64).unbind()  # one tensor viewed per key
        trainer.callback_metrics.update(zip(exported, values, strict=True))
        for part in self.parts:
            part.write(trainer, step, scalars)

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
        # Replicated weights (single device, DDP) are measured on rank zero alone, with no collective; sharded
        # (FSDP2) weights on every rank, each reducing its own shard, with one all-reduce per measurement.
        sharded = any(is_sharded(p) for p in pl_module.parameters())
        monitored = self._monitored(trainer)
        self._monitors = {f"{self.log_prefix}/{ALL_KEY}", *monitored}
        every_rank = any(part.every_rank for part in self.parts)
        self._share = trainer.world_size > 1 and not sharded and bool(monitored or every_rank)
        for part in self.parts:
            part.start(trainer, pl_module, self)
        if self._tracker is None and (trainer.is_global_zero or sharded):
            s = self.settings
            self._tracker = WeightChangeTracker(
                pl_module, s.norm, s.params, s.include, s.exclude, s.snapshot_device, s.kernel, warn=rank_zero_warn
            )
            if self._pending_snapshot:
                try:
                    self._tracker.load_state_dict(self._pending_snapshot)
                except ValueError as err:  # a checkpoint of another model: its baseline does not fit this one
                    self._tracker.reset()
                    self.warn(
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
        self._hand_over(trainer, wait=False)
        for part in self.parts:
            part.flush(trainer, force=False)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._current_step = trainer.global_step
        epoch_due = self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if epoch_due and trainer.global_step != self._last_step:
            self._start(trainer)
        self._hand_over(trainer, wait=True)
        for part in self.parts:
            part.epoch_end(trainer, self)
        for part in self.parts:
            part.flush(trainer, force=True)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)
        self._tracker = None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # An interrupted run (an error, Ctrl-C, SIGTERM) keeps every measurement already taken.
        try:
            self._finish(trainer)
        except Exception as err:  # the device may be what failed: say so, and let the original exception through
            self.warn("exception", f"RelativeWeightChange could not save its last measurements: {err}")

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.state_key not in checkpoint.get("callbacks", {}):
            self.warn(
                "no-state",
                "The checkpoint holds no RelativeWeightChange state (an older checkpoint, or "
                "other settings): the curves start again from the checkpoint's weights.",
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        self._collect(wait=True)  # a checkpoint holds every measurement taken; the parts get them at the next hook
        state: dict[str, Any] = {"version": STATE_VERSION, "last_step": self._last_step}
        state["parts"] = {
            _part_key(i, part): part.state_dict() for i, part in enumerate(self.parts) if not isinstance(part, Callback)
        }  # a part that is a callback is saved by Lightning
        tracker = self._tracker
        if tracker is not None and self._current_step != self._last_step and not tracker.sharded:
            state["snapshot"] = tracker.state_dict()  # saved between two measurements: keep the baseline
        state["collected"] = [
            {"step": step, "epoch": epoch, "values": m.values(), "names": m.sums()[0], "sums": m.sums()[1]}
            for step, epoch, m in self._collected
        ]
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        parts = dict(state_dict.get("parts", {}))
        if "history" in state_dict:  # versions 1 and 2: the history was the callback's own
            parts |= {
                _part_key(i, p): {"history": state_dict["history"]}
                for i, p in enumerate(self.parts)
                if isinstance(p, History)
            }
        for i, part in enumerate(self.parts):
            if _part_key(i, part) in parts:
                part.load_state_dict(parts[_part_key(i, part)])
        self._last_step = state_dict.get("last_step", -1)
        self._pending_snapshot = state_dict.get("snapshot")
        self._collected = [
            (entry["step"], entry.get("epoch", -1), Measurement.of(entry["values"], entry["names"], entry["sums"]))
            for entry in state_dict.get("collected", state_dict.get("unlogged", []))
        ]

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
        if self._share:  # every rank's monitors and parts need the values: rank zero measured them
            shared = trainer.strategy.broadcast((measurement.values(), *measurement.sums()), src=0)
            measurement = Measurement.of(*shared)
        self._in_flight.append((trainer.global_step, trainer.current_epoch, measurement))

    def _collect(self, wait: bool) -> None:
        """Move measurements whose values have arrived (all of them with ``wait``) to the collected ones, in order."""
        while self._in_flight and (wait or self._in_flight[0][2].ready()):
            self._collected.append(self._in_flight.popleft())

    def _hand_over(self, trainer: pl.Trainer, wait: bool) -> None:
        """Hand each collected measurement to every part, in order, then log what they made of it."""
        self._collect(wait)
        collected, self._collected = self._collected, []
        for step, epoch, measurement in collected:
            values = measurement.values()
            if not values:
                continue
            if self._keys.keys() != values.keys():
                self._keys = {name: f"{self.log_prefix}/{name}" for name in values}
            metrics = dict(zip(self._keys.values(), values.values(), strict=True))
            record = Record(step, epoch, measurement, values, metrics)
            for part in self.parts:
                part.on_measurement(trainer, record)
            exported = {key: metrics[key] for key in self._monitors if key in metrics} | record.extra
            self.log_scalars(trainer, metrics | record.extra, step, exported)

    def _finish(self, trainer: pl.Trainer) -> None:
        self._hand_over(trainer, wait=True)
        for part in self.parts:
            part.flush(trainer, force=True)
        for part in self.parts:
            part.close(trainer)


def _part_key(index: int, part: Part) -> str:
    """The name a part's state is saved under: its class, and its place among the parts."""
    return f"{index}:{type(part).__qualname__}"
