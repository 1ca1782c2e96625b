"""RWC in a Lightning Fabric loop: the callback's schedule, measurement and parts, driven by three calls."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lightning_rwc.callback import RelativeWeightChange
from lightning_rwc.integrations.loop import LoopView


class FabricRWC:
    """Measure the RWC of every layer in a Fabric training loop, as ``RelativeWeightChange`` does in a ``Trainer``.

    Call :meth:`step` after every optimizer step, :meth:`epoch_end` at the end of every epoch and :meth:`end` when
    training ends; the measurements follow the schedule given (``every_n_steps`` counts the :meth:`step` calls) and
    go through the same parts: written with the same tags into the folder of Fabric's first logger (or
    ``log_dir``), with the values file beside them, so that ``load_history``, ``lightning-rwc cluster`` and the RWC
    tab read the run as a Lightning one. Under DDP rank zero measures, as the callback does.

    Args:
        fabric: the ``lightning.fabric.Fabric`` the loop runs in (after ``fabric.launch()``).
        model: the model as ``fabric.setup`` returned it (or the module itself).
        optimizers: the optimizers (needed for ``source="optimizer"``).
        log_dir: where to write; ``None`` for Fabric's first logger's folder (nothing is logged without either).
        **settings: :class:`~lightning_rwc.RelativeWeightChange`'s arguments (``every_n_steps``, ``norm``, ...).

    Raises:
        ValueError: for an invalid setting, as :class:`~lightning_rwc.RelativeWeightChange` does.

    Example::

        >>> import tempfile
        >>> from lightning.fabric import Fabric
        >>> fabric = Fabric(accelerator="cpu", devices=1)
        >>> model = nn.Linear(4, 2)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> model, optimizer = fabric.setup(model, optimizer)
        >>> rwc = FabricRWC(fabric, model, [optimizer], tempfile.mkdtemp(), every_n_epochs=None, every_n_steps=1)
        >>> for _ in range(3):
        ...     optimizer.zero_grad()
        ...     fabric.backward(model(torch.randn(8, 4)).square().mean())
        ...     optimizer.step()
        ...     rwc.step()
        >>> rwc.end()
        >>> rwc.history.steps
        [1, 2, 3]
    """

    def __init__(
        self,
        fabric: Any,
        model: nn.Module,
        optimizers: Iterable[torch.optim.Optimizer] = (),
        log_dir: str | os.PathLike | None = None,
        **settings: Any,
    ) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        self.rwc = RelativeWeightChange(**settings)
        """The callback this helper drives (its parts, its history)."""
        folder = log_dir or (fabric.logger.log_dir if fabric.loggers else None)
        loggers = [] if folder is None else [TensorBoardLogger(folder, name="", version="", default_hp_metric=False)]
        self._model = getattr(model, "module", model)  # Fabric's wrapper holds the module as the loop built it
        self.view = LoopView(
            loggers,
            None if folder is None else str(folder),
            [getattr(o, "optimizer", o) for o in optimizers],
            fabric.is_global_zero,
            fabric.world_size,
            strategy=fabric,  # its broadcast(obj, src) sends rank zero's values where a part needs them
        )
        """The loop as the callback sees it (its step and epoch)."""
        self.rwc.on_train_start(self.view, self._model)

    @property
    def history(self) -> Any:
        """The measurements kept by the History part (``None`` without one)."""
        return self.rwc.history

    def step(self) -> None:
        """An optimizer step ended: measure where the schedule says."""
        self.view.global_step += 1
        self.rwc.on_train_batch_end(self.view, self._model, None, None, 0)

    def epoch_end(self) -> None:
        """An epoch ended: measure where the schedule says, then count the next epoch."""
        self.rwc.on_train_epoch_end(self.view, self._model)
        self.view.current_epoch += 1

    def end(self) -> None:
        """Training ended: hand over the last measurements and close the files."""
        self.rwc.on_train_end(self.view, self._model)
        for logger in self.view.loggers:
            logger.finalize("success")
