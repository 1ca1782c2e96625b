"""Measuring accelerator weights whose snapshot lives in host memory (``snapshot_device="cpu"``).

The snapshot is cut into pieces of at most :data:`PIECE` elements. On CUDA each piece goes to the device on one
copy stream, into one of two buffers, while the previous piece is being reduced on the compute stream and the
weights of the one before travel back to the host on a second copy stream: uploads, reductions and downloads
overlap, and PCIe carries data both ways at once. The extra device memory is the two buffers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rwc.measure.backends.base import Backend, memory_order, snapshot_of
from lightning_rwc.measure.backends.foreach import sums_in_place

PIECE = 1 << 22
"""Elements per piece of a transfer (16 MB of float32): large enough for full PCIe speed, small enough to overlap."""


class HostSnapshot(Backend):
    """Weights on an accelerator with their snapshot in (pinned) host memory, for accelerators that are full.

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
        self.pieces: list[tuple[int, slice]] = []
        for index, weight in enumerate(weights):
            for start in range(0, weight.numel(), PIECE):
                self.pieces.append((index, slice(start, min(start + PIECE, weight.numel()))))
        device = weights[0].device
        self.owners = torch.tensor([index for index, _ in self.pieces], dtype=torch.int64, device=device)
        size = max((piece.stop - piece.start for _, piece in self.pieces), default=0)
        self.buffers = [torch.empty(size, dtype=weights[0].dtype, device=device) for _ in range(2)]
        self.streams = self.events = None
        if device.type == "cuda":
            self.streams = (torch.cuda.Stream(device), torch.cuda.Stream(device))  # uploads, downloads
            self.events = [[torch.cuda.Event() for _ in range(2)] for _ in range(2)]  # per buffer: loaded, reduced

    def measure(self) -> Tensor:
        """Per-tensor numerators and denominators, ``(2, k)`` float64 on the weights' device; refreshes snapshots."""
        weights = [_flat(w) for w in self.weights]
        snapshots = [_flat(s, like=w) for s, w in zip(self.snapshots, self.weights, strict=True)]
        parts = []
        if self.streams is None:
            for index, piece in self.pieces:
                on_device = snapshots[index][piece].to(self.buffers[0].device)
                parts.append(sums_in_place([on_device], [weights[index][piece]], self.norm))
                snapshots[index][piece].copy_(weights[index][piece])
        else:
            parts = self._stream(weights, snapshots)
        sums = torch.zeros(2, len(self.weights), dtype=torch.float64, device=self.owners.device)
        return sums.index_add_(1, self.owners, torch.cat(parts, dim=1)) if parts else sums

    def _stream(self, weights: list[Tensor], snapshots: list[Tensor]) -> list[Tensor]:
        """The pieces through two buffers: upload on one stream, reduce on the current one, download on another."""
        compute = torch.cuda.current_stream(self.owners.device)
        uploads, downloads = self.streams
        uploads.wait_stream(compute)  # the buffers are free (the last measurement's reductions are done)
        uploads.wait_stream(downloads)  # the snapshot is refreshed before it is read again
        downloads.wait_stream(compute)  # the weights are final before they are copied
        parts = []
        for number, (index, piece) in enumerate(self.pieces):
            slot = number % 2
            loaded, reduced = self.events[slot]
            buffer = self.buffers[slot][: piece.stop - piece.start]
            with torch.cuda.stream(uploads):
                if number >= 2:
                    uploads.wait_event(reduced)  # the reduction two pieces ago is done with this buffer
                buffer.copy_(snapshots[index][piece], non_blocking=True)
                loaded.record(uploads)
            compute.wait_event(loaded)
            parts.append(sums_in_place([buffer], [weights[index][piece]], self.norm))
            reduced.record(compute)
            with torch.cuda.stream(downloads):
                downloads.wait_event(loaded)  # the host piece was read before it is overwritten
                snapshots[index][piece].copy_(weights[index][piece], non_blocking=True)
        compute.wait_stream(downloads)  # the optimizer may change the weights only after they were copied
        for weight in weights:
            weight.record_stream(downloads)  # a gathered copy of a weight lives until its download is done
        return parts


def _flat(t: Tensor, like: Tensor | None = None) -> Tensor:
    """``t`` as one dimension in the memory order of ``like`` (``t`` itself by default): a view where that is dense."""
    order = memory_order(t if like is None else like)
    return t.reshape(-1) if order is None else t.permute(order).reshape(-1)
