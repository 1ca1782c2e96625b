"""Relative Weight Change Monitor: measures each layer's weight change on a schedule and hands it to its parts."""

from __future__ import annotations

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
from lightning_rwc.keys import ALL_KEY, DEFAULT_PREFIX, monitored_keys
from lightning_rwc.measure import Measurement, MeasureSettings, Norm, ParamSelection, Source, WeightChangeTracker
from lightning_rwc.measure.adapters import AdapterMode
from lightning_rwc.measure.backends import Kernel
from lightning_rwc.measure.measurement import Pending
from lightning_rwc.measure.sharding import is_sharded
from lightning_rwc.parts import History, Part, Record, check_parts, default_parts
from lightning_rwc.parts.state import load_parts_state_dict, parts_state_dict
from lightning_rwc.schedule import Intervals, Schedule
from lightning_rwc.validate import check_prefix
from lightning_rwc.warn_once import WarnOnce

UNSUPPORTED = (
    "RelativeWeightChange does not support {}: its flattened parameter shards hide the layers' shapes. Use "
    "strategy='ddp', or ModelParallelStrategy() with torch.distributed.fsdp.fully_shard in configure_model (FSDP2), "
    "which it measures shard by shard."
)
NO_STATE = (
    "The checkpoint holds no RelativeWeightChange state (an older checkpoint, or other settings): curves restart."
)
NO_MEASUREMENT = (
    "RelativeWeightChange took no measurement: training ended at step {} (epoch {}), before the first one ({}). "
    "Train longer, or measure more often (every_n_steps)."
)
Scalars = dict[str, float]
STATE_VERSION = 3  # 3: parts' states under "parts"; 2: the history at the top, as tensors; 1: as lists


class RelativeWeightChange(Callback):
    r"""Measure the relative weight change (RWC) of every layer during training and hand it to the parts.

    Each tracked layer's ``||W(t) - W(t-1)|| / ||W(t-1)||`` is computed where its weights live
    (:class:`~lightning_rwc.WeightChangeTracker`) on the schedule and handed, in order, to every part
    (:mod:`lightning_rwc.parts`). The default parts keep :attr:`history`, flag dead and runaway layers, log through
    every logger and draw a histogram; ``parts`` adds others or leaves some out.

    Logged metrics (default parts), at ``step=trainer.global_step``: ``{log_prefix}/{parameter name}`` (one
    parameter's RWC), ``{log_prefix}/_all`` (all tracked weights as one vector), ``{log_prefix}_health/dead_layers``,
    ``{log_prefix}_health/runaway_layers`` and ``epoch``. All but ``epoch`` go to ``trainer.callback_metrics`` too
    (per-layer keys where monitored), so that ``EarlyStopping(monitor="rwc/_all")`` can use them. Under DDP rank
    zero measures; under FSDP2 (``fully_shard``) each rank reduces its shards, combined by one all-reduce.

    Args:
        every_n_epochs: measure at the end of every n-th training epoch; ``None`` to measure by steps only.
        every_n_steps: measure every n optimizer steps (:class:`~lightning_rwc.schedule.Schedule`); ``None``: by epochs.
        norm: ``"l1"`` (the paper's formula), ``"l2"`` or ``"elementwise"`` (the original code's).
        params: ``"weights"`` (trainable tensors with more than one dimension) or ``"trainable"`` (all trainable).
        include: regular expressions; only parameters whose name matches one are tracked.
        exclude: regular expressions; parameters whose name matches one are not tracked.
        snapshot_device: ``None`` keeps the snapshot beside the weights; ``"cpu"`` keeps it in host memory.
        kernel: how CUDA weights are measured: ``"auto"``, ``"foreach"`` or ``"triton"`` (see the tracker).
        adapters: ``"effective"`` (a LoRA layer as one row: its effective weight) or ``"factors"`` (raw factors).
        source: ``"snapshot"`` (a copy of the weights) or ``"optimizer"`` (each step's update, no copy: needs
            ``every_n_steps=1``; see :mod:`lightning_rwc.measure.source`).
        log_prefix: prefix of the logged keys.
        parts: what is done with each measurement; ``None`` for :func:`~lightning_rwc.parts.default_parts`.

    Raises:
        ValueError: if an argument has an invalid value, or neither ``every_n_epochs`` nor ``every_n_steps`` is set.
        MisconfigurationException: at ``setup``, for ``FSDPStrategy`` (FSDP1) and ``DeepSpeedStrategy``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[RelativeWeightChange(every_n_epochs=None, every_n_steps=50)])
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
        adapters: AdapterMode = "effective",
        source: Source = "snapshot",
        log_prefix: str = DEFAULT_PREFIX,
        parts: Sequence[Part] | None = None,
    ) -> None:
        self.settings = MeasureSettings(norm, params, include, exclude, snapshot_device, kernel, adapters, source)
        self.schedule = Schedule(every_n_epochs, every_n_steps, source)
        self.log_prefix = check_prefix(log_prefix)
        self.parts: list[Part] = default_parts() if parts is None else check_parts(parts)
        self._tracker: WeightChangeTracker | None = None
        self._last_step, self._current_step, self._intervals = -1, -1, Intervals(self.schedule)
        self._pending_snapshot: dict[str, torch.Tensor] | None = None
        self._pending = Pending()  # taken, not yet handed to the parts
        self._measured = self._share = False  # a measurement reached the parts here; rank zero shares its values
        self._monitors: set[str] = {f"{log_prefix}/{ALL_KEY}"}  # the per-layer keys put in callback_metrics
        self._keys: dict[str, str] = {}  # layer -> metric key, kept while the layers stay the same
        self.warn = WarnOnce(rank_zero_warn)
        """Gives a rank-zero warning once per key for this callback and its parts."""

    @property
    def history(self) -> RWCHistory | None:
        """The measurements kept by the :class:`~lightning_rwc.parts.History` part (``None`` without one)."""
        return next((part.history for part in self.parts if isinstance(part, History)), None)

    @property
    @override
    def state_key(self) -> str:
        schedule = {key: getattr(self.schedule, key) for key in ("every_n_epochs", "every_n_steps")}
        measure = {key: getattr(self.settings, key) for key in ("norm", "params", "include", "exclude")}
        return f"{type(self).__qualname__}{schedule | measure | {'log_prefix': self.log_prefix}}"

    def attach(self, part: Part) -> None:
        """Add ``part`` before training starts (as :class:`~lightning_rwc.LayerFreezer` does with itself)."""
        if part not in self.parts:
            self.parts.append(part)

    def log_scalars(self, trainer: pl.Trainer, scalars: Scalars, step: int, exported: Scalars) -> None:
        """Hand ``scalars`` to every part's :meth:`~lightning_rwc.parts.Part.write`; ``exported`` to the metrics."""
        values = torch.tensor(list(exported.values()), dtype=torch.float64).unbind()  # one tensor viewed per key
        trainer.callback_metrics.update(zip(exported, values, strict=True))
        for part in self.parts:
            part.write(trainer, step, scalars)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy)):
            raise MisconfigurationException(UNSUPPORTED.format(type(trainer.strategy).__name__))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sharded = any(is_sharded(p) for p in pl_module.parameters())  # then every rank measures, else rank zero
        monitors = [getattr(callback, "monitor", None) for callback in trainer.callbacks]
        monitored = monitored_keys([*monitors, *(c.monitor for c in trainer.lr_scheduler_configs)], self.log_prefix)
        self._monitors = {f"{self.log_prefix}/{ALL_KEY}", *monitored}
        self._share = trainer.world_size > 1 and not sharded and any([monitored, *(p.every_rank for p in self.parts)])
        for part in self.parts:
            part.start(trainer, pl_module, self)
        if self._tracker is None and (trainer.is_global_zero or sharded):
            make = WeightChangeTracker.from_settings  # continues from the checkpoint's baseline where it fits
            self._tracker = make(pl_module, self.settings, trainer.optimizers, rank_zero_warn, self._pending_snapshot)
        self._pending_snapshot = None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._current_step = trainer.global_step
        if self.schedule.after_step(trainer.global_step, self._last_step):
            self._start(trainer)
        self._hand_over(trainer, wait=False)
        for part in self.parts:
            part.flush(trainer, force=False)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._current_step = trainer.global_step
        if self.schedule.at_epoch_end(trainer.current_epoch, trainer.global_step, self._last_step):
            self._start(trainer)
        self._hand_over(trainer, wait=True)
        for part in self.parts:
            part.epoch_end(trainer, self)
        for part in self.parts:
            part.flush(trainer, force=True)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)
        self._tracker = None  # with source="optimizer", its hooks leave the optimizers with it

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        try:  # an interrupted run (an error, Ctrl-C, SIGTERM) keeps every measurement already taken
            self._finish(trainer)
        except Exception as err:  # the device may be what failed: say so, and let the original exception through
            self.warn("exception", f"RelativeWeightChange could not save its last measurements: {err}")

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.state_key not in checkpoint.get("callbacks", {}):
            self.warn("no-state", NO_STATE)

    @override
    def state_dict(self) -> dict[str, Any]:
        state = {"version": STATE_VERSION, "last_step": self._last_step, "parts": parts_state_dict(self.parts)}
        state["collected"] = self._pending.state_dict()  # every measurement taken; the parts get them on resume
        if (tracker := self._tracker) and self._current_step != self._last_step and not tracker.sharded:
            state["snapshot"] = tracker.state_dict()  # saved between two measurements: keep the baseline
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_parts_state_dict(self.parts, state_dict)
        self._last_step = state_dict.get("last_step", -1)
        self._pending_snapshot = state_dict.get("snapshot")
        self._pending.load_state_dict(state_dict.get("collected", state_dict.get("unlogged", [])))  # 2: "unlogged"

    def _start(self, trainer: pl.Trainer) -> None:
        """Launch a measurement (this rank's part of it); its values are collected when they have arrived."""
        self._intervals.add(trainer.global_step - max(self._last_step, 0), self.warn)
        self._last_step = trainer.global_step
        if self._tracker is None and not self._share:
            return
        measurement = Measurement.of({}) if self._tracker is None else self._tracker.measure()
        if self._share:  # every rank's monitors and parts need the values: rank zero measured them
            shared = trainer.strategy.broadcast((measurement.values(), *measurement.sums()), src=0)
            measurement = Measurement.of(*shared)
        self._pending.add(trainer.global_step, trainer.current_epoch, measurement)

    def _hand_over(self, trainer: pl.Trainer, wait: bool) -> None:
        """Hand each collected measurement to every part, in order, then log what they made of it."""
        for step, epoch, measurement in self._pending.take(wait):
            if not (values := measurement.values()):
                continue
            self._measured = True
            if self._keys.keys() != values.keys():
                self._keys = {name: f"{self.log_prefix}/{name}" for name in values}
            metrics = dict(zip(self._keys.values(), values.values(), strict=True))
            record = Record(step, epoch, measurement, values, metrics)
            for part in self.parts:
                part.on_measurement(trainer, record)
            exported = {key: metrics[key] for key in self._monitors if key in metrics} | record.extra
            self.log_scalars(trainer, metrics | record.extra | {"epoch": float(epoch)}, step, exported)

    def _finish(self, trainer: pl.Trainer) -> None:
        self._hand_over(trainer, wait=True)
        if not self._measured:
            self.warn("none", NO_MEASUREMENT.format(trainer.global_step, trainer.current_epoch, self.schedule))
        for part in self.parts:
            part.flush(trainer, force=True)
        for part in self.parts:
            part.close(trainer)
