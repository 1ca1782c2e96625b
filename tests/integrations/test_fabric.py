"""FabricRWC in a Fabric loop under DDP on 2 CPU processes: the values and the TensorBoard run of the Lightning
callback on the same model, data, seed and schedule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_rwc.runs import load_history

SCRIPT = Path(__file__).resolve().parents[1] / "distributed" / "fabric_script.py"


@pytest.mark.slow
def test_a_fabric_loop_under_ddp_gives_what_the_lightning_callback_gives(tmp_path):
    for loop in ("fabric", "lightning"):
        subprocess.run([sys.executable, str(SCRIPT), loop, str(tmp_path / loop)], check=True, timeout=300)
    fabric, lightning = (load_history(tmp_path / loop / "history.json") for loop in ("fabric", "lightning"))
    assert fabric.steps == lightning.steps == list(range(2, 13, 2))  # 4 steps per epoch and rank, 3 epochs
    assert fabric.layers == lightning.layers and fabric.epochs == lightning.epochs
    np.testing.assert_allclose(fabric.values, lightning.values, rtol=1e-6)
    read = {loop: load_history(tmp_path / loop / "tb") for loop in ("fabric", "lightning")}
    assert read["fabric"].layers == read["lightning"].layers and read["fabric"].steps == read["lightning"].steps
    np.testing.assert_allclose(read["fabric"].values, read["lightning"].values, rtol=1e-6)
    np.testing.assert_allclose(read["fabric"].values, fabric.values, rtol=1e-6)  # float32 in the event files
