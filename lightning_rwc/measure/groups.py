"""The tracked tensors grouped by device and dtype, each group measured by its backend, sums in tracked order.

Adapter rows (:mod:`lightning_rwc.measure.adapters`) form one more group, measured by their own backend, and so do
the tensors measured from their optimizer's steps (:mod:`lightning_rwc.measure.source`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_rwc.measure.adapters import AdapterMeasure, AdapterRow, current, replicas
from lightning_rwc.measure.backends import Backend, create_backend
from lightning_rwc.measure.settings import MeasureSettings
from lightning_rwc.measure.sharding import copies, local
from lightning_rwc.measure.source import OptimizerSource
from lightning_rwc.warn_once import WarnOnce

Tracked = Tensor | AdapterRow
"""What a tracker follows under a name: a parameter, or an adapter row."""

ADAPTERS = "adapters"
"""The key of the group of adapter rows."""
UPDATES = "updates"
"""The key of the group measured from the optimizer's steps."""


@dataclass
class _Group:
    """The tracked tensors of one device and dtype (their positions in tracked order) and the backend measuring them."""

    positions: list[int]
    backend: Backend


class BackendGroups:
    """One backend per device and dtype of the tracked weights, and their sums put back in tracked order.

    Args:
        settings: the tracker's settings (norm, kernel, snapshot device).
        warn: where the backends' warnings go.
        source: with ``source="optimizer"``, the backend of every tensor whose optimizer's update it reads.
    """

    def __init__(self, settings: MeasureSettings, warn: WarnOnce, source: OptimizerSource | None = None) -> None:
        self.settings, self._warn, self.source = settings, warn, source
        self._names: list[str] = []
        self._groups: list[_Group] = []
        self.device: torch.device | None = None
        """Where the sums of a measurement are gathered: the first weight's device."""
        self.pointers: list[int] = []
        """Where each tracked tensor's memory started when the groups were arranged."""
        self.replicas: Tensor | None = None
        """For sharded parameters, how many ranks hold each shard."""
        self._order: Tensor | None = None

    def arrange(self, params: dict[str, Tracked], baselines: dict[str, Tensor], sharded: bool) -> None:
        """Measure ``params`` from now on, each against its baseline (its current weights where it has none)."""
        names, params_list = list(params), list(params.values())
        positions: dict[object, list[int]] = {}
        for i, p in enumerate(params_list):
            key = ADAPTERS if isinstance(p, AdapterRow) else (local(p).device, local(p).dtype)
            positions.setdefault(UPDATES if self.source and self.source.reads(p) else key, []).append(i)
        self._names, self._groups = names, []  # the old snapshots live on in ``baselines`` only
        settings = self.settings
        for key, members in positions.items():
            if key == UPDATES:
                backend = self.source
                backend.follow([names[i] for i in members], [params_list[i] for i in members])
            elif key == ADAPTERS:
                rows = [params_list[i] for i in members]
                backend = AdapterMeasure(rows, [baselines.get(names[i]) for i in members], settings.norm)
            else:
                backend = create_backend(
                    [local(params_list[i]) for i in members],
                    [baselines.get(names[i]) for i in members],
                    settings.norm,
                    settings.kernel,
                    settings.snapshot_device,
                    self._warn,
                )
            self._groups.append(_Group(members, backend))
        order = [i for group in self._groups for i in group.positions]
        self.device = value(params_list[0]).device if params_list else None
        self._order = None if order == sorted(order) else torch.tensor(order).argsort().to(self.device)
        self.pointers = data_pointers(params_list, sharded)
        if sharded:
            counts = [replicas(p) if isinstance(p, AdapterRow) else copies(p) for p in params_list]
            self.replicas = torch.tensor(counts, dtype=torch.float64).to(self.device)

    def follow_storage(self, params: dict[str, Tracked], sharded: bool) -> set[int] | None:
        """Arrange again if a weight got new storage (``param.data = ...``, as ``model.to(...)`` does).

        The snapshot follows the weights to their dtype and device and keeps the baseline; a weight given another
        shape starts again. Returns the positions of those (to leave out of this measurement), or ``None`` if no
        weight got new storage.
        """
        names, tensors = list(params), list(params.values())
        if not tensors or data_pointers(tensors, sharded) == self.pointers:
            return None
        snapshots = self.snapshots()
        restarted = {i for i, n in enumerate(names) if n in snapshots and value(tensors[i]).shape != snapshots[n].shape}
        self.arrange(
            params, {n: snapshots[n] for i, n in enumerate(names) if n in snapshots and i not in restarted}, sharded
        )
        return restarted

    def snapshots(self) -> dict[str, Tensor]:
        """The baseline of each tracked tensor, by name (views into the backends' storage)."""
        snapshots = {}
        for group in self._groups:
            if group.backend is not self.source:
                snapshots.update(zip([self._names[i] for i in group.positions], group.backend.snapshots, strict=True))
        return snapshots

    def unmeasured(self) -> set[int]:
        """The positions the optimizer's steps gave no value in the last :meth:`measure`."""
        group = next((group for group in self._groups if group.backend is self.source), None)
        return set() if group is None else {group.positions[i] for i in self.source.unmeasured}

    def measure(self) -> Tensor:
        """The ``(2, k)`` float64 sums of every tracked tensor, in tracked order, on :attr:`device`."""
        with torch.no_grad():
            parts = [group.backend.measure() for group in self._groups]
        sums = parts[0] if len(parts) == 1 else torch.cat([part.to(self.device) for part in parts], dim=1)
        return sums if self._order is None else sums[:, self._order]


def same(a: Tracked | None, b: Tracked) -> bool:
    """Whether ``a`` is still ``b``: the same parameter, or a row of the same adapter of the same layer."""
    return a is b or (isinstance(a, AdapterRow) and a == b)


def value(tracked: Tracked) -> Tensor:
    """What the snapshot of ``tracked`` holds: a weight's local part, or an adapter row's factors."""
    return current(tracked) if isinstance(tracked, AdapterRow) else local(tracked)


def data_pointers(params: list[Tracked], sharded: bool) -> list[int]:
    """Where each tracked tensor's memory starts (its local shard's; an adapter row's ``A``)."""
    if not sharded:
        try:
            return list(map(Tensor.data_ptr, params))  # every measurement: no Python loop while all are tensors
        except TypeError:  # adapter rows among them
            pass
    return [local(p.raw()[0] if isinstance(p, AdapterRow) else p).data_ptr() for p in params]
