"""Measuring with PyTorch's multi-tensor (``_foreach``) kernels: any accelerator, all tensors of a group at once."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rwc.measure.backends.base import Backend, snapshot_of
from lightning_rwc.measure.functional import EXPONENTS, element_sums, tensor_sums


class TensorLists(Backend):
    """Weights of one device and dtype, measured with multi-tensor kernels over all of them at once.

    Four passes over the weights, and no memory beyond the snapshot: ``|P|``, ``P -= W`` in place, ``|P - W|``,
    ``P <- W``.

    Example::

        >>> weight = torch.ones(2, 2)
        >>> backend = TensorLists([weight], [None], "l2")
        >>> _ = weight.mul_(3.0)  # each element moves by 2: the sum of squares of the change is 16
        >>> backend.measure().tolist(), torch.equal(backend.snapshots[0], weight)
        ([[16.0], [4.0]], True)
    """

    def __init__(self, weights: list[Tensor], baselines: list[Tensor | None], norm: str) -> None:
        super().__init__(weights, baselines, norm)
        self.snapshots = [snapshot_of(w, b) for w, b in zip(weights, baselines, strict=True)]

    def measure(self) -> Tensor:
        """Per-tensor numerators and denominators, ``(2, k)`` float64; refreshes the snapshots."""
        sums = sums_in_place(self.snapshots, self.weights, self.norm)
        torch._foreach_copy_(self.snapshots, self.weights)
        return sums


def sums_in_place(previous: list[Tensor], current: list[Tensor], norm: str) -> Tensor:
    """The ``(2, k)`` float64 sums of ``current`` against ``previous``; the caller refreshes ``previous`` after.

    For a p-norm ``previous`` is left holding ``previous - current`` (no memory is allocated); a norm without a
    multi-tensor form is summed one tensor at a time with :func:`~lightning_rwc.measure.functional.element_sums`.
    """
    if norm not in EXPONENTS:
        pairs = zip(previous, current, strict=True)
        return torch.stack([element_sums(p, w, norm).to(torch.float64) for p, w in pairs], dim=1)
    denominators = tensor_sums(previous, norm)
    torch._foreach_sub_(previous, current)
    return torch.stack([tensor_sums(previous, norm), denominators])
