"""What :class:`~lightning_rwc.RelativeWeightChange` and its parts read of a Lightning ``Trainer``, for other loops."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LoopView:
    """A training loop as the callback and its parts see a Lightning ``Trainer``: its step, epoch, rank and loggers.

    An integration keeps one, updates ``global_step`` (optimizer steps) and ``current_epoch`` as its loop runs, and
    calls the callback's hooks with it in place of the trainer.

    Attributes:
        loggers: Lightning loggers the measurements are written through (a ``TensorBoardLogger`` for the RWC tab).
        log_dir: where the values file goes (the first logger's directory), or ``None``.
        optimizers: the loop's optimizers (for ``source="optimizer"``).
        is_global_zero: whether this process is rank zero.
        world_size: how many processes train together.
        global_step: optimizer steps taken so far.
        current_epoch: the epoch, counted from 0.
        callback_metrics: the latest exported values (``rwc/_all`` and the parts' extras), as tensors.

    Example::

        >>> view = LoopView(loggers=[], log_dir=None, optimizers=[])
        >>> view.global_step, view.is_global_zero, view.strategy.broadcast({"a": 1})
        (0, True, {'a': 1})
    """

    loggers: list[Any]
    log_dir: str | None
    optimizers: list[torch.optim.Optimizer]
    is_global_zero: bool = True
    world_size: int = 1
    global_step: int = 0
    current_epoch: int = 0
    callback_metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    callbacks: list[Any] = field(default_factory=list)
    """Other callbacks (none: nothing monitors the values)."""
    lr_scheduler_configs: list[Any] = field(default_factory=list)
    """Learning-rate schedulers that monitor a value (none)."""
    strategy: _Broadcast = field(default_factory=lambda: _Broadcast())
    """Sends rank zero's values to every rank (``torch.distributed`` where it is initialised)."""


class _Broadcast:
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """``obj`` as rank ``src`` has it."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return obj
        holder = [obj]
        torch.distributed.broadcast_object_list(holder, src=src)
        return holder[0]
