"""How a group of tracked tensors (one device, one dtype) is measured: the interface, and the choice of a backend.

=========================  ===============================================================================
backend                    measures
=========================  ===============================================================================
:class:`FusedKernel`       dense CUDA weights, in one pass of a Triton kernel (``kernel="auto"`` or ``"triton"``)
:class:`TensorLists`       weights on other accelerators (or where the kernel cannot run), with PyTorch's
                           multi-tensor kernels; every device with ``kernel="foreach"``
:class:`CpuBatches`        CPU weights, in cache-sized batches
:class:`HostSnapshot`      accelerator weights whose snapshot lives in host memory (``snapshot_device="cpu"``)
=========================  ===============================================================================

:func:`create_backend` makes that choice in one place.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_rwc.measure.backends import fused
from lightning_rwc.measure.backends.base import Backend, memory_order, snapshot_of
from lightning_rwc.measure.backends.cpu import CpuBatches
from lightning_rwc.measure.backends.foreach import TensorLists
from lightning_rwc.measure.backends.fused import FusedKernel
from lightning_rwc.measure.backends.host import HostSnapshot
from lightning_rwc.validate import choices
from lightning_rwc.warn_once import WarnOnce

Kernel = Literal["auto", "triton", "foreach"]
KERNELS = choices(Kernel)

__all__ = [
    "KERNELS",
    "Backend",
    "CpuBatches",
    "FusedKernel",
    "HostSnapshot",
    "Kernel",
    "TensorLists",
    "create_backend",
    "memory_order",
    "snapshot_of",
]


def create_backend(
    weights: list[Tensor],
    baselines: list[Tensor | None],
    norm: str,
    kernel: Kernel = "auto",
    snapshot_device: torch.device | None = None,
    warn: WarnOnce | None = None,
) -> Backend:
    """The backend that measures ``weights`` (one device and dtype) against ``baselines``.

    Args:
        weights: the local tensors of the tracked parameters.
        baselines: the previous value of each weight, or ``None`` to start from its current value.
        norm: see :mod:`lightning_rwc.measure.functional`.
        kernel: ``"auto"`` (the Triton kernel on CUDA where it works), ``"triton"`` (that kernel or an error) or
            ``"foreach"`` (PyTorch's multi-tensor kernels on every device).
        snapshot_device: where the snapshot lives; ``None`` beside the weights.
        warn: gives the warning when the Triton kernel was expected but cannot run.

    Raises:
        RuntimeError: with ``kernel="triton"``, if the kernel cannot measure these weights (the reason is given).

    Example::

        >>> type(create_backend([torch.ones(3)], [None], "l1")).__name__
        'CpuBatches'
        >>> type(create_backend([torch.ones(3)], [None], "l1", kernel="foreach")).__name__
        'TensorLists'
    """
    device = weights[0].device
    if snapshot_device is not None and snapshot_device != device:
        return HostSnapshot(weights, baselines, norm, snapshot_device)
    if kernel != "foreach":
        reason = _fused_problem(weights, norm)
        if reason is None:
            return FusedKernel(weights, baselines, norm, warn)
        if kernel == "triton":
            raise RuntimeError(f"kernel='triton' cannot measure these weights: {reason}. Use kernel='auto'.")
        if device.type == "cuda" and warn is not None:
            warn(
                ("kernel", reason),
                f"Measuring with PyTorch's multi-tensor kernels: the fused Triton kernel is not usable ({reason}).",
            )
    if device.type == "cpu" and kernel == "auto":
        return CpuBatches(weights, baselines, norm)
    return TensorLists(weights, baselines, norm)


def _fused_problem(weights: list[Tensor], norm: str) -> str | None:
    """Why the Triton kernel cannot measure ``weights``, or ``None`` if it can."""
    if weights[0].device.type == "cuda" and any(memory_order(w) is None for w in weights):
        return "a weight is not dense in memory"
    return fused.problem(weights[0].device, weights[0].dtype, norm)
