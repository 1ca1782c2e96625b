"""The one-pass measurement of CUDA weights: a Triton kernel that reads each weight and its snapshot once.

PyTorch's multi-tensor kernels need four passes over the weights for one measurement (the snapshot's norm, the
difference, its norm, the refresh), so they move about 3.5 times the bytes of a copy. The kernel here reads ``W``
and ``P`` once, forms the terms of :mod:`lightning_rwc.measure.functional` per block and writes ``W`` over ``P``:
the bytes of one copy and a half. A second small kernel adds the block sums of each tensor in float64, in a fixed
order (no atomics: the result does not change from one run to the next).

On CUDA the two launches are recorded once into a CUDA graph and replayed: a Triton launch costs tens of microseconds
of host time, more than the kernel itself for small models, while a replay costs a few.

Triton ships with PyTorch's CUDA builds on Linux and is imported at the first measurement, never with the package.
:func:`problem` says whether the kernel compiles and measures a known change correctly on a device; the tracker
uses this backend only then (:func:`~lightning_rwc.measure.backends.create_backend`).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
from torch import Tensor

from lightning_rwc.measure.backends.base import Backend, snapshot_of
from lightning_rwc.measure.functional import accumulation_dtype
from lightning_rwc.warn_once import WarnOnce

BLOCK = 4096
"""Elements reduced by one program: each tensor is cut into blocks of this size (the last one masked)."""

CHUNK = 1024
"""Block sums added together per step of the second kernel."""

NORM_CODES = {"l1": 0, "l2": 1, "elementwise": 2}
"""The norms the kernel has code for; another norm is measured by the other backends."""

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_VERDICTS: dict[tuple[torch.device, torch.dtype, str], str | None] = {}
"""Definite answers of :func:`problem` in this process: facts about the machine, found once."""


def problem(device: torch.device, dtype: torch.dtype, norm: str) -> str | None:
    """Why the kernel cannot measure ``dtype`` weights on ``device`` with ``norm``, or ``None`` if it can.

    The first time for a combination it compiles the kernel and measures a known change with it (see
    :func:`self_test`), so that a machine without Triton or a working compiler, or a device that computes wrong
    values, is found before any real snapshot is written. A definite answer (the values were right or wrong, or
    Triton is missing) is kept for the process; a self-test that failed with an error (say, out of memory) is run
    again the next time.

    Example::

        >>> problem(torch.device("cpu"), torch.float32, "l1")
        'the fused kernel runs on CUDA devices only'
    """
    if device.type != "cuda":
        return "the fused kernel runs on CUDA devices only"
    if dtype not in DTYPES:
        return f"the fused kernel takes {DTYPES}, got {dtype}"
    if norm not in NORM_CODES:
        return f"the fused kernel has no code for norm {norm!r}"
    key = (device, dtype, norm)
    if key not in _VERDICTS:
        verdict, definite = self_test(device, dtype, norm)
        if not definite:
            return verdict
        _VERDICTS[key] = verdict
    return _VERDICTS[key]


def self_test(device: torch.device, dtype: torch.dtype, norm: str) -> tuple[str | None, bool]:
    """Measure a known change on ``device`` (a masked block, a full one and another tensor).

    From ``[2, -4, 0]`` to ``[3, -2, 1]``: changes 1, 2, 1 (L1 4, squares 6, ratios 0.5 + 0.5 over two nonzero
    elements) against 6 or 20; a second tensor of ``BLOCK + 1`` ones that does not change.

    Returns:
        Why the kernel failed (``None`` if it did not), and whether that answer is definite: the kernel ran, or
        Triton cannot be imported. Any other error may pass (an out-of-memory error, a busy device).
    """
    values = ([2.0, -4.0, 0.0], [3.0, -2.0, 1.0])
    previous, current = (
        [torch.tensor(v, dtype=dtype, device=device), torch.ones(BLOCK + 1, dtype=dtype, device=device)] for v in values
    )
    expected = {"l1": [[4.0, 0.0], [6.0, BLOCK + 1]], "l2": [[6.0, 0.0], [20.0, BLOCK + 1]]}
    expected["elementwise"] = [[1.0, 0.0], [2.0, BLOCK + 1]]
    try:
        kernel = FusedKernel(current, list(previous), norm)
        got = kernel.launch().tolist()
    except ImportError as err:
        return f"{type(err).__name__}: {err}", True
    except Exception as err:  # no compiler, unsupported device, out of memory: nothing real was written
        return f"{type(err).__name__}: {err}", False
    if got != expected[norm] or not all(torch.equal(p, w) for p, w in zip(kernel.snapshots, current, strict=True)):
        return f"the kernel measured {got} where {expected[norm]} was expected", True
    return None, True


class FusedKernel(Backend):
    """Dense weights of one dtype and device, measured by the Triton kernel; snapshots laid out like the weights.

    Every tensor is addressed by its element offset from the first one, so that a single launch covers them all.

    Args:
        weights: the weights (dense in memory).
        baselines: see :class:`~lightning_rwc.measure.backends.base.Backend`.
        norm: one of :data:`~lightning_rwc.measure.backends.fused.NORM_CODES`.
        warn: gives the warning when the launches cannot be recorded into a CUDA graph.
    """

    def __init__(
        self, weights: list[Tensor], baselines: list[Tensor | None], norm: str, warn: WarnOnce | None = None
    ) -> None:
        super().__init__(weights, baselines, norm)
        self.snapshots = [snapshot_of(w, b) for w, b in zip(weights, baselines, strict=True)]
        self.warn = warn or WarnOnce()
        device = weights[0].device
        self.w_offsets = _element_offsets(weights)
        self.p_offsets = _element_offsets(self.snapshots)
        self.align = 16 // weights[0].element_size() if _aligned(weights + self.snapshots) else 1
        self.block = BLOCK
        numels = torch.tensor([w.numel() for w in weights], dtype=torch.int64)
        counts = (numels + BLOCK - 1) // BLOCK
        firsts = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        owners = torch.repeat_interleave(torch.arange(len(weights)), counts)
        starts = (torch.arange(int(firsts[-1])) - firsts[owners]) * BLOCK
        self.blocks = int(firsts[-1])
        self.numels, self.firsts, self.owners, self.starts = (
            t.to(device) for t in (numels, firsts, owners.to(torch.int32), starts)
        )
        self.partials = torch.empty(2, self.blocks, dtype=accumulation_dtype(weights[0].dtype), device=device)
        self.totals = torch.zeros(2, len(weights), dtype=torch.float64, device=device)  # add_blocks fills every entry
        self.graph: torch.cuda.CUDAGraph | None = None
        self.recorded = False

    def measure(self) -> Tensor:
        """Per-tensor numerators and denominators, ``(2, k)`` float64; refreshes the snapshots.

        The result is the backend's output buffer: the next call overwrites it. On CUDA the first call launches the
        kernels and records them into a CUDA graph that later calls replay.
        """
        if self.graph is not None:
            with torch.cuda.device(self.totals.device):
                self.graph.replay()
            return self.totals
        self.launch()
        if self.totals.device.type == "cuda" and not self.recorded:
            self.graph, self.recorded = self._record(), True
        return self.totals

    def launch(self) -> Tensor:
        """Launch the two kernels (no CUDA graph); the result as :meth:`measure`'s."""
        if not self.blocks:  # nothing but empty tensors
            return self.totals
        device = self.totals.device
        # Triton launches on the current device: make it the weights' one
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            measure_blocks, add_blocks = _kernels()
            measure_blocks[(self.blocks,)](
                self.weights[0],
                self.snapshots[0],
                self.w_offsets,
                self.p_offsets,
                self.numels,
                self.owners,
                self.starts,
                self.partials,
                self.blocks,
                NORM=NORM_CODES[self.norm],
                ALIGN=self.align,
                BLOCK=self.block,
            )
            add_blocks[(len(self.weights), 2)](self.partials, self.firsts, self.totals, self.blocks, CHUNK=CHUNK)
        return self.totals

    def _record(self) -> torch.cuda.CUDAGraph | None:
        """The launches of :meth:`launch` as a CUDA graph (recorded, not run), or ``None`` with a warning."""
        if not self.blocks:
            return None
        device = self.totals.device
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        try:
            with torch.cuda.stream(stream):
                # thread_local: a DataLoader's pin-memory thread may call CUDA meanwhile
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    self.launch()
                finally:
                    graph.capture_end()
        except Exception as err:  # nothing ran: launching without a graph gives the same values, only slower
            reason = f"{type(err).__name__}: {err}"
            self.warn(
                ("graph", reason),
                f"Launching the fused kernel without a CUDA graph ({reason}): the same values, more host time.",
            )
            return None
        finally:
            torch.cuda.current_stream(device).wait_stream(stream)
        return graph


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
