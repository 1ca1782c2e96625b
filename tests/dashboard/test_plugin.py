"""The RWC dashboard's routes, against TensorBoard's own data provider over real runs."""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import threading
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from werkzeug.test import Client

from lightning_rwc.dashboard import plugin as plugin_module
from lightning_rwc.dashboard.plugin import RWCPlugin
from lightning_rwc.runs import load_history


def make_plugin(logdir, read_only: bool = False) -> RWCPlugin:
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    flags = argparse.Namespace(rwc_read_only=read_only)
    return RWCPlugin(base_plugin.TBContext(logdir=str(logdir), data_provider=provider, flags=flags))


def get(plugin, route, **args):
    return Client(plugin.get_plugin_apps()[route]).get(route, query_string=args)


def decode(response) -> tuple[dict, np.ndarray]:
    return decode_bytes(response.get_data())


@pytest.fixture(scope="module")
def logdir(real_run, tmp_path_factory):
    """Runs beside each other: with a values file, with event files only, damaged, and one without RWC values."""
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path_factory.mktemp("logdir")
    shutil.copytree(real_run.tensorboard_dir, root / "with_values")
    shutil.copytree(real_run.tensorboard_dir, root / "events_only", ignore=shutil.ignore_patterns("rwc_values"))
    shutil.copytree(root / "events_only", root / "damaged")
    (event_file,) = (root / "damaged").glob("*tfevents*")
    event_file.write_bytes(event_file.read_bytes()[:-300])
    writer = SummaryWriter(str(root / "other"))
    writer.add_scalar("loss", 1.0, 1)
    writer.close()
    return root


@pytest.mark.parametrize("run", ["with_values", "events_only"])
def test_a_run_is_sent_in_the_model_order_with_the_values_steps_and_epochs_its_history_has(logdir, run):
    header, matrix = decode(get(make_plugin(logdir), "/run", run=run))
    history = load_history(logdir / run)
    assert header["source"] == ("values file" if run == "with_values" else "event files")
    assert header["layers"] == history.layers
    assert header["first_steps"] == header["last_steps"] == history.steps
    assert header["epochs"] == history.epochs
    np.testing.assert_array_equal(matrix, history.values.astype(np.float32))
    assert header["blocks"] == [*(f"net.{i}" for i in range(7)), "head"]  # the numbered children of net


def test_runs_lists_only_the_runs_with_rwc_values(logdir):
    listing = json.loads(get(make_plugin(logdir), "/runs").get_data())
    assert [entry["run"] for entry in listing["runs"]] == ["damaged", "events_only", "with_values"]
    assert listing["cluster_now"] is True


def test_many_measurements_are_sent_in_at_most_the_columns_asked_for(logdir):
    history = load_history(logdir / "with_values")
    header, matrix = decode(get(make_plugin(logdir), "/run", run="with_values", columns="4"))
    assert matrix.shape == (len(history.layers), 4)
    assert header["first_steps"][0] == history.steps[0] and header["last_steps"][-1] == history.steps[-1]
    covered = [
        s
        for a, b in zip(header["first_steps"], header["last_steps"], strict=True)
        for s in history.steps
        if a <= s <= b
    ]
    assert covered == history.steps  # every measurement in exactly one column
    first = [j for j, s in enumerate(history.steps) if header["first_steps"][0] <= s <= header["last_steps"][0]]
    expected = 10 ** np.mean(np.log10(history.values[:, first]), axis=1)
    np.testing.assert_allclose(matrix[:, 0], expected, rtol=1e-6)


def test_a_damaged_event_file_shows_the_readers_warning(logdir):
    header, _ = decode(get(make_plugin(logdir), "/run", run="damaged"))
    with pytest.warns(UserWarning) as caught:
        load_history(logdir / "damaged")
    assert [str(w.message) for w in caught] == header["warnings"]
    assert "could not be read" in header["warnings"][0]


@pytest.mark.parametrize(
    "run", ["../with_values", "/etc", "with_values/../with_values", "other", "nowhere", "x" * 10_000, ""]
)
def test_only_runs_tensorboard_lists_with_rwc_values_are_answered(logdir, run):
    response = get(make_plugin(logdir), "/run", run=run)
    assert response.status_code == 404
    assert json.loads(response.get_data()) == {"error": "No such run among those TensorBoard lists."}


def test_column_counts_are_bounded_and_must_be_numbers(logdir):
    plugin = make_plugin(logdir)
    header, _ = decode(get(plugin, "/run", run="with_values", columns=str(10**12)))
    assert header["shape"][1] == len(load_history(logdir / "with_values"))  # all of them: fewer than the bound
    assert get(plugin, "/run", run="with_values", columns="many").status_code == 400


def post(plugin, run, header: bool = True):
    headers = {"X-RWC-Request": "1"} if header else {}
    return Client(plugin.get_plugin_apps()["/cluster"]).post("/cluster", query_string={"run": run}, headers=headers)


def test_cluster_now_writes_the_cluster_run_inside_the_run_and_the_page_then_shows_it(logdir, tmp_path):
    shutil.copytree(logdir, tmp_path / "logs")
    plugin = make_plugin(tmp_path / "logs")
    answer = post(plugin, "with_values")
    assert answer.status_code == 200, answer.get_data()
    assert json.loads(answer.get_data())["layers"] == 8
    assert (tmp_path / "logs" / "with_values" / "rwc_clusters.json").is_file()
    assert (tmp_path / "logs" / "with_values" / "rwc_clusters").is_dir()
    header, _ = decode(get(plugin, "/run", run="with_values"))
    written = json.loads((tmp_path / "logs" / "with_values" / "rwc_clusters.json").read_text())
    assert header["clusters"]["labels"] == written["labels"]


def test_cluster_now_needs_a_post_from_the_page_a_listed_run_and_no_read_only_flag(logdir):
    plugin = make_plugin(logdir)
    assert Client(plugin.get_plugin_apps()["/cluster"]).get("/cluster?run=with_values").status_code == 405
    assert post(plugin, "with_values", header=False).status_code == 405
    assert post(plugin, "../with_values").status_code == 404
    assert post(make_plugin(logdir, read_only=True), "with_values").status_code == 403
    assert not (logdir / "with_values" / "rwc_clusters.json").exists()


def test_one_clustering_at_a_time_and_concurrent_readers_get_the_same_answer(logdir, tmp_path, monkeypatch):
    from lightning_rwc import pipeline

    shutil.copytree(logdir, tmp_path / "logs")
    plugin = make_plugin(tmp_path / "logs")
    running = []

    def slow(*args, **kwargs):
        running.append(len(running))
        time.sleep(0.5)
        return original(*args, **kwargs)

    original = pipeline.cluster_run
    monkeypatch.setattr(pipeline, "cluster_run", slow)
    codes, bodies = [], []
    threads = [threading.Thread(target=lambda: codes.append(post(plugin, "with_values").status_code)) for _ in range(3)]
    threads += [threading.Thread(target=lambda: bodies.append(get(plugin, "/run", run="events_only").get_data()))]
    threads += [threading.Thread(target=lambda: bodies.append(get(plugin, "/run", run="events_only").get_data()))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [200, 409, 409] and running == [0]
    assert bodies[0] == bodies[1]


def test_the_page_is_served_from_the_package_and_the_tab_is_named_rwc(logdir):
    plugin = make_plugin(logdir)
    page = get(plugin, "/index.js")
    assert page.status_code == 200 and b"export async function render()" in page.get_data()
    assert plugin.frontend_metadata().tab_name == "RWC"
    assert plugin_module.STATIC.joinpath("index.js").is_file()


def test_an_answer_holds_at_most_two_million_values_however_many_layers():
    from lightning_rwc.dashboard.data import MAX_CELLS, RunData, encode
    from lightning_rwc.history import RWCHistory

    history = RWCHistory.from_arrays([f"l{i}" for i in range(5000)], range(1, 1001), np.full((5000, 1000), 0.01))
    header, matrix = decode_bytes(encode(RunData(history, "values file"), 4000))
    assert matrix.shape == (5000, MAX_CELLS // 5000) and matrix.size * 4 <= 8e6
    assert header["last_steps"][-1] == 1000


def decode_bytes(body: bytes) -> tuple[dict, np.ndarray]:
    (length,) = struct.unpack("<I", body[:4])
    header = json.loads(body[4 : 4 + length])
    return header, np.frombuffer(body[4 + length :], dtype="<f4").reshape(header["shape"])


@pytest.mark.parametrize("run", ["with_values", "events_only"])
def test_freezing_decisions_and_health_flags_are_sent_with_their_steps(logdir, tmp_path, run):
    from torch.utils.tensorboard import SummaryWriter

    from lightning_rwc.decide.health import first_flags

    shutil.copytree(logdir / run, tmp_path / "logs" / run)
    writer = SummaryWriter(str(tmp_path / "logs" / run))  # what LayerFreezer logs when it decides
    writer.add_scalar("rwc_freeze/frozen_blocks", 1.0, 6)
    writer.add_scalar("rwc_freeze/net.0", 1.0, 6)
    writer.close()
    header, _ = decode(get(make_plugin(tmp_path / "logs"), "/run", run=run))
    assert header["decisions"] == [{"kind": "frozen", "name": "net.0", "step": 6}]
    history = load_history(tmp_path / "logs" / run)
    flags = first_flags(history.values, history.total)
    expected = [
        (kind, history.layers[i], history.steps[j])
        for kind, first in flags.items()
        for i, j in enumerate(first)
        if j >= 0
    ]
    assert [(f["kind"], f["name"], f["step"]) for f in header["health"]] == expected
