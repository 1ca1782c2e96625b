"""Layer health from RWC values: dead layers (still while the network moves) and runaway ones (far ahead of it)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field

from lightning_rwc.keys import ALL_KEY


@dataclass
class HealthCheck:
    """Flag layers that are dead or running away, from each measurement's per-layer RWC.

    - *dead*: the layer's RWC was exactly 0 while the network as a whole moved (``"_all"`` above 0), for
      ``patience`` measurements in a row: its weights did not change at all, which usually means the parameter is
      missing from the optimizer (or its learning rate is 0).
    - *runaway*: its RWC was above ``factor`` times the median RWC of the layers for ``patience`` measurements in a
      row: a learning rate far too high for it, or an exploding layer. A classifier head often moves ten times more
      than the median layer, so the default factor is 30.

    Example::

        >>> check = HealthCheck(patience=1)
        >>> check.update({"a": 0.01, "b": 0.0, "c": 0.012, "d": 0.011, "e": 0.9, "_all": 0.02})
        (['b'], ['e'])
        >>> check.update({"a": 0.01, "b": 0.0, "c": 0.012, "d": 0.011, "e": 0.9, "_all": 0.02})  # already known
        ([], [])
        >>> check.dead, check.runaway
        ({'b'}, {'e'})
    """

    factor: float = 30.0
    patience: int = 2
    dead: set[str] = field(default_factory=set)
    """Layers flagged dead at the latest measurement."""
    runaway: set[str] = field(default_factory=set)
    """Layers flagged running away at the latest measurement."""
    _still: dict[str, int] = field(default_factory=dict)
    _ahead: dict[str, int] = field(default_factory=dict)

    def update(self, values: Mapping[str, float]) -> tuple[list[str], list[str]]:
        """Take one measurement's ``{layer: RWC}`` (with ``"_all"``); return the layers newly dead and runaway."""
        layers = {name: value for name, value in values.items() if name != ALL_KEY and math.isfinite(value)}
        moving = values.get(ALL_KEY, 0.0) > 0
        median = statistics.median(layers.values()) if layers else math.nan
        for name, value in layers.items():
            self._still[name] = self._still.get(name, 0) + 1 if moving and value == 0.0 else 0
            self._ahead[name] = self._ahead.get(name, 0) + 1 if median > 0 and value > self.factor * median else 0
        dead = {name for name in layers if self._still[name] >= self.patience}
        runaway = {name for name in layers if self._ahead[name] >= self.patience}
        newly = sorted(dead - self.dead, key=list(layers).index), sorted(runaway - self.runaway, key=list(layers).index)
        self.dead, self.runaway = dead, runaway
        return newly
