"""The interface every measuring backend implements, and how a backend lays out a snapshot."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Backend(ABC):
    """Measures a group of weights (one device, one dtype) against their snapshots, and refreshes the snapshots.

    A backend owns the snapshot of each of its weights; it is built again whenever the tracked set changes or a
    weight gets new storage, from the previous snapshots (``baselines``).

    Args:
        weights: the tensors to measure (the local shards of sharded parameters), detached.
        baselines: the previous value of each weight, on any device and in any layout, or ``None`` to start from the
            weight's current value. A baseline already laid out as the backend needs is kept, not copied.
        norm: see :mod:`lightning_rwc.measure.functional`.
    """

    snapshots: list[Tensor]
    """The snapshot of each weight, shaped like it (views into the backend's own storage)."""

    def __init__(self, weights: list[Tensor], baselines: list[Tensor | None], norm: str) -> None:
        self.weights = weights
        self.norm = norm

    @abstractmethod
    def measure(self) -> Tensor:
        """Numerators and denominators of every weight against its snapshot, then the weights become the snapshots.

        Returns:
            A ``(2, k)`` float64 tensor on the weights' device (it may be the backend's own buffer, overwritten by
            the next call).
        """


def snapshot_of(weight: Tensor, baseline: Tensor | None, device: torch.device | None = None) -> Tensor:
    """A snapshot of ``weight`` on ``device`` (its own by default) with its strides, holding ``baseline``'s values.

    ``baseline`` itself is returned when it already is such a tensor (with storage of its own); ``None`` stands for
    the weight's current value. A snapshot in host memory for a CUDA weight is pinned, so transfers can overlap.

    Example::

        >>> weight = torch.ones(3, 2).t()
        >>> snapshot = snapshot_of(weight, None)
        >>> snapshot.stride() == weight.stride(), snapshot_of(weight, snapshot) is snapshot
        (True, True)
    """
    device = weight.device if device is None else device
    if (
        baseline is not None
        and baseline.device == device
        and baseline.dtype == weight.dtype
        and baseline.shape == weight.shape
        and baseline.stride() == weight.stride()
        and baseline.untyped_storage().nbytes() == weight.numel() * weight.element_size()
    ):
        return baseline
    pin = weight.device.type == "cuda" and device.type == "cpu"
    snapshot = torch.empty_like(weight, device=device, pin_memory=pin)
    return snapshot.copy_(weight if baseline is None else baseline)


def memory_order(t: Tensor) -> list[int] | None:
    """The order of ``t``'s dimensions from outermost to innermost in memory, or ``None`` if it is not dense.

    Example::

        >>> memory_order(torch.ones(2, 3).t()), memory_order(torch.ones(2, 6)[:, ::2])
        ([1, 0], None)
    """
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    return order if t.permute(order).is_contiguous() else None
