"""Timing contenders side by side (one call, and medians of rounds in shuffled order), and the peak memory of a call."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call: CUDA events around it on a GPU, perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def interleaved(contenders: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median milliseconds of each contender, timed round by round so that drift of the machine hits all alike.

    Each round runs them in another order (shuffled, with a fixed seed), so that none always runs right after the
    same one: on a GPU the first tracker after the copy was 1.5x slower than the next ones when the order was fixed.
    """
    for fn in contenders.values():  # warm-up: allocations, first-call costs
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order, rng = list(contenders), random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            times[name].append(time_once(contenders[name], device))
    return {name: statistics.median(t) for name, t in times.items()}


def peak_extra(fn: Callable[[], object], device: torch.device) -> float:
    """MiB that one call of ``fn`` allocates at its peak above what was in use before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # the peak resident set starts again from the current one
    before = _status("VmRSS")
    fn()
    return (_status("VmHWM") - before) / 2**20


def _status(field: str) -> int:
    """A memory figure of this process from ``/proc/self/status``, in bytes."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) * 1024
