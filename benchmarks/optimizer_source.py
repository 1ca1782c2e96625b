"""Every-step RWC from the optimizer's update against a snapshot of the weights: time, bytes held, peak memory.

A GPT-style model (:mod:`benchmarks.gpt`) trained by AdamW. Each contender owns a copy of the model and optimizer
with the same random gradients, and one step is ``optimizer.step()`` then the tracker's ``step()``:

- ``none``: the optimizer step alone;
- ``snapshot``: ``WeightChangeTracker(model)``, which keeps a copy of the weights;
- ``optimizer``: ``WeightChangeTracker(model, source="optimizer", optimizer=...)``, which keeps none: its hooks
  reduce each step's change from AdamW's state around the step;
- ``copy``: one copy of the weights into a buffer (``torch._foreach_copy_``), the yardstick of a measurement.

Reported per contender: the median time of a step over rounds in shuffled order, the time of the measurement (the
step less ``none``'s), that time over ``copy``'s, the bytes the tracker holds between steps, and the peak bytes the
step allocates above the model, its gradients and optimizer state (CUDA's allocator statistics on a GPU; on the CPU
the peak resident memory, reset through ``/proc/self/clear_refs``).

Run ``python -m benchmarks.optimizer_source --out benchmarks/results/optimizer-source-cpu.md`` (about 100 M
parameters), or ``--device cuda --size gpt2-1.5b`` on a GPU.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import date

import torch

from benchmarks.gpt import GPT, SIZES, Size
from benchmarks.tables import cpu_name, publish, table
from benchmarks.timing import interleaved, peak_extra
from lightning_rwc import WeightChangeTracker

CPU_SIZE = Size(layers=14, width=768, heads=12, vocab=8192, context=64, batch=2)  # about 100 M parameters


def contender(size: Size, device: torch.device, dtype: torch.dtype, source: str | None) -> tuple[Callable, int]:
    """A step of AdamW on a fresh model with fixed random gradients, measured by ``source``; bytes the tracker holds."""
    torch.manual_seed(0)
    model = GPT(size).to(device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=device.type == "cuda" or None)
    generator = torch.Generator(device).manual_seed(1)
    for param in model.parameters():
        param.grad = 1e-3 * torch.randn(param.shape, generator=generator, device=device, dtype=dtype)
    if source is None:
        return optimizer.step, 0
    options = {"source": "optimizer", "optimizer": optimizer} if source == "optimizer" else {}
    tracker = WeightChangeTracker(model, **options)

    def step() -> None:
        optimizer.step()
        tracker.step()

    return step, tracker.snapshot_bytes


def copy_of_weights(size: Size, device: torch.device, dtype: torch.dtype) -> Callable[[], None]:
    """One copy of the tracked weights (those of more than one dimension) into a buffer kept for it."""
    torch.manual_seed(0)
    weights = [p.detach() for p in GPT(size).to(device, dtype).parameters() if p.dim() > 1]
    buffers = [torch.empty_like(w) for w in weights]
    return lambda: torch._foreach_copy_(buffers, weights)


def bench(size: Size, device: torch.device, dtype: torch.dtype, repeats: int) -> list[dict]:
    steps, held = {}, {}
    for name, source in (("none", None), ("snapshot", "snapshot"), ("optimizer", "optimizer")):
        steps[name], held[name] = contender(size, device, dtype, source)
    copy = copy_of_weights(size, device, dtype)
    times = interleaved({**steps, "copy": copy}, device, repeats)
    peaks = {name: peak_extra(fn, device) for name, fn in steps.items()}
    rows = []
    for name in steps:
        measuring = times[name] - times["none"]
        row = {"contender": name, "step (ms)": times[name], "measurement (ms)": measuring if name != "none" else "-"}
        row["measurement / copy"] = measuring / times["copy"] if name != "none" else "-"
        row["bytes held"] = held[name]
        row["peak extra (MiB)"] = peaks[name]
        row["peak extra over none (MiB)"] = peaks[name] - peaks["none"] if name != "none" else "-"
        rows.append(row)
    rows.append({"contender": "copy", "step (ms)": times["copy"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default=None, choices=sorted(SIZES), help="a size of benchmarks.gpt (GPU)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--smoke", action="store_true", help="a tiny model, one round (for the test suite)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="also write the Markdown report to this file")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    size = SIZES["smoke"] if args.smoke else SIZES[args.size] if args.size else CPU_SIZE
    repeats = 1 if args.smoke else args.repeats
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu_name()}"
    sections = [
        f"# RWC every step from the optimizer's update, {date.today().isoformat()}",
        f"{hardware}; torch {torch.__version__}, {torch.get_num_threads()} threads. GPT-style model of "
        f"{size.parameters / 1e6:.0f} M parameters ({size.layers} blocks x {size.width}, vocabulary {size.vocab}), "
        f"{args.dtype}, AdamW; median of {repeats} rounds in shuffled order. Command: "
        f"`python -m benchmarks.optimizer_source {' '.join(sys.argv[1:])}`.",
        table(bench(size, device, dtype, repeats)),
    ]
    publish(sections, args.out)


if __name__ == "__main__":
    main()
