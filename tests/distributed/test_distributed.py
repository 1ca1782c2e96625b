"""RelativeWeightChange under DDP and FSDP2 on the CPU (gloo, two processes), against the full weights."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import reference_rwc

from lightning_rwc.runs import load_history

SCRIPT = Path(__file__).with_name("fit_script.py")


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("strategy", "collectives_per_measurement"),
    [
        ("ddp", 0),
        ("fsdp2", 1),
        ("fsdp2-uneven", 1),
        ("ddp-freeze", 0),
        ("fsdp2-freeze", 1),
        ("ddp-freeze-cache", 0),
        ("ddp-optimizer", 0),
        ("fsdp2-optimizer", 1),
    ],
)
def test_values_equal_a_reference_from_the_full_weights(tmp_path, strategy, collectives_per_measurement):
    out = tmp_path / strategy
    subprocess.run([sys.executable, str(SCRIPT), strategy, str(out)], check=True, capture_output=True, timeout=300)
    history = load_history(out / "history.json")
    saved = {int(p.stem.split("_")[1]): torch.load(p) for p in out.glob("weights_*.pt")}
    assert sorted(saved) == [0, *history.steps]
    previous = saved[0]
    for j, step in enumerate(history.steps):
        measured = [layer for i, layer in enumerate(history.layers) if not math.isnan(history.values[i, j])]
        expected = reference_rwc({n: previous[n] for n in measured}, {n: saved[step][n] for n in measured}, "l1")
        for i, layer in enumerate(history.layers):
            if layer not in measured:  # frozen: its curve has ended
                continue
            assert history.values[i, j] == pytest.approx(expected[layer], rel=1e-5), (layer, step)
        assert history.total[j] == pytest.approx(expected["_all"], rel=1e-5)
        previous = saved[step]
    assert history.layers == ["net.conv.weight", "net.head.weight"]  # original names, also when sharded
    for rank in (0, 1):
        counts = json.loads((out / f"collectives_{rank}.json").read_text())
        assert counts["measurements"] == len(history)  # under DDP rank zero hands its values to the monitor's rank
        assert counts["calls"] == collectives_per_measurement * counts["measurements"]
        assert counts["monitored"] == pytest.approx(history.total[-1], rel=1e-6)
        if "-freeze" in strategy:  # every rank froze the convolution at the second epoch's measurement
            assert counts["frozen"] == {"conv": history.steps[1]}
            assert [name for name, trains in counts["requires_grad"].items() if not trains] == [
                "net.conv.weight",
                "net.conv.bias",
                "net.bn.weight",
                "net.bn.bias",
            ]
        if strategy.endswith("-cache"):  # each rank computed its own 32 samples once, in the third epoch, no more
            assert counts["cache"] == [0, 32]
        uneven = [m for m in counts["warnings"] if "'extra.weight' is a tracked parameter on some ranks only" in m]
        assert len(uneven) == (1 if strategy == "fsdp2-uneven" and rank == 0 else 0)  # rank zero tells the user
    logged = load_history(out / "csv" / "version_0")
    assert logged.steps == history.steps
    assert logged.values.ravel().tolist() == pytest.approx(history.values.ravel().tolist(), nan_ok=True)
