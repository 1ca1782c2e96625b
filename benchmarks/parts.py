"""What the callback's parts cost: the whole training step, each part per measurement, TensorBoard's checksums.

- ``bench_step``: ``Trainer.fit`` of a deep MLP (``Linear(64, 64)`` layers, batch 16, one CPU thread) measured
  every step: no monitoring, the bare tracker (``tracker.step()`` in a callback, values thrown away) and the
  callback with its default parts logging to TensorBoard; rounds in shuffled order, the median step of each;
- ``bench_hooks``: the callback and the bare tracker in the same fit, each timing its batch-end hook (whole-step
  times of separate fits drift by more than the difference between them on a shared machine);
- ``bench_parts``: each part alone, handed the same synthetic measurements (150 and 1,000 layers) through the
  callback's own hand-over, with a TensorBoard logger: the time per measurement, the core's own share included;
- ``bench_checksums``: one measurement of 1,000 layers logged to TensorBoard as one event, counting the process's
  CPU time (the writer thread's included) with TensorBoard's pure-Python CRC-32C and with ``google-crc32c``.

Run ``python -m benchmarks.parts --out benchmarks/results/parts-cpu.md``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import date
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.tables import cpu_name, publish, table
from lightning_rwc import RelativeWeightChange, WeightChangeTracker
from lightning_rwc.measure import Measurement
from lightning_rwc.parts import HealthFlags, Heatmap, Histogram, History, LiveClustering, Loggers, ValuesFile


class DeepMLP(pl.LightningModule):
    """``layers`` linear layers (``width`` wide), trained with SGD on random data."""

    def __init__(self, layers: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(*(nn.Linear(width, width) for _ in range(layers - 1)), nn.Linear(width, 10))
        for layer in self.net:  # orthogonal and linear: the signal keeps its size through every layer, all learn
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class StepTimes(Callback):
    """The wall time of every training step after the first few, batch end to batch end."""

    def __init__(self, skip: int = 5) -> None:
        self.skip, self.times, self._last = skip, [], None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        if self._last is not None and trainer.global_step > self.skip:
            self.times.append(now - self._last)
        self._last = now


class BareTracker(Callback):
    """``tracker.step()`` after every optimizer step, the values thrown away: the cost of the measurement alone."""

    def __init__(self) -> None:
        self.hook_times: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.tracker = WeightChangeTracker(pl_module)

    def on_train_batch_end(self, *args: Any) -> None:
        start = time.perf_counter()
        self.tracker.step()
        self.hook_times.append(time.perf_counter() - start)


class TimedCallback(RelativeWeightChange):
    """The callback, timing its batch-end hook (where it measures, hands over to the parts and flushes)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hook_times: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(*args)
        self.hook_times.append(time.perf_counter() - start)


def fit_step_ms(monitors: list[Callback], layers: int, steps: int) -> float:
    """The median step time (ms) of a fit of :class:`DeepMLP` with ``monitors`` and a TensorBoard logger."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16 * steps, 64), torch.randint(0, 10, (16 * steps,)))
    times = StepTimes()
    trainer = Trainer(
        max_steps=steps,
        callbacks=[*monitors, times],
        logger=TensorBoardLogger(tempfile.mkdtemp(), name="bench"),
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(DeepMLP(layers), DataLoader(data, batch_size=16))
    return statistics.median(times.times) * 1e3


def bench_step(smoke: bool) -> list[dict]:
    layers, steps, rounds = (20, 30, 1) if smoke else (150, 400, 10)
    contenders = {
        "no monitoring": list,
        "bare tracker.step()": lambda: [BareTracker()],
        "RelativeWeightChange() (default parts)": lambda: [RelativeWeightChange(every_n_epochs=None, every_n_steps=1)],
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order, rng = list(contenders), random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            times[name].append(fit_step_ms(contenders[name](), layers, steps))
    base, bare = (statistics.median(times[name]) for name in list(contenders)[:2])
    names = list(contenders)
    paired = [  # each round's ratio of the callback's cost to the bare tracker's, both against the round's baseline
        (full - none) / (tracker - none)
        for none, tracker, full in zip(*(times[name] for name in names), strict=True)
        if tracker > none
    ]
    rows = []
    for name, values in times.items():
        step = statistics.median(values)
        row = {"layers": layers, "contender": name, "step_ms": step, "over_no_monitoring_ms": step - base}
        if name.startswith("RelativeWeightChange"):
            extra, tracker = step - base, bare - base
            row["over / bare tracker's (<= 1.5 or <= +0.5 ms)"] = extra / tracker if tracker > 0 else float("nan")
            row["ms more than the bare tracker"] = step - bare
            if paired:
                quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
                row["same ratio, round by round: median (quartiles)"] = (
                    f"{statistics.median(paired):.2f} ({quartiles[0]:.2f}-{quartiles[2]:.2f})"
                )
        rows.append(row)
    return rows


def bench_hooks(smoke: bool) -> list[dict]:
    """Both in one fit, every step: the callback's hook against the bare tracker's, in both orders."""
    layers, steps = (20, 30) if smoke else (150, 300)
    rows = []
    for first in ("callback", "bare tracker"):
        rwc, bare = TimedCallback(every_n_epochs=None, every_n_steps=1), BareTracker()
        fit_step_ms([rwc, bare] if first == "callback" else [bare, rwc], layers, steps)
        ms = {name: statistics.median(c.hook_times[5:]) * 1e3 for name, c in (("callback", rwc), ("bare", bare))}
        row = {"layers": layers, "first in the hooks": first, "callback_hook_ms": ms["callback"]}
        rows.append(row | {"bare_tracker_ms": ms["bare"], "callback / bare tracker": ms["callback"] / ms["bare"]})
    return rows


def part_ms(parts: list, layers: int, measurements: int) -> float:
    """Milliseconds per measurement of the callback's hand-over to ``parts``, with a TensorBoard logger."""
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=1, parts=parts)
    trainer = Trainer(logger=TensorBoardLogger(tempfile.mkdtemp(), name="bench"), accelerator="cpu", devices=1)
    for part in rwc.parts:
        part.start(trainer, None, rwc)
    names = [f"h.{i // 10}.layer{i % 10}.weight" for i in range(layers)]
    sums = torch.rand(2, layers, dtype=torch.float64) + 0.5
    start = time.perf_counter()
    for step in range(1, measurements + 1):
        values = dict(zip(names, (sums[0] * 1e-3 / step**0.5).tolist(), strict=True)) | {"_all": 1e-3 / step**0.5}
        rwc._pending.add(step, step // 100, Measurement.of(values, names, sums))
        rwc._hand_over(trainer, wait=False)
    seconds = time.perf_counter() - start
    for part in rwc.parts:
        part.flush(trainer, force=True)
        part.close(trainer)
    return seconds / measurements * 1e3


def bench_parts(smoke: bool) -> list[dict]:
    measurements = 20 if smoke else 300
    makers = {
        "none (the core's hand-over alone)": list,
        "History": lambda: [History()],
        "HealthFlags": lambda: [HealthFlags()],
        "Loggers (TensorBoard, one event)": lambda: [Loggers()],
        "Histogram(every='measurement')": lambda: [Histogram(every="measurement")],
        "ValuesFile": lambda: [ValuesFile()],
        "default parts": lambda: [History(), HealthFlags(), Loggers(), Histogram()],
    }
    rows = []
    for layers in (150, 1000):
        for name, make in makers.items():
            ms = statistics.median(part_ms(make(), layers, measurements) for _ in range(3))
            rows.append({"layers": layers, "parts": name, "ms_per_measurement": ms})
    epoch_end = {"Heatmap (at an epoch end)": Heatmap, "LiveClustering (at an epoch end)": LiveClustering}
    for name, make in epoch_end.items():
        rows.append({"layers": 150, "parts": name, "ms_per_measurement": epoch_end_ms(make(), 150, 100)})
    return rows


def epoch_end_ms(part: Any, layers: int, measurements: int) -> float:
    """Milliseconds of one epoch end of ``part`` with a history of ``measurements``."""
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=1, parts=[History(), part])
    trainer = Trainer(logger=TensorBoardLogger(tempfile.mkdtemp(), name="bench"), accelerator="cpu", devices=1)
    rng = torch.Generator().manual_seed(0)
    for step in range(1, measurements + 1):
        values = {f"layer{i}.weight": float(v) for i, v in enumerate(torch.rand(layers, generator=rng) / step)}
        rwc._pending.add(step, 0, Measurement.of(values | {"_all": 1.0 / step}))
    rwc._hand_over(trainer, wait=False)
    start = time.perf_counter()
    part.epoch_end(trainer, rwc)
    return (time.perf_counter() - start) * 1e3


def bench_checksums(smoke: bool) -> list[dict]:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as in_python
    from tensorboard.summary.writer import record_writer

    from lightning_rwc.tensorboard import masked_crc32c as in_c
    from lightning_rwc.tensorboard import write_scalars

    def with_protobuf(writer: Any, values: dict[str, float], step: int) -> None:
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
        writer.file_writer.add_summary(summary, global_step=step)

    values = {f"rwc/h.{i // 10}.layer{i % 10}.weight": 1e-3 * (i + 1) for i in range(1000)} | {"rwc/_all": 0.01}
    measurements = 20 if smoke else 500
    contenders = {
        "protobuf Summary objects, pure-Python CRC-32C (TensorBoard's)": (with_protobuf, in_python),
        "encoded summary, pure-Python CRC-32C": (write_scalars, in_python),
        "encoded summary, google-crc32c (C)": (write_scalars, in_c),
    }
    original, rows = record_writer.masked_crc32c, []
    try:
        for name, (write, checksum) in contenders.items():
            record_writer.masked_crc32c = checksum
            logger = TensorBoardLogger(tempfile.mkdtemp(), name="bench")
            writer = logger.experiment
            writer.flush()
            cpu, wall = time.process_time(), time.perf_counter()
            for step in range(measurements):
                write(writer, values, step)
            writer.flush()  # waits until the writer thread has encoded and written every event
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            logger.finalize("success")
            row = {"values": len(values), "writing": name, "cpu_ms_per_measurement (<= 1)": cpu / measurements * 1e3}
            rows.append(row | {"wall_ms_per_measurement": wall / measurements * 1e3})
    finally:
        record_writer.masked_crc32c = original
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (for the test suite)")
    parser.add_argument("--out", default=None, help="also write the Markdown tables to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sections = [
        f"# The callback's parts, {date.today().isoformat()}",
        f"CPU: {cpu_name()}, one PyTorch thread; torch {torch.__version__}.",
        f"Command: `python -m benchmarks.parts {' '.join(sys.argv[1:])}`.",
        "## Whole training step, measuring every step (median step of each fit, median of the rounds)",
        table(bench_step(args.smoke)),
        "## The same, as the time of the batch-end hooks: callback and bare tracker in one fit, each order once",
        table(bench_hooks(args.smoke)),
        "## Each part per measurement (hand-over included, TensorBoard logger)",
        table(bench_parts(args.smoke)),
        "## Logging one measurement of 1,000 layers to TensorBoard: process CPU time, writer thread included",
        table(bench_checksums(args.smoke)),
    ]
    publish(sections, args.out)


if __name__ == "__main__":
    main()
