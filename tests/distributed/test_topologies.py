"""Every way PyTorch shards a layer, on four gloo processes: values against a float64 reference from the full
weights, from a snapshot and from the optimizer's sharded state, and exactly one all-reduce per measurement of sharded
weights (see ``topologies.py``)."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("topologies.py")
TOPOLOGIES = ["hsdp", "tensor-parallel", "fsdp-and-tensor-parallel", "uneven", "mixed", "lora-fsdp2", "lora-ddp"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("topologies")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    subprocess.run([sys.executable, str(SCRIPT), str(out), port], check=True, capture_output=True, timeout=600)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("source", ["snapshot", "optimizer"])
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_values_equal_the_reference_with_one_all_reduce_per_measurement(results, topology, source):
    result = torch.load(results / f"{topology}-{source}.pt")
    for step in result["steps"]:
        assert step["all_reduces"] == (0 if topology == "lora-ddp" else 1)  # replicas measure alone under DDP
        assert set(step["values"]) == set(step["reference"])
        for name, expected in step["reference"].items():
            if math.isnan(expected):  # a LayerNorm bias that starts at zero: undefined in both
                assert math.isnan(step["values"][name]), name
            else:
                assert step["values"][name] == pytest.approx(expected, rel=1e-5), name


@pytest.mark.distributed
def test_the_topologies_hold_the_placements_they_are_meant_to(results):
    placements = {topology: torch.load(results / f"{topology}-snapshot.pt")["placements"] for topology in TOPOLOGIES}
    assert placements["hsdp"]["up.weight"] == "(Replicate(), Shard(dim=0))"
    assert placements["tensor-parallel"]["up.weight"] == "(Shard(dim=0),)"
    assert placements["tensor-parallel"]["down.weight"] == "(Shard(dim=1),)"
    assert placements["tensor-parallel"]["down.bias"] == "(Replicate(),)"
    assert placements["fsdp-and-tensor-parallel"]["down.weight"] == "(Shard(dim=0), Shard(dim=1))"
    assert placements["fsdp-and-tensor-parallel"]["norm.weight"] == "(Shard(dim=0),)"  # on the 2-rank dp mesh only
    assert placements["mixed"]["up.weight"] == "(Shard(dim=0),)" and placements["mixed"]["down.weight"] == "plain"
    lora = placements["lora-fsdp2"]
    assert lora["base_model.model.up.lora_A.default.weight"] == "(Shard(dim=0),)"  # two rows over four ranks
    assert lora["base_model.model.up.base_layer.weight"] == "(Shard(dim=0),)"
    assert lora["base_model.model.down.base_layer.weight"] == "(Shard(dim=0),)"  # (in, out): rows are inputs
    assert placements["lora-ddp"]["module.base_model.model.down.base_layer.weight"] == "plain"
    numels = torch.load(results / "uneven-snapshot.pt")["numels"]
    assert [n["tiny"] for n in numels].count(0) >= 1  # three rows over four ranks: a rank holds an empty shard
    assert len({n["a.weight"] for n in numels}) > 1  # seven rows over four ranks: shards of different sizes
