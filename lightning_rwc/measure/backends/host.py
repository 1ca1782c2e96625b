"""Measuring accelerator weights whose snapshot lives in host memory (``snapshot_device="cpu"``)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rwc.measure.backends.base import Backend, snapshot_of
from lightning_rwc.measure.backends.foreach import sums_in_place


class HostSnapshot(Backend):
    """Weights on an accelerator with their snapshot in (pinned) host memory, for accelerators that are full.

    One tensor at a time is copied to the device, measured there and refreshed back to the host, so the extra device
    memory at peak is about one layer.

    Example::

        >>> backend = HostSnapshot([torch.ones(3)], [torch.zeros(3)], "l1", torch.device("cpu"))
        >>> backend.measure().tolist()
        [[3.0], [0.0]]
    """

    def __init__(
        self, weights: list[Tensor], baselines: list[Tensor | None], norm: str, snapshot_device: torch.device
    ) -> None:
        super().__init__(weights, baselines, norm)
        self.snapshots = [snapshot_of(w, b, snapshot_device) for w, b in zip(weights, baselines, strict=True)]

    def measure(self) -> Tensor:
        """Per-tensor numerators and denominators, ``(2, k)`` float64 on the weights' device; refreshes snapshots."""
        parts = []
        for w, host in zip(self.weights, self.snapshots, strict=True):
            on_device = host.to(w.device, non_blocking=True)
            parts.append(sums_in_place([on_device], [w], self.norm))
            host.copy_(w, non_blocking=True)
        return torch.cat(parts, dim=1)
