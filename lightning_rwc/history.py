"""The layers x measurements table of RWC values: what the callback fills during training and the clustering reads.

:func:`~lightning_rwc.runs.load_history` reads one back from a run's logs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lightning_rwc.files import json_float, write_json
from lightning_rwc.keys import ALL_KEY
from lightning_rwc.validate import check_count

HISTORY_FORMAT = 1
"""Version of the history's saved form (checkpoint state and JSON file)."""


class RWCHistory:
    """RWC per layer over time: ``values[i, j]`` is the change of ``layers[i]`` at measurement ``j``.

    Measurements are ordered by ``steps`` (the global step at which each was taken); ``epochs`` holds the epoch of
    each, or ``-1`` where the source did not record it. A layer that has no value at a measurement (it appeared
    later, or the source skipped it) holds ``nan`` there. ``total`` is the ``"_all"`` series (all tracked weights as
    one vector), ``nan`` where unknown.

    With a ``capacity`` the history stays that small however long the run, evenly spread over it: when it is full,
    every second measurement it holds is dropped, and from then on it keeps every second measurement appended
    (every fourth after the next time, and so on). The values it keeps are the measurements as they were; the
    loggers hold every one (:func:`~lightning_rwc.runs.load_history`).

    Args:
        capacity: the most measurements kept (at least 2); ``None`` keeps all.

    Example::

        >>> history = RWCHistory()
        >>> history.append(step=10, epoch=0, values={"fc.weight": 0.5, "_all": 0.5})
        >>> history.append(step=20, epoch=1, values={"fc.weight": 0.25, "conv.weight": 0.1, "_all": 0.2})
        >>> history.layers, history.steps
        (['fc.weight', 'conv.weight'], [10, 20])
        >>> history.values.tolist()
        [[0.5, 0.25], [nan, 0.1]]
    """

    def __init__(self, capacity: int | None = None) -> None:
        check_count("capacity", capacity, minimum=2, optional=True)
        self.capacity = capacity
        self.stride = 1
        """Every how many appended measurements one is kept (doubles each time a bounded history is full)."""
        self.appended = 0
        """Measurements appended so far, kept or not."""
        self._layers: dict[str, int] = {}
        self._steps: list[int] = []
        self._epochs: list[int] = []
        self._columns: list[np.ndarray] = []
        self._total: list[float] = []
        self._matrix: np.ndarray | None = None

    @property
    def layers(self) -> list[str]:
        """Layer (parameter) names, in the order they were first seen."""
        return list(self._layers)

    @property
    def steps(self) -> list[int]:
        """Global step of each measurement."""
        return list(self._steps)

    @property
    def epochs(self) -> list[int]:
        """Epoch of each measurement, ``-1`` where unknown."""
        return list(self._epochs)

    @property
    def values(self) -> np.ndarray:
        """The ``(layers, measurements)`` float64 matrix, ``nan`` where a layer has no value."""
        if self._matrix is None:
            matrix = np.full((len(self._layers), len(self._columns)), np.nan)
            for j, column in enumerate(self._columns):
                matrix[: len(column), j] = column
            self._matrix = matrix
        return self._matrix

    @property
    def total(self) -> np.ndarray:
        """The ``"_all"`` series, one value per measurement."""
        return np.asarray(self._total, dtype=np.float64)

    def __len__(self) -> int:
        """Number of measurements."""
        return len(self._steps)

    def append(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        """Add one measurement: ``{layer: RWC}``, optionally with ``"_all"``; new layers are added as rows.

        A bounded history keeps it only if it falls on its stride (see the class description).
        """
        new = values.keys() - self._layers.keys() - {ALL_KEY}  # one set operation: cheap when nothing is new
        for name in [name for name in values if name in new] if new else ():
            self._layers[name] = len(self._layers)
        self.appended += 1
        if (self.appended - 1) % self.stride:
            return
        column = np.full(len(self._layers), np.nan)
        for name, value in values.items():
            if name != ALL_KEY:
                column[self._layers[name]] = value
        self._steps.append(int(step))
        self._epochs.append(int(epoch))
        self._columns.append(column)
        self._total.append(float(values.get(ALL_KEY, math.nan)))
        self._matrix = None
        if self.capacity is not None and len(self._steps) > self.capacity:
            self._keep(slice(None, None, 2))
            self.stride *= 2

    def _keep(self, which: slice) -> None:
        """Keep only the measurements ``which`` selects."""
        self._steps, self._epochs = self._steps[which], self._epochs[which]
        self._columns, self._total = self._columns[which], self._total[which]
        self._matrix = None

    def intervals(self) -> np.ndarray | None:
        """The optimizer steps each measurement covers: its step less the one before (the first's: from step 0).

        ``None`` for a bounded history that has dropped measurements (its steps are further apart than the
        intervals the values cover).

        Example::

            >>> RWCHistory.from_arrays(["fc.weight"], [4, 6, 10, 12], np.ones((1, 4))).intervals().tolist()
            [4, 2, 4, 2]
        """
        if self.stride > 1 or self.appended != len(self._steps):
            return None
        return np.diff(np.asarray(self._steps, dtype=np.int64), prepend=0)

    def curve(self, layer: str) -> np.ndarray:
        """The values of one layer over all measurements."""
        if layer not in self._layers:
            raise KeyError(f"No layer {layer!r} in this history; it has {len(self._layers)} layers: {self.layers[:5]}")
        return self.values[self._layers[layer]]

    @classmethod
    def from_arrays(
        cls,
        layers: Iterable[str],
        steps: Iterable[int],
        values: np.ndarray,
        epochs: Iterable[int] | None = None,
        total: Iterable[float] | None = None,
    ) -> RWCHistory:
        """Build a history from a ``(layers, measurements)`` matrix."""
        layers, steps = list(layers), [int(s) for s in steps]
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(layers), len(steps)):
            raise ValueError(
                f"values must have shape (layers, measurements) = ({len(layers)}, {len(steps)}), got {values.shape}"
            )
        if len(set(layers)) != len(layers):
            raise ValueError("layer names must be unique")
        epochs = [-1] * len(steps) if epochs is None else [int(e) for e in epochs]
        total = [math.nan] * len(steps) if total is None else [float(t) for t in total]
        if len(epochs) != len(steps) or len(total) != len(steps):
            raise ValueError(f"epochs and total need one entry per measurement ({len(steps)})")
        history = cls()
        history.appended = len(steps)
        history._layers = {name: i for i, name in enumerate(layers)}
        history._steps, history._epochs, history._total = steps, epochs, total
        history._columns = [values[:, j].copy() for j in range(len(steps))]
        return history

    def state_dict(self) -> dict[str, Any]:
        """Everything the history holds, compact (tensors, no lists of floats): what a checkpoint stores.

        Example::

            >>> history = RWCHistory(capacity=4)
            >>> for step in range(1, 8):
            ...     history.append(step, 0, {"fc.weight": step / 10, "_all": step / 10})
            >>> restored = RWCHistory()
            >>> restored.load_state_dict(history.state_dict())
            >>> restored.steps, restored.stride, restored.capacity
            ([1, 3, 5, 7], 2, 4)
        """
        import torch

        return {
            "format_version": HISTORY_FORMAT,
            "layers": self.layers,
            "steps": torch.tensor(self._steps, dtype=torch.int64),
            "epochs": torch.tensor(self._epochs, dtype=torch.int64),
            "values": torch.from_numpy(self.values.copy()),
            "total": torch.tensor(self._total, dtype=torch.float64),
            "capacity": self.capacity,
            "stride": self.stride,
            "appended": self.appended,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`, or from the lists of a JSON file (``null`` read as ``nan``)."""
        layers, steps = list(state.get("layers", [])), [int(s) for s in state.get("steps", [])]
        values = _floats(state.get("values", [])).reshape(len(layers), len(steps))
        total = _floats(state.get("total", [])).tolist() or None
        epochs = _floats(state.get("epochs", [])).astype(np.int64).tolist() or None
        read = self.from_arrays(layers, steps, values, epochs, total)
        self.__dict__.update({key: value for key, value in vars(read).items() if key != "capacity"})
        self.capacity = state.get("capacity", self.capacity)
        self.stride = int(state.get("stride", 1))
        self.appended = int(state.get("appended", len(steps)))

    def as_json(self) -> dict[str, Any]:
        """The history as strict-JSON content (what :meth:`save` writes): non-finite values as ``None``."""
        data = {"format_version": HISTORY_FORMAT, "layers": self.layers, "steps": self.steps, "epochs": self.epochs}
        data["values"] = [[json_float(v) for v in row] for row in self.values.tolist()]
        data["total"] = [json_float(v) for v in self._total]
        return data

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`as_json` to ``path``, atomically; :meth:`load_state_dict` and ``load_history`` read it."""
        write_json(path, self.as_json())


def last_at_each_step(steps: np.ndarray) -> np.ndarray:
    """Where the last entry at each step is in ``steps`` (a later one at a step replaces an earlier one), by step.

    The one rule of every reader for values written twice at a step (a resumed run).

    Example::

        >>> last_at_each_step(np.array([5, 3, 5, 7])).tolist()
        [1, 2, 3]
    """
    _, from_end = np.unique(steps[::-1], return_index=True)
    return steps.size - 1 - from_end


def _floats(data: Any) -> np.ndarray:
    """A tensor (checkpoint) or nested lists with ``None`` for missing values (JSON) as a float64 array."""
    to_numpy = getattr(data, "numpy", None)
    return np.asarray(to_numpy(), dtype=np.float64) if to_numpy else np.array(data, dtype=np.float64)
