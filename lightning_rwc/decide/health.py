"""Layer health from RWC values: dead layers (still while the network moves) and runaway ones (far ahead of it)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from lightning_rwc.keys import ALL_KEY


@dataclass
class HealthCheck:
    """Flag layers that are dead or running away, from each measurement's per-layer RWC.

    - *dead*: the layer's RWC was exactly 0 while the network as a whole moved (``"_all"`` above 0), for
      ``patience`` measurements in a row: its weights did not change at all, which usually means the parameter is
      missing from the optimizer (or its learning rate is 0).
    - *runaway*: its RWC was above ``factor`` times the median RWC of the layers that moved (those at exactly 0, the
      dead, left out) for ``patience`` measurements in a row: a learning rate far too high for it, or an exploding
      layer. The last layer (a classifier head, which
      routinely moves 5 to 50 times as much as the median layer when measured every step) must exceed
      ``head_factor`` times the median instead.

    Example::

        >>> check = HealthCheck(patience=1)
        >>> check.update({"a": 0.01, "b": 0.0, "e": 0.9, "c": 0.012, "d": 0.011, "head": 0.5, "_all": 0.02})
        (['b'], ['e'])
        >>> check.update({"a": 0.01, "b": 0.0, "e": 0.9, "c": 0.012, "d": 0.011, "head": 0.5, "_all": 0.02})
        ([], [])
        >>> check.dead, check.runaway  # the head, at 42x the median of the layers that moved, is below head_factor
        ({'b'}, {'e'})
    """

    factor: float = 30.0
    patience: int = 2
    head_factor: float = 300.0
    dead: set[str] = field(default_factory=set)
    """Layers flagged dead at the latest measurement."""
    runaway: set[str] = field(default_factory=set)
    """Layers flagged running away at the latest measurement."""
    _still: dict[str, int] = field(default_factory=dict)
    _ahead: dict[str, int] = field(default_factory=dict)

    def update(self, values: Mapping[str, float]) -> tuple[list[str], list[str]]:
        """Take one measurement's ``{layer: RWC}`` (with ``"_all"``); return the layers newly dead and runaway."""
        names = list(values)
        rwc = np.fromiter(values.values(), dtype=np.float64, count=len(names))
        if ALL_KEY in values:  # the layers alone
            keep = np.arange(len(names)) != names.index(ALL_KEY)
            names, rwc = [name for name in names if name != ALL_KEY], rwc[keep]
        finite = np.isfinite(rwc)
        moved = rwc[finite & (rwc > 0)]
        median = float(np.median(moved)) if moved.size else math.nan
        still = finite & (rwc == 0) if values.get(ALL_KEY, 0.0) > 0 else np.zeros_like(finite)
        ahead = finite & (rwc > runaway_limits(len(rwc), self.factor, self.head_factor) * median) & (median > 0)
        # counters only for the layers that meet a condition now: the others start again from zero
        self._still = {names[i]: self._still.get(names[i], 0) + 1 for i in np.flatnonzero(still)}
        self._ahead = {names[i]: self._ahead.get(names[i], 0) + 1 for i in np.flatnonzero(ahead)}
        dead = {name for name, count in self._still.items() if count >= self.patience}
        runaway = {name for name, count in self._ahead.items() if count >= self.patience}
        new_dead, new_runaway = dead - self.dead, runaway - self.runaway
        newly = [n for n in names if n in new_dead], [n for n in names if n in new_runaway]
        self.dead, self.runaway = dead, runaway
        return newly


def runaway_limits(layers: int, factor: float, head_factor: float) -> np.ndarray:
    """How many times the median RWC each of ``layers`` layers (in model order) may move: the last one more.

    Example::

        >>> runaway_limits(3, 30.0, 300.0).tolist()
        [30.0, 30.0, 300.0]
    """
    limits = np.full(layers, factor)
    limits[-1:] = head_factor
    return limits


def first_flags(
    values: np.ndarray, total: np.ndarray, factor: float = 30.0, patience: int = 2, head_factor: float = 300.0
) -> dict[str, np.ndarray]:
    """For a ``(layers, measurements)`` table, where :class:`HealthCheck` first flags each layer, or ``-1``.

    The same rules as :meth:`HealthCheck.update` measurement by measurement (``total``: the ``"_all"`` series; a
    missing one counts as moving), computed on the table at once.

    Example::

        >>> values = np.array([[0.1, 0.1, 0.1], [0.0, 0.0, 0.0], [0.1, 9.0, 9.0], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1]])
        >>> {kind: first.tolist() for kind, first in first_flags(values, np.full(3, 0.1), patience=2).items()}
        {'dead': [-1, 1, -1, -1, -1], 'runaway': [-1, -1, 2, -1, -1]}
    """
    finite = np.isfinite(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a measurement with no finite value: no median
        median = np.nanmedian(np.where(finite & (values > 0), values, np.nan), axis=0)
    moving = ~(np.asarray(total) <= 0)  # nan counts as moving, as an absent "_all" does
    conditions = {
        "dead": finite & (values == 0) & moving,
        "runaway": finite
        & (median > 0)
        & (values > runaway_limits(len(values), factor, head_factor)[:, None] * np.where(median > 0, median, np.inf)),
    }
    out = {}
    for kind, condition in conditions.items():
        runs = np.zeros(values.shape[0], dtype=np.int64)
        first = np.full(values.shape[0], -1)
        for j in range(values.shape[1]):  # run lengths, one vectorised column at a time
            runs = np.where(condition[:, j], runs + 1, 0)
            first = np.where((first < 0) & (runs >= patience), j, first)
        out[kind] = first
    return out
