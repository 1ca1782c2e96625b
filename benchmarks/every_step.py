"""Benchmarks of monitoring every step: the logging path, a GPT-style training run, and a 1B+ parameter model.

- ``bench_logging``: 151 values of one measurement to TensorBoard, through Lightning's ``log_metrics`` (one event
  per value) and as the callback writes them (one event): the caller's time, and the time until TensorBoard's
  writer thread has written them (it computes each record's CRC-32C checksum in pure Python);
- ``bench_transformer``: ``Trainer.fit`` of :mod:`benchmarks.gpt` with no monitoring, the bare tracker
  (``tracker.step()`` every step, values thrown away) and the callback every step or every 10 steps, with
  TensorBoard or CSV; interleaved rounds, so that drift of the machine hits every contender alike;
- ``bench_large`` (CUDA): one measurement of GPT-2 1.5B's weights against the copy bound (a ``copy_`` of the tracked
  weights), and with the snapshot in host memory against the PCIe bound (the tracked bytes uploaded and downloaded
  once, at the pinned bandwidth measured in the same run).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback

from benchmarks.gpt import GPT, SIZES, language_model, token_batches
from benchmarks.timing import interleaved
from lightning_rwc.measure import WeightChangeTracker, select_parameters


def bench_logging(repeats: int) -> list[dict]:
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_rwc.tensorboard import write_scalars

    values = {f"rwc/h.{i // 12}.layer{i % 12}.weight": 1e-3 * (i + 1) for i in range(150)} | {"rwc/_all": 0.01}
    logger = TensorBoardLogger(tempfile.mkdtemp(), name="bench")
    contenders: dict[str, Callable[[int], Any]] = {
        "Lightning's log_metrics (an event per value)": lambda step: logger.log_metrics(values, step=step),
        "one event (write_scalars)": lambda step: write_scalars(logger.experiment, values, step),
    }
    caller: dict[str, list[float]] = {name: [] for name in contenders}
    written: dict[str, list[float]] = {name: [] for name in contenders}
    for step in range(max(repeats, 5) * 10):
        for name, log in contenders.items():
            start = time.perf_counter()
            log(step)
            caller[name].append((time.perf_counter() - start) * 1e3)
            logger.experiment.flush()  # waits for TensorBoard's writer thread (it encodes each record's checksum)
            written[name].append((time.perf_counter() - start) * 1e3)
    logger.finalize("success")
    rows = []
    for name in contenders:
        ms = statistics.median(caller[name])
        rows.append({"values": len(values), "writer": name, "ms": ms, "target<=1ms": "met" if ms <= 1 else "missed"})
        rows[-1]["ms_until_written"] = statistics.median(written[name])
    return rows


class BareTracker(Callback):
    """``tracker.step()`` after every optimizer step, the values thrown away: the cost of the measurement alone."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.tracker = WeightChangeTracker(pl_module, params="trainable")

    def on_train_batch_end(self, *args: Any) -> None:
        self.tracker.step()


def _contenders(tmp: str) -> dict[str, Callable[[], tuple[list, Any]]]:
    """Each contender as (callbacks, logger) factories; the monitoring callback, if any, comes first."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from lightning_rwc import RelativeWeightChange

    def rwc(steps: int) -> Any:
        return RelativeWeightChange(every_n_epochs=None, every_n_steps=steps, params="trainable")

    return {
        "none": lambda: ([], TensorBoardLogger(tmp, name="none")),
        "bare tracker, every step": lambda: ([BareTracker()], TensorBoardLogger(tmp, name="bare")),
        "callback every step, TensorBoard": lambda: ([rwc(1)], TensorBoardLogger(tmp, name="tb1")),
        "callback every 10 steps, TensorBoard": lambda: ([rwc(10)], TensorBoardLogger(tmp, name="tb10")),
        "callback every step, CSV": lambda: ([rwc(1)], CSVLogger(tmp, name="csv1")),
    }


def bench_transformer(device: torch.device, smoke: bool, rounds: int) -> tuple[str, list[dict]]:
    """Step time per contender (interleaved rounds) and, in the same hooks, the time spent measuring.

    On the CPU everything in a hook adds to the step, so the host time of the callback's hook against the time its
    measurement took in that same call (``tracker.measure()`` and reading the values, which is all the bare tracker
    does) is the overhead ratio, measured pairwise and free of the drift between rounds that blurs step times here.
    """
    name = "smoke" if smoke else "gpt2-124m" if device.type == "cuda" else "cpu"
    size = SIZES[name]
    warmup, measured = (2, 4) if smoke else (5, 20 if device.type == "cuda" else 30)
    step_ms: dict[str, list[float]] = {}
    hooks: dict[str, list[tuple[float, float]]] = {}
    tmp = tempfile.mkdtemp()
    with _MeasuringTime() as measuring:
        for _ in range(rounds):
            for contender, build in _contenders(tmp).items():
                callbacks, logger = build()
                clock = StepClock(warmup, warmup + measured, device)
                calls = hooks.setdefault(contender, [])
                if callbacks:
                    _time_hook(callbacks[0], calls, measuring, skip=warmup)
                trainer = pl.Trainer(
                    max_steps=warmup + measured,
                    accelerator="gpu" if device.type == "cuda" else "cpu",
                    devices=1,
                    precision="bf16-mixed" if device.type == "cuda" else "32-true",
                    callbacks=[*callbacks, clock],
                    logger=logger,
                    enable_checkpointing=False,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                )
                pl.seed_everything(0, verbose=False)
                trainer.fit(language_model(size, fused=device.type == "cuda"), token_batches(size, warmup + measured))
                step_ms.setdefault(contender, []).append(clock.ms_per_step())
    rows = []
    none, bare = statistics.median(step_ms["none"]), statistics.median(step_ms["bare tracker, every step"])
    for contender, steps in step_ms.items():
        step, calls = statistics.median(steps), hooks[contender]
        row = {"contender": contender, "step_ms": step, "overhead_%": 100 * (step / none - 1), "hook_ms": 0.0}
        if calls:
            row["hook_ms"] = statistics.median(total for total, _ in calls) * 1e3
            row["measuring_ms"] = statistics.median(part for _, part in calls) * 1e3
        if contender.startswith("callback") and bare > none:
            row["overhead/bare"] = (step - none) / (bare - none)
        if contender.startswith("callback every step"):
            ratio = statistics.median(total / part for total, part in calls if part > 0)
            row["hook/measuring (target <= 1.5)"] = ratio
        rows.append(row)
    parameters = sum(p.numel() for p in GPT(size).parameters())
    return f"{name}: {parameters:,} parameters, batch {size.batch} x {size.context}", rows


class _MeasuringTime:
    """Adds up the host time spent in ``WeightChangeTracker.measure`` and ``Measurement.values`` (while in use)."""

    def __enter__(self) -> _MeasuringTime:
        from lightning_rwc.measure import Measurement

        self.seconds = 0.0
        self.originals = [(WeightChangeTracker, "measure"), (Measurement, "values")]
        for owner, attribute in self.originals:
            setattr(owner, attribute, self._timed(getattr(owner, attribute)))
        return self

    def _timed(self, method: Callable) -> Callable:
        def timed(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args)
            finally:
                self.seconds += time.perf_counter() - start

        timed.original = method  # type: ignore[attr-defined]
        return timed

    def __exit__(self, *exc: object) -> None:
        for owner, attribute in self.originals:
            setattr(owner, attribute, getattr(owner, attribute).original)


class StepClock(Callback):
    """Wall time per optimizer step from step ``first`` to ``last``.

    On the CPU the median of the steps' durations (robust to a step disturbed by the machine); on CUDA the mean
    over the span, with the device synchronised only at its two ends (a sync per step would hide what overlaps).
    """

    def __init__(self, first: int, last: int, device: torch.device) -> None:
        self.first, self.last, self.device = first, last, device
        self.marks: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.first <= trainer.global_step <= self.last:
            if self.device.type == "cuda" and trainer.global_step in (self.first, self.last):
                torch.cuda.synchronize(self.device)
            self.marks.append(time.perf_counter())

    def ms_per_step(self) -> float:
        if self.device.type == "cuda":
            return (self.marks[-1] - self.marks[0]) * 1e3 / (len(self.marks) - 1)
        return statistics.median(b - a for a, b in zip(self.marks, self.marks[1:], strict=False)) * 1e3


def _time_hook(callback: Any, record: list[tuple[float, float]], measuring: _MeasuringTime, skip: int) -> None:
    """Record each call of ``on_train_batch_end`` after the first ``skip``: its host time, the time measuring."""
    original, seen = callback.on_train_batch_end, [0]

    def timed(*args: Any, **kwargs: Any) -> None:
        before, start = measuring.seconds, time.perf_counter()
        original(*args, **kwargs)
        seen[0] += 1
        if seen[0] > skip:
            record.append((time.perf_counter() - start, measuring.seconds - before))

    callback.on_train_batch_end = timed


def bench_large(device: torch.device, repeats: int) -> tuple[str, list[dict]]:
    """GPT-2 1.5B on CUDA: the tracker against the copy bound, the host snapshot against the PCIe bound."""
    model = GPT(SIZES["gpt2-1.5b"]).to(device)
    params = [p.detach() for _, p in select_parameters(model, "trainable")]
    tracked = sum(p.numel() * p.element_size() for p in params)
    copy = [torch.empty_like(p) for p in params]
    pinned = torch.empty(tracked // 4, dtype=torch.float32, pin_memory=True)
    staging = torch.empty_like(pinned, device=device)
    on_device = WeightChangeTracker(model, params="trainable")
    on_host = WeightChangeTracker(model, params="trainable", snapshot_device="cpu")
    times = interleaved(
        {
            "copy_ of the tracked weights": lambda: torch._foreach_copy_(copy, params),
            "tracker.step()": on_device.step,
            "upload at pinned bandwidth": lambda: staging.copy_(pinned, non_blocking=True),
            "download at pinned bandwidth": lambda: pinned.copy_(staging, non_blocking=True),
            "tracker.step(), snapshot in host memory": on_host.step,
        },
        device,
        repeats,
    )
    pcie = times["upload at pinned bandwidth"] + times["download at pinned bandwidth"]
    bounds = {
        "tracker.step()": (times["copy_ of the tracked weights"], "<= 1.4x the copy"),
        "tracker.step(), snapshot in host memory": (pcie, "<= 1.3x upload + download"),
    }
    rows = []
    for name, ms in times.items():
        bound, target = bounds.get(name, (None, ""))
        rows.append({"contender": name, "ms": ms, "ratio": "" if bound is None else ms / bound, "target": target})
    gbps = tracked / (times["upload at pinned bandwidth"] * 1e-3) / 1e9
    return f"{len(params)} tensors, {tracked / 1e9:.2f} GB tracked; pinned upload {gbps:.1f} GB/s", rows
