"""RWC in Hugging Face's ``transformers.Trainer``: the same measurements, logs, values file and resume as in Lightning.

Needs ``transformers`` (the ``transformers`` extra: ``pip install 'lightning-rwc[transformers]'``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as err:  # one message that names the extra
    raise ImportError(
        "lightning_rwc.integrations.transformers needs the transformers package: "
        "pip install 'lightning-rwc[transformers]'"
    ) from err

from lightning.pytorch.utilities import rank_zero_warn

from lightning_rwc.callback import RelativeWeightChange
from lightning_rwc.integrations.loop import LoopView
from lightning_rwc.keys import ALL_KEY
from lightning_rwc.parts import Part

STATE_FILE = "rwc_state.pt"
"""The callback's state in each of the Trainer's checkpoint folders."""


class RelativeWeightChangeCallback(TrainerCallback):
    """Measure the RWC of every layer in a ``transformers.Trainer`` run, as ``RelativeWeightChange`` does in Lightning.

    It drives a :class:`~lightning_rwc.RelativeWeightChange` (the same schedule, measurement and parts). Steps are
    optimizer steps (``state.global_step``: with ``gradient_accumulation_steps``, one per accumulated batch). The values
    are written with the same tags (``rwc/...``) into the folder of the Trainer's TensorBoard run
    (``TENSORBOARD_LOGGING_DIR``, else the newest folder under ``output_dir/runs``, else a new one there), with the
    values file beside them, so that ``load_history``, ``lightning-rwc cluster`` and the RWC tab read a Trainer run as
    they read a Lightning one. ``rwc/_all`` and the health counts of each measurement also go through
    ``trainer.log`` when the callback is given the Trainer (``state.log_history``, the progress printout and every
    ``report_to`` integration: W&B, MLflow, ...), else into ``state.log_history`` only. Under DDP
    (``torchrun``, ``accelerate``) rank zero measures. The state is saved beside each checkpoint
    (``checkpoint-N/rwc_state.pt``) and read back by ``trainer.train(resume_from_checkpoint=...)``, so that the curves
    continue exactly.

    Args:
        parts: what is done with each measurement; ``None`` for the default parts and a values file.
        log_dir: where to write; ``None`` for the Trainer's TensorBoard folder (see above).
        trainer: the Trainer whose ``log`` reports each measurement's summary (see above); add the callback to it with
            ``trainer.add_callback``.
        **settings: :class:`~lightning_rwc.RelativeWeightChange`'s other arguments (``every_n_epochs``,
            ``every_n_steps``, ``norm``, ``params``, ``include``, ``exclude``, ``adapters``, ``source``, ...).

    Raises:
        ValueError: for an invalid setting, as :class:`~lightning_rwc.RelativeWeightChange` does, or a ``trainer``
            without a ``log`` method.

    Example::

        >>> callback = RelativeWeightChangeCallback(every_n_epochs=None, every_n_steps=10)
        >>> callback.rwc.schedule.every_n_steps
        10
    """

    def __init__(
        self,
        parts: Sequence[Part] | None = None,
        log_dir: str | os.PathLike | None = None,
        trainer: Any = None,
        **settings: Any,
    ) -> None:
        from lightning_rwc.parts import ValuesFile, default_parts

        if trainer is not None and not callable(getattr(trainer, "log", None)):
            raise ValueError(
                f"trainer must be the transformers.Trainer the callback is added to (its log method reports the "
                f"values), got a {type(trainer).__name__}"
            )
        parts = [*default_parts(), ValuesFile()] if parts is None else parts
        self.rwc = RelativeWeightChange(parts=parts, **settings)
        """The Lightning callback this one drives (its parts, its history)."""
        self.log_dir, self.trainer = log_dir, trainer
        self.view: LoopView | None = None
        """The Trainer as the callback sees it, from the first step on."""
        self._logged = _LogHistory(self.rwc.log_prefix)
        self.rwc.attach(self._logged)

    @property
    def history(self) -> Any:
        """The measurements kept by the History part (``None`` without one)."""
        return self.rwc.history

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """On the first step, start measuring (and continue from a checkpoint's state)."""
        if self.view is None:  # here, not at on_train_begin: a resumed Trainer loads its state after that
            self._start(args, state, model, kwargs.get("optimizer"))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """After an optimizer step: measure where the schedule says."""
        view = self._at(state)
        self.rwc.on_train_batch_end(view, model, None, None, 0)
        self._report(state)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """At an epoch's end: measure where the schedule says."""
        if self.view is None:
            return
        self.rwc.on_train_epoch_end(self._at(state), model)
        self._report(state)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Save the state beside the checkpoint just written (rank zero)."""
        if self.view is not None and state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(self.rwc.state_dict(), folder / STATE_FILE)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Hand over the last measurements and close the files."""
        if self.view is None:
            return
        self.rwc.on_train_end(self._at(state), model)
        self._report(state)
        for logger in self.view.loggers:
            logger.finalize("success")
        self.view = None

    def _report(self, state: Any) -> None:
        for entry in self._logged.take():  # taken at state.global_step, the step trainer.log writes
            if self.trainer is None:
                state.log_history.append(entry)
            else:
                self.trainer.log({key: value for key, value in entry.items() if key != "step"})

    def _start(self, args: Any, state: Any, model: Any, optimizer: Any) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        folder = str(self.log_dir or _tensorboard_dir(args))
        logger = TensorBoardLogger(folder, name="", version="", default_hp_metric=False)
        optimizers = [getattr(optimizer, "optimizer", optimizer)] if optimizer is not None else []  # accelerate's
        self.view = LoopView([logger], logger.log_dir, optimizers, state.is_world_process_zero, max(args.world_size, 1))
        self._at(state)
        if state.global_step > 0:
            self._resume(Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE)
        self.rwc.on_train_start(self.view, model)

    def _resume(self, path: Path) -> None:
        if not path.is_file():
            rank_zero_warn(f"No RelativeWeightChange state at {path}: the curves restart from this step.")
            return
        self.rwc.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))

    def _at(self, state: Any) -> LoopView:
        """The view at the Trainer's current step and epoch (an epoch ends at ``state.epoch`` = its number + 1)."""
        self.view.global_step = state.global_step
        self.view.current_epoch = max(math.ceil(state.epoch or 0) - 1, 0)
        return self.view


class _LogHistory(Part):
    """Keeps ``{prefix}/_all`` and the parts' extras of each measurement for the Trainer's ``log_history``."""

    def __init__(self, prefix: str) -> None:
        self._head, self._all, self._entries = f"{prefix}/", f"{prefix}/{ALL_KEY}", []

    def write(self, trainer: Any, step: int, scalars: dict[str, float]) -> None:
        kept = {k: v for k, v in scalars.items() if k == self._all or not (k.startswith(self._head) or k == "epoch")}
        self._entries.append(kept | {"step": step})

    def take(self) -> list[dict[str, float]]:
        entries, self._entries = self._entries, []
        return entries


def _tensorboard_dir(args: Any) -> Path:
    """Where the Trainer's TensorBoard callback writes.

    Its environment variable, or its newest folder under ``output_dir/runs`` (it made it when training began), or a
    new folder named as it names them.
    """
    from transformers.integrations.integration_utils import default_logdir

    if os.getenv("TENSORBOARD_LOGGING_DIR"):
        return Path(os.path.expanduser(os.environ["TENSORBOARD_LOGGING_DIR"]))
    if getattr(args, "logging_dir", None):
        return Path(args.logging_dir)
    runs = Path(args.output_dir) / "runs"
    made = [p for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []
    return max(made, key=lambda p: p.stat().st_mtime) if made else Path(args.output_dir) / default_logdir()
