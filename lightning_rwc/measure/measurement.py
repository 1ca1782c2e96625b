"""One measurement on its way from the device to the host, and the single transfer that carries it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


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
