"""Benchmarks of lightning-rwc: ``python -m benchmarks.run [--device cuda] [--smoke] [--out FILE]``.

Every ratio is measured side by side in one process:

1. one measurement (``tracker.step()``, snapshot refresh included) against a bandwidth bound timed the same way: a
   ``copy_`` of the tracked weights into a buffer of the same size (reads the weights, writes the snapshot);
2. the same against the naive loop users write by hand (one reduction and ``.item()`` per layer, as the original
   code did with one NumPy copy per layer), and on CUDA the fused Triton kernel against PyTorch's multi-tensor
   kernels;
3. the epoch-time overhead of the callback in a real ``Trainer.fit`` (interleaved runs, on the CPU or the GPU);
4. the memory of the snapshot against the tracked weights;
5. the time and peak memory of clustering 100 to 10,000 layers x 200 measurements;
6. monitoring every step (:mod:`benchmarks.every_step`): logging one measurement to TensorBoard, a GPT-style model
   trained with no monitoring, the bare tracker and the callback, and on CUDA GPT-2 1.5B's weights against the copy
   and PCIe bounds;
7. long runs (:mod:`benchmarks.long_runs`): the callback's memory and checkpoint after 100,000 measurements of
   1,000 tensors, clustering from its bounded history against the full one, and reading a run back from its event
   files against its values file.

With ``--profile`` the report also holds, per model, the operations that take the most time in ``tracker.step()``
(PyTorch's profiler; device time on CUDA), to say which one dominates when a target is missed.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from datetime import date

import numpy as np
import torch
from torch import nn

from benchmarks import every_step, long_runs
from benchmarks.tables import publish, table
from benchmarks.timing import interleaved
from lightning_rwc.measure import WeightChangeTracker, select_parameters


def many_small_layers(n: int = 1200, width: int = 64) -> nn.Module:
    """A synthetic stack of many small linear layers (the many-tensors case)."""
    return nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(n)])


def models(smoke: bool) -> dict[str, Callable[[], nn.Module]]:
    import torchvision

    if smoke:
        return {"resnet18": torchvision.models.resnet18, "stack-50x64": lambda: many_small_layers(50)}
    return {
        "resnet18": torchvision.models.resnet18,
        "resnet50": torchvision.models.resnet50,
        "resnet152": torchvision.models.resnet152,
        "vit_b_16": torchvision.models.vit_b_16,
        "stack-1200x64": many_small_layers,
    }


def naive_step(current: list[torch.Tensor], previous: list[torch.Tensor]) -> dict[int, float]:
    """What users write by hand: per layer a reduction, an ``.item()`` and a snapshot copy."""
    out = {}
    for i, (w, p) in enumerate(zip(current, previous, strict=True)):
        out[i] = ((w - p).abs().sum() / p.abs().sum()).item()
        p.copy_(w)
    return out


def numpy_step(current: list[torch.Tensor], previous: list[np.ndarray]) -> dict[int, float]:
    """The original code's way: copy every weight to NumPy, then compute on the CPU."""
    out = {}
    for i, (w, p) in enumerate(zip(current, previous, strict=True)):
        now = w.detach().cpu().numpy()
        out[i] = float(np.abs(now - p).sum() / np.abs(p).sum())
        previous[i] = now.copy()
    return out


def bench_kernel(device: torch.device, smoke: bool, repeats: int) -> list[dict]:
    rows = []
    for name, build in models(smoke).items():
        model = build().to(device)
        params = [p.detach() for _, p in select_parameters(model)]
        buffer = [p.clone() for p in params]
        previous = [p.clone() for p in params]
        contenders = {"copy": lambda b=buffer, p=params: torch._foreach_copy_(b, p)}
        for norm in ("l1", "l2", "elementwise"):
            contenders[norm] = WeightChangeTracker(model, norm=norm).step
        contenders["naive"] = lambda c=params, q=previous: naive_step(c, q)
        if device.type == "cuda":
            contenders["l1_multi_tensor"] = WeightChangeTracker(model, kernel="foreach").step
            contenders["l1_host_snapshot"] = WeightChangeTracker(model, snapshot_device="cpu").step
        else:
            arrays = [p.numpy().copy() for p in params]
            contenders["numpy"] = lambda c=params, a=arrays: numpy_step(c, a)
        times = interleaved(contenders, device, repeats)
        row = {"model": name, "tensors": len(params), "MB": sum(p.numel() * p.element_size() for p in params) / 1e6}
        row.update({f"{contender}_ms": ms for contender, ms in times.items()})
        rows.append(row)
        del model, params, buffer, previous, contenders
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_memory(device: torch.device) -> list[dict]:
    import torchvision

    rows = []
    for snapshot_device in (None, "cpu"):
        if snapshot_device == "cpu" and device.type != "cuda":
            continue
        model = torchvision.models.resnet50().to(device)
        tracked = sum(p.numel() * p.element_size() for _, p in select_parameters(model))
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        tracker = WeightChangeTracker(model, snapshot_device=snapshot_device)
        tracker.step()
        row = {
            "snapshot": snapshot_device or "beside weights",
            "tracked_MB": tracked / 1e6,
            "snapshot_MB": tracker.snapshot_bytes / 1e6,
            "snapshot/tracked": tracker.snapshot_bytes / tracked,
        }
        if device.type == "cuda":
            row["peak_extra_gpu_MB"] = (torch.cuda.max_memory_allocated() - base) / 1e6
        rows.append(row)
        del tracker, model
    return rows


def bench_training(device: torch.device, smoke: bool, repeats: int) -> list[dict]:
    import lightning.pytorch as pl

    from lightning_rwc import RelativeWeightChange
    from lightning_rwc.demo import load_digits_arrays, loaders, make_classifier, resnet18_for_small_grey_images

    arrays = load_digits_arrays()
    epochs = 1 if smoke else 2
    configs = {
        "without callback": None,
        "every_n_epochs=1": {"every_n_epochs": 1},
        "every_n_steps=10": {"every_n_epochs": None, "every_n_steps": 10},
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, kwargs in configs.items():  # interleaved, so drift hits every configuration alike
            pl.seed_everything(0, verbose=False)
            train, _ = loaders(arrays, 64, 256 if smoke else None, 0)
            callbacks = [] if kwargs is None else [RelativeWeightChange(**kwargs)]
            trainer = pl.Trainer(
                max_epochs=epochs,
                accelerator="gpu" if device.type == "cuda" else "cpu",
                devices=1,
                callbacks=callbacks,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            module = make_classifier(resnet18_for_small_grey_images(), 0.02)
            t0 = time.perf_counter()
            trainer.fit(module, train)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / epochs)
    base = statistics.median(times["without callback"])
    return [
        {"configuration": name, "epoch_s": statistics.median(t), "overhead_%": 100 * (statistics.median(t) / base - 1)}
        for name, t in times.items()
    ]


def profile_steps(device: torch.device, smoke: bool, rows: int = 8) -> str:
    """The profiler's table of the operations that take the most time in ten L1 measurements, per model."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    parts = []
    for name, build in models(smoke).items():
        tracker = WeightChangeTracker(build().to(device))
        for _ in range(3):  # warm-up: first snapshot, compilation
            tracker.step()
        with profile(activities=activities) as prof:
            for _ in range(10):
                tracker.step()
        parts.append(f"{name}:\n{prof.key_averages().table(sort_by=sort_by, row_limit=rows)}")
    return "```\n" + "\n".join(parts) + "```"


def bench_clustering(smoke: bool) -> list[dict]:
    from lightning_rwc.clustering import cluster_layers
    from lightning_rwc.history import RWCHistory

    rows = []
    sizes = (100, 1000) if smoke else (100, 1000, 10000)
    rng = np.random.default_rng(0)
    t = np.arange(1, 201, dtype=float)
    shapes = [0.1 * np.exp(-t / 10), 0.01 * np.exp(-t / 100), 0.05 * (t / 50) * np.exp(1 - t / 50), 3e-4 + 0 * t]
    warmup = RWCHistory.from_arrays([f"w{i}" for i in range(20)], range(200), rng.lognormal(0, 1, (20, 200)))
    for method in ("hdbscan", "kmeans"):  # first calls pay for imports and compilation
        cluster_layers(warmup, method=method)
    for n in sizes:
        family = rng.integers(0, 4, n)
        values = np.array([shapes[f] for f in family]) * rng.lognormal(0, 0.1, (n, t.size))
        history = RWCHistory.from_arrays([f"layer{i}.weight" for i in range(n)], range(200), values)
        for method in ("hdbscan", "kmeans"):
            tracemalloc.start()
            t0 = time.perf_counter()
            result = cluster_layers(history, method=method)
            seconds = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            rows.append(
                {
                    "layers": n,
                    "method": method,
                    "seconds": seconds,
                    "peak_MB": peak / 1e6,
                    "clusters": result.n_clusters,
                }
            )
    return rows


def with_ratios(rows: list[dict], device: torch.device) -> list[dict]:
    target = 2.0 if device.type == "cuda" else 1.5
    for row in rows:
        row["l1/copy"] = row["l1_ms"] / row["copy_ms"]
        row[f"target<={target}"] = "met" if row["l1/copy"] <= target else "missed"
        row["naive/l1"] = row["naive_ms"] / row["l1_ms"]
        if device.type == "cpu":
            row["target>=1"] = "met" if row["naive/l1"] >= 1 else "missed"
        elif row["tensors"] >= 150:
            row["target>=20"] = "met" if row["naive/l1"] >= 20 else "missed"
        if "l1_multi_tensor_ms" in row:
            row["multi_tensor/l1"] = row["l1_multi_tensor_ms"] / row["l1_ms"]
        if "numpy_ms" in row:
            row["numpy/l1"] = row["numpy_ms"] / row["l1_ms"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, few repeats (for the test suite)")
    parser.add_argument("--repeats", type=int, default=None)
    items = ["kernel", "memory", "training", "clustering", "logging", "transformer", "large", "history"]
    parser.add_argument("--skip", nargs="*", default=[], choices=items)
    parser.add_argument("--profile", action="store_true", help="also profile tracker.step() per model")
    parser.add_argument("--out", default=None, help="also write the Markdown tables to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats = args.repeats or (2 if args.smoke else 15)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    parts = [
        f"# lightning-rwc benchmarks, {date.today().isoformat()}",
        f"Device: {device} ({name}), {torch.get_num_threads()} CPU threads; torch {torch.__version__}; "
        f"median of {repeats} runs after warm-up.",
    ]
    if "kernel" not in args.skip:
        parts += ["## One measurement vs the bandwidth bound and the naive loop (ms)"]
        parts += [table(with_ratios(bench_kernel(device, args.smoke, repeats), device))]
    if args.profile:
        parts += ["## Where one measurement spends its time (10 measurements, profiler)"]
        parts += [profile_steps(device, args.smoke)]
    if "memory" not in args.skip:
        parts += ["## Snapshot memory (ResNet-50)", table(bench_memory(device))]
    if "training" not in args.skip:
        parts += [f"## Overhead in Trainer.fit (ResNet-18 on digits, {name if device.type == 'cuda' else 'CPU'})"]
        parts += [table(bench_training(device, args.smoke, 1 if args.smoke else 5))]
    if "clustering" not in args.skip:
        parts += ["## Clustering, 200 measurements", table(bench_clustering(args.smoke))]
    if "logging" not in args.skip:
        parts += ["## Logging one measurement to TensorBoard (151 values)", table(every_step.bench_logging(repeats))]
    if "transformer" not in args.skip:
        title, rows = every_step.bench_transformer(device, args.smoke, 1 if args.smoke else 7)
        parts += [f"## Monitoring every step in Trainer.fit ({title}; {name})", table(rows)]
    if "history" not in args.skip:
        parts += ["## Long runs: the callback's memory and checkpoint", table(long_runs.bench_history(args.smoke))]
        parts += [
            "## Long runs: clustering from the bounded history",
            table(long_runs.bench_bounded_clustering(args.smoke)),
            "## Long runs: reading every measurement back",
            table(long_runs.bench_reading(args.smoke)),
        ]
    if "large" not in args.skip and device.type == "cuda":
        title, rows = every_step.bench_large(device, repeats)
        parts += [f"## One measurement of GPT-2 1.5B ({title}; {name})", table(rows)]
    publish(parts, args.out)


if __name__ == "__main__":
    main()
