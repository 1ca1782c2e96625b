"""The one-pass measurement of CUDA weights: a Triton kernel that reads each weight and its snapshot once.

PyTorch's multi-tensor kernels need four passes over the weights for one measurement (the snapshot's norm, the
difference, its norm, the refresh), so they move about 3.5 times the bytes of a copy. The kernel here reads ``W``
and ``P`` once, reduces both per block and writes ``W`` over ``P``: the bytes of one copy and a half. A second small
kernel adds the block sums of each tensor in float64, in a fixed order (no atomics: the result does not change from
one run to the next).

On CUDA the two launches are recorded once into a CUDA graph and replayed: a Triton launch costs tens of microseconds
of host time, more than the kernel itself for small models, while a replay costs a few.

Triton ships with PyTorch's CUDA builds on Linux and is imported at the first measurement, never with the package.
The tracker uses this kernel for dense CUDA weights whose snapshot is laid out like them, when :data:`ENABLED` is
true (read whenever the tracker lays out its plan) and :func:`problem` finds that it compiles and gives the right
values on the device; otherwise it uses the multi-tensor kernels.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any

import torch
from torch import Tensor

ENABLED = True
"""Whether the tracker may use this kernel on CUDA; set it to ``False`` to use PyTorch's multi-tensor kernels."""

BLOCK = 4096
"""Elements reduced by one program: each tensor is cut into blocks of this size (the last one masked)."""

CHUNK = 1024
"""Block sums added together per step of the second kernel."""

NORM_CODES = {"l1": 0, "l2": 1, "elementwise": 2}

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_REPORTED: set[str] = set()
"""Warnings about this kernel already given in this process: each is given once."""


def report_once(message: str, stacklevel: int = 2) -> None:
    """Warn with ``message`` (a :class:`RuntimeWarning`) unless this process was told it already."""
    if message not in _REPORTED:
        _REPORTED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)


@functools.cache
def problem(device: torch.device, dtype: torch.dtype, norm: str) -> str | None:
    """Why the kernel cannot measure ``dtype`` weights on ``device`` with ``norm``, or ``None`` if it can.

    Compiles the kernel and measures two small tensors with it, once per process and combination, so that a machine
    without Triton or a working compiler, or a device that computes wrong values, is found before any real snapshot
    is written.

    Example::

        >>> problem(torch.device("cpu"), torch.float32, "l1")
        'the fused kernel runs on CUDA devices only'
    """
    if device.type != "cuda":
        return "the fused kernel runs on CUDA devices only"
    if dtype not in _DTYPES:
        return f"the fused kernel takes {_DTYPES}, got {dtype}"
    return _self_test(device, dtype, norm)


def _self_test(device: torch.device, dtype: torch.dtype, norm: str) -> str | None:
    """Measure a known change on ``device`` (a masked block, a full one and another tensor); why it failed, or ``None``.

    From ``[2, -4, 0]`` to ``[3, -2, 1]``: changes 1, 2, 1 (L1 4, squares 6, ratios 0.5 + 0.5 over two nonzero
    elements) against 6 or 20; a second tensor of ``BLOCK + 1`` ones that does not change.
    """
    values = ([2.0, -4.0, 0.0], [3.0, -2.0, 1.0])
    previous, current = (
        [torch.tensor(v, dtype=dtype, device=device), torch.ones(BLOCK + 1, dtype=dtype, device=device)] for v in values
    )
    expected = {"l1": [[4.0, 0.0], [6.0, BLOCK + 1]], "l2": [[6.0, 0.0], [20.0, BLOCK + 1]]}
    expected["elementwise"] = [[1.0, 0.0], [2.0, BLOCK + 1]]
    try:
        accumulate = torch.float64 if dtype == torch.float64 else torch.float32
        got = FusedKernel(current, previous, accumulate).measure(norm).tolist()
    except Exception as err:  # Triton missing, no compiler, unsupported device: nothing real was written
        return f"{type(err).__name__}: {err}"
    if got != expected[norm] or not all(torch.equal(p, w) for p, w in zip(previous, current, strict=True)):
        return f"the kernel measured {got} where {expected[norm]} was expected"
    return None


class FusedKernel:
    """The launch plan for one group of weights of one dtype and device, with their snapshots laid out alike.

    Every tensor is addressed by its element offset from the first one, so that a single launch covers them all.

    Args:
        current: the weights (dense in memory).
        snapshots: their snapshots, each with the strides of its weight.
        accumulate: dtype of the sums (float32, or float64 for float64 weights).

    Raises:
        ValueError: if a snapshot is laid out unlike its weight.
    """

    def __init__(self, current: list[Tensor], snapshots: list[Tensor], accumulate: torch.dtype) -> None:
        for w, p in zip(current, snapshots, strict=True):
            if w.stride() != p.stride() or w.dtype != p.dtype or w.device != p.device:
                raise ValueError("each snapshot must have the dtype, device and strides of its weight")
        device = current[0].device
        self.current, self.snapshots = current, snapshots
        self.w_offsets = _element_offsets(current)
        self.p_offsets = _element_offsets(snapshots)
        self.align = 16 // current[0].element_size() if _aligned(current + snapshots) else 1
        self.block = BLOCK
        numels = torch.tensor([w.numel() for w in current], dtype=torch.int64)
        counts = (numels + BLOCK - 1) // BLOCK
        firsts = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        owners = torch.repeat_interleave(torch.arange(len(current)), counts)
        starts = (torch.arange(int(firsts[-1])) - firsts[owners]) * BLOCK
        self.blocks = int(firsts[-1])
        self.numels, self.firsts, self.owners, self.starts = (
            t.to(device) for t in (numels, firsts, owners.to(torch.int32), starts)
        )
        self.partials = torch.empty(2, self.blocks, dtype=accumulate, device=device)
        self.totals = torch.zeros(2, len(current), dtype=torch.float64, device=device)  # add_blocks fills every entry
        self.graphs: dict[str, torch.cuda.CUDAGraph | None] = {}

    def measure(self, norm: str) -> Tensor:
        """Per-tensor numerators and denominators, shape ``(2, k)`` in float64; refreshes the snapshots.

        The result is the plan's output buffer: the next call overwrites it. On CUDA the first call launches the
        kernels and records them into a CUDA graph that later calls replay.
        """
        device = self.totals.device
        if not self.blocks:  # nothing but empty tensors
            return self.totals
        # Triton and CUDA graphs launch on the current device: make it the weights' one
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            graph = self.graphs.get(norm)
            if graph is not None:
                graph.replay()
                return self.totals
            self._launch(norm)
            if device.type == "cuda" and norm not in self.graphs:
                self.graphs[norm] = self._record(norm)
        return self.totals

    def _record(self, norm: str) -> torch.cuda.CUDAGraph | None:
        """The launches of :meth:`_launch` as a CUDA graph (recorded, not run), or ``None`` with a warning."""
        device = self.totals.device
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        try:
            with torch.cuda.stream(stream):
                # thread_local: a DataLoader's pin-memory thread may call CUDA meanwhile
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    self._launch(norm)
                finally:
                    graph.capture_end()
        except Exception as err:  # nothing ran: launching without a graph gives the same values, only slower
            reason = f"{type(err).__name__}: {err}"
            report_once(
                f"Launching the fused kernel without a CUDA graph ({reason}): the same values, more host time.", 3
            )
            return None
        finally:
            torch.cuda.current_stream(device).wait_stream(stream)
        return graph

    def _launch(self, norm: str) -> None:
        measure_blocks, add_blocks = _kernels()
        measure_blocks[(self.blocks,)](
            self.current[0],
            self.snapshots[0],
            self.w_offsets,
            self.p_offsets,
            self.numels,
            self.owners,
            self.starts,
            self.partials,
            self.blocks,
            NORM=NORM_CODES[norm],
            ALIGN=self.align,
            BLOCK=self.block,
        )
        add_blocks[(len(self.current), 2)](self.partials, self.firsts, self.totals, self.blocks, CHUNK=CHUNK)


def _element_offsets(tensors: list[Tensor]) -> Tensor:
    """Where each tensor starts, in elements from the first one (int64, on their device)."""
    size = tensors[0].element_size()
    base = tensors[0].data_ptr()
    offsets = []
    for t in tensors:
        distance = t.data_ptr() - base
        if distance % size:
            raise ValueError("the fused kernel needs tensors aligned to their element size")
        offsets.append(distance // size)
    return torch.tensor(offsets, dtype=torch.int64, device=tensors[0].device)


def _aligned(tensors: list[Tensor]) -> bool:
    return all(t.data_ptr() % 16 == 0 for t in tensors)


@functools.cache
def _kernels() -> tuple[Any, Any]:
    """Compile-on-first-use Triton kernels (imported here so that ``import lightning_rwc`` stays light)."""
    import triton
    import triton.language as tl

    @triton.jit
    def measure_blocks(
        w_base,
        p_base,
        w_offsets,
        p_offsets,
        numels,
        owners,
        starts,
        partials,
        blocks,
        NORM: tl.constexpr,
        ALIGN: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        block = tl.program_id(0)
        tensor = tl.load(owners + block)
        start = tl.multiple_of(tl.load(starts + block), BLOCK)
        remaining = tl.load(numels + tensor) - start
        w_ptr = w_base + tl.multiple_of(tl.load(w_offsets + tensor), ALIGN) + start
        p_ptr = p_base + tl.multiple_of(tl.load(p_offsets + tensor), ALIGN) + start
        index = tl.arange(0, BLOCK)
        if remaining >= BLOCK:  # full blocks load without a mask, in wide aligned accesses
            w = tl.load(w_ptr + index)
            p = tl.load(p_ptr + index)
            tl.store(p_ptr + index, w)
        else:
            mask = index < remaining
            w = tl.load(w_ptr + index, mask=mask, other=0.0)
            p = tl.load(p_ptr + index, mask=mask, other=0.0)
            tl.store(p_ptr + index, w, mask=mask)
        acc = partials.dtype.element_ty
        change = (p - w).to(acc)  # in the weights' dtype, exact for a change smaller than the weight
        previous = p.to(acc)
        if NORM == 0:
            numerator = tl.sum(tl.abs(change), 0)
            denominator = tl.sum(tl.abs(previous), 0)
        elif NORM == 1:
            numerator = tl.sum(change * change, 0)
            denominator = tl.sum(previous * previous, 0)
        else:
            nonzero = previous != 0
            ratios = tl.abs(change) / tl.where(nonzero, tl.abs(previous), 1.0)
            numerator = tl.sum(tl.where(nonzero, ratios, 0.0), 0)
            denominator = tl.sum(nonzero.to(acc), 0)
        tl.store(partials + block, numerator)
        tl.store(partials + blocks + block, denominator)

    @triton.jit
    def add_blocks(partials, firsts, totals, blocks, CHUNK: tl.constexpr):
        tensor = tl.program_id(0)
        row = tl.program_id(1)
        first = tl.load(firsts + tensor)
        last = tl.load(firsts + tensor + 1)
        acc = tl.zeros([CHUNK], dtype=tl.float64)
        for start in range(first, last, CHUNK):
            index = start + tl.arange(0, CHUNK)
            acc += tl.load(partials + row * blocks + index, mask=index < last, other=0.0).to(tl.float64)
        tl.store(totals + row * tl.num_programs(0) + tensor, tl.sum(acc, 0))

    return measure_blocks, add_blocks
