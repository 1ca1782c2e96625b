"""The cluster run and layouts, read back with TensorBoard's own reader and served by a real tensorboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import free_port, planted_curves
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from lightning_rwc.clustering import cluster_layers
from lightning_rwc.history import RWCHistory
from lightning_rwc.tensorboard import layer_layout, tag_pattern, write_cluster_run


def read_run(path):
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return scalars, layout, acc


@pytest.fixture
def clustered(tmp_path):
    names, _, values = planted_curves(per_family=10, measurements=12, outliers=0)
    history = RWCHistory.from_arrays(names, range(100, 1300, 100), values)
    result = cluster_layers(history, method="kmeans", n_clusters=4)
    return tmp_path, history, result


def test_cluster_run_holds_summaries_layout_and_text(clustered):
    run_dir, history, result = clustered
    target = write_cluster_run(result, run_dir)
    assert target == run_dir / "rwc_clusters"
    scalars, layout, acc = read_run(target)
    assert set(scalars) == {f"rwc_cluster/{c}/{k}" for c in range(4) for k in ("mean", "lower", "upper")}
    for summary in result.summaries:
        for key in ("mean", "lower", "upper"):
            series = scalars[f"rwc_cluster/{summary.cluster_id}/{key}"]
            assert [s for s, _ in series] == history.steps
            np.testing.assert_allclose([v for _, v in series], getattr(summary, key), rtol=1e-6)
    charts = {chart.title: chart for chart in layout.category[0].chart}
    assert set(charts) == {"all cluster means", "cluster 0", "cluster 1", "cluster 2", "cluster 3"}
    margin = charts["cluster 2"].margin.series[0]
    assert [margin.value, margin.lower, margin.upper] == [f"rwc_cluster/2/{k}" for k in ("mean", "lower", "upper")]
    assert list(charts["all cluster means"].multiline.tag) == [tag_pattern(f"rwc_cluster/{c}/mean") for c in range(4)]
    assert "cluster 0" in acc.Tensors("rwc_cluster/text_summary")[0].tensor_proto.string_val[0].decode()


def test_rewriting_replaces_the_cluster_run_instead_of_duplicating_curves(clustered):
    run_dir, _, result = clustered
    write_cluster_run(result, run_dir)
    write_cluster_run(result, run_dir)
    assert len(list((run_dir / "rwc_clusters").glob("events.out.tfevents.*"))) == 1
    scalars, _, _ = read_run(run_dir / "rwc_clusters")
    assert len(scalars["rwc_cluster/0/mean"]) == len(result.steps)
    assert sorted(p.name for p in run_dir.iterdir()) == ["rwc_clusters"]


def test_tag_patterns_escape_regex_characters():
    import re

    tag = "rwc/blocks.0.attn[1].qkv(weight)"
    assert re.match(tag_pattern(tag), tag)
    assert not re.match(tag_pattern(tag), "rwc/blocks.0.attn[1].qkv(weight)x")
    assert not re.match(tag_pattern("rwc/a.b"), "rwc/aXb")


def test_the_layout_has_one_chart_per_block():
    names = ["embed.weight", *(f"blocks.{i}.{part}.weight" for i in range(3) for part in ("attn", "mlp")), "head"]
    charts = layer_layout(names)["relative weight change (rwc)"]
    assert list(charts) == [
        "all layers (_all)",
        "embed",
        "blocks.0",
        "blocks.1",
        "blocks.2",
        "head",
        "live cluster means",
    ]
    assert charts["blocks.1"] == [
        "Multiline",
        [tag_pattern("rwc/blocks.1.attn.weight"), tag_pattern("rwc/blocks.1.mlp.weight")],
    ]
    assert list(layer_layout(["only.weight"])["relative weight change (rwc)"])[1] == "only"


def _get(url: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.slow
def test_a_real_tensorboard_serves_the_cluster_layout_with_existing_tags(clustered):
    run_dir, _, result = clustered
    write_cluster_run(result, run_dir)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir), "--host", "127.0.0.1"]
        + ["--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/data"
        deadline = time.monotonic() + 60
        layout = {}
        while not layout.get("category") and time.monotonic() < deadline:
            layout = _get(f"{base}/plugin/custom_scalars/layout")
            time.sleep(0.5)
        charts = layout["category"][0]["chart"]
        margins = [c for c in charts if "margin" in c]
        assert len(margins) == result.n_clusters
        tags = _get(f"{base}/plugin/scalars/tags")
        existing = {tag for run in tags.values() for tag in run}
        for chart in margins:
            series = chart["margin"]["series"][0]
            assert {series["value"], series["lower"], series["upper"]} <= existing
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_heatmap_of_a_long_run_is_bounded_and_bins_are_means_of_logarithms():
    from lightning_rwc.tensorboard import heatmap_image

    rng = np.random.default_rng(0)
    values = 10 ** rng.uniform(-5, 0, size=(3000, 5000))
    image = heatmap_image(values)
    assert image.shape == (1, 512, 1024) and image.dtype == np.uint8
    # 4 measurements into 2 bins of 2: the bins hold the mean of log10, so (1e-1, 1e-3) reads like 1e-2
    small = heatmap_image(np.array([[1e-1, 1e-3, 1e-2, 1e-2], [1e-4, 1e-4, 1.0, np.nan]]), cell=1, max_pixels=(8, 2))
    assert small.tolist() == [[[128, 128], [1, 255]]]


@pytest.mark.parametrize(
    "tags",
    [["rwc/a.weight", "rwc/_all"], [f"rwc/{'deep.' * 40}{i}.weight" for i in range(3)], ["rwc/ünïcode.weight"]],
    ids=["short tags", "tags longer than 127 bytes", "non-ASCII tag"],
)
def test_summaries_are_encoded_byte_for_byte_as_protobuf_encodes_them(tags):
    from tensorboard.compat.proto.summary_pb2 import Summary

    from lightning_rwc.tensorboard import _SummaryLayout, summary_bytes

    rng = np.random.default_rng(0)
    for values in (rng.lognormal(-5, 3, len(tags)), [1e40, -1e-45, 0.0][: len(tags)] + [3.0] * (len(tags) - 3)):
        values = [float(v) for v in values]
        expected = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in zip(tags, values, strict=True)])
        assert summary_bytes(_SummaryLayout.of("", tuple(tags)), values) == expected.SerializeToString()
    nan = Summary.FromString(summary_bytes(_SummaryLayout.of("", tuple(tags)), [float("nan")] * len(tags)))
    assert [value.tag for value in nan.value] == tags and all(np.isnan(value.simple_value) for value in nan.value)


def test_checksums_in_c_equal_tensorboards_and_its_reader_accepts_them(tmp_path):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as in_python
    from torch.utils.tensorboard import SummaryWriter

    from lightning_rwc.tensorboard import masked_crc32c, use_fast_checksums, write_scalars

    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 8, 9, 1000, 65_537):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert masked_crc32c(data) == in_python(data)
    assert use_fast_checksums()
    writer = SummaryWriter(str(tmp_path))
    for step in range(3):
        write_scalars(writer, {"rwc/a.weight": 0.5 / (step + 1), "rwc/_all": 0.25}, step)
    writer.close()
    scalars = EventAccumulator(str(tmp_path)).Reload().Scalars("rwc/a.weight")  # checks every record's checksums
    assert [(e.step, e.value) for e in scalars] == [(0, 0.5), (1, 0.25), (2, pytest.approx(0.5 / 3))]
