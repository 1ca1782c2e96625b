"""One measurement on its way from the device to the host, and the single transfer that carries it."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_rwc.keys import ALL_KEY
from lightning_rwc.measure.functional import ratios
from lightning_rwc.warn_once import WarnOnce


class Measurement:
    """One measurement on its way to the host (see :meth:`~lightning_rwc.WeightChangeTracker.measure`).

    Args:
        names: the names of the measured columns of ``sums``.
        sums: the ``(2, k)`` float64 sums on the host (still arriving while ``arrival`` has not happened).
        arrival: a CUDA event recorded after the copy of ``sums``, or ``None`` if they are there already.
        finish: turns names and host sums into values (the tracker's, with its warnings).
        columns: the columns of ``sums`` that belong to ``names``; ``None`` for all of them.
    """

    def __init__(
        self,
        names: list[str],
        sums: Tensor | None,
        arrival: torch.cuda.Event | None,
        finish: Callable[[list[str], Tensor], dict[str, float]],
        columns: list[int] | None = None,
    ) -> None:
        self._names, self._sums, self._arrival, self._finish, self._columns = names, sums, arrival, finish, columns
        self._values: dict[str, float] | None = None

    @classmethod
    def of(cls, values: dict[str, float], names: list[str] | None = None, sums: Tensor | None = None) -> Measurement:
        """A measurement whose values (and sums) are known already, as when another rank measured them.

        Example::

            >>> Measurement.of({"fc.weight": 0.5, "_all": 0.5}).values()
            {'fc.weight': 0.5, '_all': 0.5}
        """
        measurement = cls(names or [], sums, None, lambda names, sums: values)
        measurement._values = values
        return measurement

    def state_dict(self) -> dict[str, Any]:
        """The values and the sums, as a checkpoint keeps a measurement not yet handed on (waits for the device)."""
        names, sums = self.sums()
        return {"values": self.values(), "names": names, "sums": sums}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Measurement:
        """Inverse of :meth:`state_dict`."""
        return cls.of(state["values"], state["names"], state["sums"])

    def ready(self) -> bool:
        """Whether the sums have reached the host (:meth:`values` will not wait)."""
        return self._arrival is None or self._arrival.query()

    def sums(self) -> tuple[list[str], Tensor]:
        """The measured tensors' names and their ``(2, k)`` float64 numerator and denominator sums, on the host.

        Sums add up: the value of several tensors taken as one vector (a block, for example) is the ratio of their
        summed sums (see :func:`~lightning_rwc.blocks.block_values`). Waits for the device like :meth:`values`.

        Example::

            >>> from lightning_rwc import WeightChangeTracker
            >>> tracker = WeightChangeTracker(torch.nn.Linear(3, 2))
            >>> names, sums = tracker.measure().sums()
            >>> names, sums.shape
            (['weight'], torch.Size([2, 1]))
        """
        if self._sums is None:
            return self._names, torch.zeros(2, 0, dtype=torch.float64)
        self._sums, self._arrival = wait(self._sums, self._arrival), None
        if self._columns is not None:
            self._sums, self._columns = self._sums[:, self._columns], None
        return self._names, self._sums

    def values(self) -> dict[str, float]:
        """``{parameter name: RWC}`` plus ``"_all"``, as :meth:`~lightning_rwc.WeightChangeTracker.step` returns them.

        Waits for the device if the sums have not arrived yet.
        """
        if self._values is None:
            names, sums = self.sums()
            self._values = self._finish(names, sums) if sums.shape[1] else {}
        return self._values


class Pending:
    """Measurements taken and not yet handed on, oldest first: on their way to the host, then collected.

    Example::

        >>> pending = Pending()
        >>> pending.add(10, 0, Measurement.of({"fc.weight": 0.5, "_all": 0.5}))
        >>> [(step, m.values()["fc.weight"]) for step, _, m in pending.take(wait=False)], pending.take(wait=False)
        ([(10, 0.5)], [])
    """

    def __init__(self) -> None:
        self._in_flight: deque[tuple[int, int, Measurement]] = deque()  # (step, epoch, measurement)
        self._collected: list[tuple[int, int, Measurement]] = []

    def add(self, step: int, epoch: int, measurement: Measurement) -> None:
        """A measurement taken at global ``step`` in ``epoch``."""
        self._in_flight.append((step, epoch, measurement))

    def collect(self, wait: bool) -> None:
        """Collect the measurements whose values have arrived (all of them with ``wait``), in order."""
        while self._in_flight and (wait or self._in_flight[0][2].ready()):
            self._collected.append(self._in_flight.popleft())

    def take(self, wait: bool) -> list[tuple[int, int, Measurement]]:
        """Collect, then hand over and forget every collected measurement: ``(step, epoch, measurement)``."""
        self.collect(wait)
        taken, self._collected = self._collected, []
        return taken

    def state_dict(self) -> list[dict[str, Any]]:
        """Every measurement taken and not yet handed on (waits for the device)."""
        self.collect(wait=True)
        return [{"step": step, "epoch": epoch, **m.state_dict()} for step, epoch, m in self._collected]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        """Continue from :meth:`state_dict`: those measurements are handed on at the next :meth:`take`."""
        self._collected = [(c["step"], c.get("epoch", -1), Measurement.from_state_dict(c)) for c in state]


def to_host(table: Tensor) -> tuple[Tensor, torch.cuda.Event | None]:
    """The single device-to-host transfer of a measurement: every sum at once.

    From CUDA the copy goes to pinned host memory without waiting for the device, and the returned event marks its
    arrival; from elsewhere it is an ordinary copy (no event).

    Example::

        >>> host, arrival = to_host(torch.tensor([[1.0, 2.0], [4.0, 8.0]]))
        >>> host.tolist(), arrival
        ([[1.0, 2.0], [4.0, 8.0]], None)
    """
    if table.device.type != "cuda":
        return table.cpu(), None
    host = torch.empty(table.shape, dtype=table.dtype, pin_memory=True)
    host.copy_(table, non_blocking=True)
    arrival = torch.cuda.Event()
    arrival.record(torch.cuda.current_stream(table.device))
    return host, arrival


def wait(host: Tensor, arrival: torch.cuda.Event | None) -> Tensor:
    """``host`` once the transfer that fills it (see :func:`to_host`) has arrived (waiting only if it has not)."""
    if arrival is not None and not arrival.query():
        arrival.synchronize()
    return host


def named_values(names: list[str], sums: Tensor, norm: str, warn: WarnOnce) -> dict[str, float]:
    """``{name: value}`` from host sums, plus ``"_all"`` from the sums of all columns; warns of undefined values.

    The layers newly without a value (their previous weights are all zero) share one warning, and so do those with
    the same non-finite value (NaN or inf weights).

    Example::

        >>> named_values(["a", "b"], torch.tensor([[1.0, 3.0], [4.0, 4.0]], dtype=torch.float64), "l1", WarnOnce())
        {'a': 0.25, 'b': 0.75, '_all': 0.5}
    """
    sums = torch.cat([sums, sums.sum(dim=1, keepdim=True)], dim=1)
    values = ratios(sums, norm).tolist()
    names = [*names, ALL_KEY]
    if not all(map(math.isfinite, values)):
        layers = list(zip(names[:-1], values, sums[1].tolist(), strict=False))  # "_all" follows from the layers
        zero = [name for name, _, denominator in layers if denominator == 0.0]
        warn.many(
            "zero",
            zero,
            "RWC of {layer} is nan: its previous weights are all zero.",
            "RWC of {count} layers is nan: their previous weights are all zero ({names}).",
        )
        for kind in {str(value) for _, value, den in layers if den != 0.0 and not math.isfinite(value)}:
            warn.many(
                ("nonfinite", kind),
                [name for name, value, den in layers if den != 0.0 and str(value) == kind],
                f"RWC of {{layer}} is {kind}: its weights contain NaN or inf.",
                f"RWC of {{count}} layers is {kind}: their weights contain NaN or inf ({{names}}).",
            )
    return dict(zip(names, values, strict=True))
