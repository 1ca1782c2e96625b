"""Benchmark of long runs: the callback's memory and checkpoint state after 100,000 measurements of 1,000 tensors.

The measurements go through the callback's own path (collected, appended to the bounded history, handed to the
health check and to ``callback_metrics``), without a model: each one is a known set of values. Then:

- the memory the callback holds, its checkpoint state's size once saved, and the time of ``state_dict()``;
- clustering planted families of curves from the bounded history against the full one (adjusted Rand index);
- reading every measurement of a run back: from its event files against its values file.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from lightning_rwc import RelativeWeightChange
from lightning_rwc.clustering import cluster_layers
from lightning_rwc.history import RWCHistory
from lightning_rwc.measure import Measurement
from lightning_rwc.runs import load_history


def bench_history(smoke: bool) -> list[dict]:
    tensors, measurements = (100, 2000) if smoke else (1000, 100_000)
    names = [f"h.{i // 8}.layer{i % 8}.weight" for i in range(tensors)]
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=1)
    trainer = SimpleNamespace(loggers=[], callback_metrics={}, is_global_zero=True)
    rng = np.random.default_rng(0)
    base = rng.lognormal(-5, 1, tensors)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    for step in range(1, measurements + 1):
        values = dict(zip(names, (base / step**0.5).tolist(), strict=True)) | {"_all": 0.01 / step**0.5}
        rwc._pending.add(step, step // 1000, Measurement.of(values))
        rwc._hand_over(trainer, wait=False)
    seconds = time.perf_counter() - start
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    timings = []
    for _ in range(10):
        start = time.perf_counter()
        state = rwc.state_dict()
        timings.append(time.perf_counter() - start)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return [
        {
            "tensors": tensors,
            "measurements": measurements,
            "kept": len(rwc.history),
            "us_per_measurement": seconds / measurements * 1e6,
            "callback_MB (<= 64)": held / 1e6,
            "checkpoint_MB (<= 2)": len(buffer.getvalue()) / 1e6,
            "state_dict_ms (<= 50)": statistics.median(timings) * 1e3,
        }
    ]


def bench_bounded_clustering(smoke: bool) -> list[dict]:
    from sklearn.metrics import adjusted_rand_score

    per_family, measurements = (25, 1000) if smoke else (250, 10_000)
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, measurements)
    shapes = [0.1 * np.exp(-t * 30) + 1e-4, 0.01 * np.exp(-t * 3), 0.05 * np.sin(np.pi * t) + 1e-3, 3e-4 + 0 * t]
    names, family, rows = [], [], []
    for f, shape in enumerate(shapes):
        for i in range(per_family):
            rows.append(shape * rng.lognormal(0, 0.15) * rng.lognormal(0, 0.3, t.size))
            names.append(f"family{f}.block{i}.weight")
            family.append(f)
    values = np.array(rows)
    full, bounded = RWCHistory(), RWCHistory(capacity=200)
    for j in range(measurements):
        column = dict(zip(names, values[:, j].tolist(), strict=True))
        full.append(j + 1, 0, column)
        bounded.append(j + 1, 0, column)
    rows_out = []
    for name, history in (("full", full), ("bounded (capacity 200)", bounded)):
        start = time.perf_counter()
        result = cluster_layers(history)
        seconds = time.perf_counter() - start
        ari = adjusted_rand_score(family, [result.labels.get(n, -1) for n in names])
        row = {"history": name, "measurements kept": len(history), "clusters": result.n_clusters, "ARI": ari}
        rows_out.append(row | {"cluster_layers s": seconds})
    rows_out[1]["ARI - full ARI (>= -0.05)"] = rows_out[1]["ARI"] - rows_out[0]["ARI"]
    return rows_out


def bench_reading(smoke: bool) -> list[dict]:
    """Write one run's measurements both ways (one event each, as the callback does; the values file), read back."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_rwc.tensorboard import write_scalars
    from lightning_rwc.values_file import ValuesWriter

    tensors, measurements = (100, 200) if smoke else (1000, 5000)
    names = [f"h.{i // 8}.layer{i % 8}.weight" for i in range(tensors)]
    rng = np.random.default_rng(0)
    columns = [dict(zip(names, rng.lognormal(-5, 1, tensors).tolist(), strict=True)) for _ in range(8)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        events, values = f"{folder}/events", f"{folder}/rwc_values"
        keys = [f"rwc/{name}" for name in [*names, "_all"]]
        written = {}
        start = time.perf_counter()  # each way in a loop of its own: TensorBoard's writer thread competes for the GIL
        appender = ValuesWriter(values)
        for step in range(1, measurements + 1):
            appender.append(step, 0, columns[step % 8] | {"_all": 0.01})
        appender.close()
        written["values file"] = time.perf_counter() - start
        start = time.perf_counter()
        writer = SummaryWriter(events)
        for step in range(1, measurements + 1):
            write_scalars(writer, dict(zip(keys, (columns[step % 8] | {"_all": 0.01}).values(), strict=True)), step)
        writer.close()  # until every event is written
        written["event files"] = time.perf_counter() - start
        for source, path in (("event files", events), ("values file", values)):
            start = time.perf_counter()
            history = load_history(path)
            seconds = time.perf_counter() - start
            assert history.values.shape == (tensors, measurements)
            size = sum(p.stat().st_size for p in Path(path).iterdir())
            rows.append(
                {
                    "source": source,
                    "values": tensors * measurements,
                    "MB on disk": size / 1e6,
                    "write us / measurement": written[source] / measurements * 1e6,
                    "load_history s": seconds,
                }
            )
    rows[1]["faster to read"] = rows[0]["load_history s"] / rows[1]["load_history s"]
    return rows
