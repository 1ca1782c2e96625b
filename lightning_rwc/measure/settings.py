"""What a tracker measures and how, checked once: the settings shared by the tracker and the callback."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from lightning_rwc.measure.adapters import ADAPTER_MODES, AdapterMode
from lightning_rwc.measure.backends import KERNELS, Kernel
from lightning_rwc.measure.functional import NORMS, Norm
from lightning_rwc.measure.select import PARAM_SELECTIONS, ParamSelection, compile_patterns
from lightning_rwc.validate import check_choice, choices

Patterns = str | Sequence[str] | None
Source = Literal["snapshot", "optimizer"]
SOURCES = choices(Source)


@dataclass(frozen=True)
class MeasureSettings:
    """The settings of a :class:`~lightning_rwc.WeightChangeTracker`, checked when made.

    ``include`` and ``exclude`` are kept as tuples (one pattern and a list of one are the same setting), and
    ``snapshot_device`` as a :class:`torch.device` (or ``None``). See the tracker for what each setting does.

    Raises:
        ValueError: naming the setting, if one is not among its choices or a pattern does not compile.

    Example::

        >>> MeasureSettings(include="fc").include
        ('fc',)
        >>> MeasureSettings(params="biases")
        Traceback (most recent call last):
        ...
        ValueError: params must be one of ('weights', 'trainable'), got 'biases'
    """

    norm: Norm = "l1"
    params: ParamSelection = "weights"
    include: Patterns = None
    exclude: Patterns = None
    snapshot_device: str | torch.device | None = None
    kernel: Kernel = "auto"
    adapters: AdapterMode = "effective"
    source: Source = "snapshot"

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, NORMS)
        check_choice("params", self.params, PARAM_SELECTIONS)
        check_choice("kernel", self.kernel, KERNELS)
        check_choice("adapters", self.adapters, ADAPTER_MODES)
        check_choice("source", self.source, SOURCES)
        for name in ("include", "exclude"):
            patterns = getattr(self, name)
            compile_patterns(patterns, name)
            if patterns is not None:
                object.__setattr__(self, name, (patterns,) if isinstance(patterns, str) else tuple(patterns))
        if self.snapshot_device is not None:
            try:
                device = torch.device(self.snapshot_device)
            except (RuntimeError, TypeError):
                device = None
            if device is None or device.type != "cpu":
                raise ValueError(
                    f"snapshot_device must be None (beside the weights) or 'cpu' (host memory), got "
                    f"{self.snapshot_device!r}"
                )
            object.__setattr__(self, "snapshot_device", device)

    def patterns(self) -> tuple[list[re.Pattern[str]], list[re.Pattern[str]]]:
        """The compiled ``include`` and ``exclude`` patterns."""
        return compile_patterns(self.include, "include"), compile_patterns(self.exclude, "exclude")
