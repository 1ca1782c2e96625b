"""The RWC dashboard's routes, against TensorBoard's own data provider over real runs."""

from __future__ import annotations

import argparse
import json
import os
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
from lightning_rwc.pipeline import cluster_run
from lightning_rwc.runs import load_history


def make_plugin(logdir, read_only: bool = False, **flags) -> RWCPlugin:
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    flags = argparse.Namespace(rwc_read_only=read_only, **flags)
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


def post(plugin, run, header: bool = True, base_url: str = "http://localhost/", **headers):
    headers = ({"X-RWC-Request": "1"} if header else {}) | headers
    client = Client(plugin.get_plugin_apps()["/cluster"])
    return client.post("/cluster", query_string={"run": run}, headers=headers, base_url=base_url)


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


def values_run(root, name: str, layers: int = 20, measurements: int = 30):
    """A run of planted values in a values file, with the small event file that makes TensorBoard list it."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_rwc.values_file import ValuesWriter

    rng = np.random.default_rng(0)
    names = [f"h.{i}.weight" for i in range(layers)]
    writer = ValuesWriter(root / name / "rwc_values")
    for step in range(1, measurements + 1):
        writer.append(step, step // 10, dict(zip(names, rng.uniform(1e-4, 0.1, layers).tolist(), strict=True)))
    writer.close()
    events = SummaryWriter(str(root / name))
    events.add_scalar("rwc/_all", 1e-3, measurements)
    events.close()
    return root / name


def test_answers_are_kept_by_the_columns_sent_and_within_the_memory_bound(tmp_path):
    values_run(tmp_path, "long", layers=50, measurements=5000)
    plugin = make_plugin(tmp_path, rwc_cache_mb=4)
    first = get(plugin, "/run", run="long", columns="1000").get_data()
    held = plugin.cache.nbytes
    for columns in range(1001, 1100):  # one answer for all of them: 1,000 columns
        assert get(plugin, "/run", run="long", columns=str(columns)).get_data() == first
    assert plugin.cache.nbytes == held
    history = load_history(tmp_path / "long")
    for columns in range(200, 4001, 100):
        header, matrix = decode(get(plugin, "/run", run="long", columns=str(columns)))
        assert matrix.shape == (50, columns) and header["last_steps"][-1] == history.steps[-1]
        assert plugin.cache.nbytes <= 4 << 20
    assert plugin.cache.nbytes >= 50 * 5000 * 8  # the run read is kept (its values as float64), with answers


def test_files_reached_through_links_are_not_read(tmp_path):
    outside = values_run(tmp_path, "outside")
    cluster_run(outside, plots=False, method="kmeans", n_clusters=2)
    logs = tmp_path / "logs"
    links = values_run(logs, "segment")  # one segment's values, then its layer list, point outside the log folder
    (links / "rwc_values" / "000000.bin").unlink()
    (links / "rwc_values" / "000000.bin").symlink_to(outside / "rwc_values" / "000000.bin")
    (links / "rwc_clusters.json").symlink_to(outside / "rwc_clusters.json")
    folder = values_run(logs, "folder")
    shutil.rmtree(folder / "rwc_values")
    (folder / "rwc_values").symlink_to(outside / "rwc_values", target_is_directory=True)
    events = logs / "events"
    events.mkdir()
    (events / "events.out.tfevents.1.host").symlink_to(next(outside.glob("*tfevents*")))
    plugin = make_plugin(logs)
    for run in ("segment", "folder", "events"):
        response = get(plugin, "/run", run=run)
        header, matrix = decode(response)
        assert response.status_code == 200 and matrix.size == 0 and header["clusters"] is None
        assert any("symbolic link" in warning for warning in header["warnings"]), header["warnings"]
    header, _ = decode(get(plugin, "/run", run="segment"))
    assert any("rwc_clusters.json" in warning for warning in header["warnings"])


def test_clustering_writes_nothing_through_links(logdir, tmp_path):
    run = tmp_path / "logs" / "run"
    shutil.copytree(logdir / "with_values", run)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.txt").write_text("kept")
    for name in (".rwc_clusters.json.tmp", "rwc_clusters.json"):  # temporaries of earlier versions, the output
        (run / name).symlink_to(outside / "kept.txt")
    for name in (".rwc_clusters.tmp", ".rwc_clusters.old"):
        (run / name).symlink_to(outside, target_is_directory=True)
    answer = post(make_plugin(tmp_path / "logs"), "run")
    assert answer.status_code == 200, answer.get_data()
    assert sorted(p.name for p in outside.iterdir()) == ["kept.txt"] and (outside / "kept.txt").read_text() == "kept"
    written = run / "rwc_clusters.json"
    assert not written.is_symlink() and json.loads(written.read_text())["labels"].keys() == set(
        load_history(run).layers
    )
    assert not (run / "rwc_clusters").is_symlink() and any((run / "rwc_clusters").glob("*tfevents*"))


def record(payload: bytes, length: int | None = None) -> bytes:
    """One event file record (TFRecord framing) holding ``payload``; ``length``: what its header claims."""
    from lightning_rwc.tensorboard import masked_crc32c

    head = struct.pack("<Q", len(payload) if length is None else length)
    return head + struct.pack("<I", masked_crc32c(head)) + payload + struct.pack("<I", masked_crc32c(payload))


def string_scalar() -> bytes:
    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2

    value = summary_pb2.Summary.Value(tag="rwc/net.0.weight", tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING))
    value.tensor.string_val.append(b"not a number")
    value.metadata.plugin_data.plugin_name = "scalars"
    return event_pb2.Event(step=10**6, summary=summary_pb2.Summary(value=[value])).SerializeToString()


def damage(run, kind: str) -> str:
    """Damage ``run`` as ``kind`` says; returns what the warning about it says."""
    events = next(run.glob("*tfevents*"))
    segment = run / "rwc_values" / "000000.bin"
    if kind == "not an event":
        events.write_bytes(events.read_bytes() + record(b"\xff" * 40))
    elif kind == "a string scalar":
        events.write_bytes(events.read_bytes() + record(string_scalar()))
        return "hold no number"
    elif kind == "a header claiming 1 TiB":
        events.write_bytes(events.read_bytes() + record(b"", length=1 << 40)[:12])
        return "a record of 1099511627776 bytes"
    elif kind == "NaN in the clusters":
        (run / "rwc_clusters.json").write_text('{"labels": {"a": NaN}, "clusters": [], "steps": []}')
        return "NaN is not JSON"
    elif kind == "a 1 TiB values segment":
        os.truncate(segment, 1 << 40)  # sparse: no disk used
        return "more than the"
    elif kind == "a FIFO as a values segment":
        shutil.copy(run / "rwc_values" / "000000.json", run / "rwc_values" / "000001.json")
        os.mkfifo(run / "rwc_values" / "000001.bin")
        return "not a regular file"
    return kind


@pytest.mark.parametrize(
    "kind",
    [
        "not an event",
        "a string scalar",
        "a header claiming 1 TiB",
        "NaN in the clusters",
        "a 1 TiB values segment",
        "a FIFO as a values segment",
    ],
)
def test_a_damaged_run_gets_an_answer_with_a_warning_and_other_runs_keep_answering(logdir, tmp_path, kind):
    logs = tmp_path / "logs"
    shutil.copytree(logdir / ("with_values" if "values" in kind else "events_only"), logs / "run")
    shutil.copytree(logdir / "with_values", logs / "sound")
    plugin = make_plugin(logs)  # TensorBoard has read the runs before the damage: only the tab reads them after it
    said = damage(logs / "run", kind)
    responses = []
    asking = threading.Thread(target=lambda: responses.append(get(plugin, "/run", run="run")), daemon=True)
    asking.start()
    asking.join(timeout=60)
    assert responses, "the request hung"
    header, matrix = decode(responses[0])
    assert responses[0].status_code == 200
    assert any(said in warning for warning in header["warnings"]), header["warnings"]
    if kind != "a 1 TiB values segment":  # the values before the damage, or beside it, are shown
        np.testing.assert_array_equal(matrix, load_history(logdir / "with_values").values.astype(np.float32))
    assert get(plugin, "/run", run="sound").status_code == 200


def test_clustering_is_refused_to_pages_of_other_sites(logdir, tmp_path):
    shutil.copytree(logdir / "with_values", tmp_path / "logs" / "run")
    plugin = make_plugin(tmp_path / "logs")
    for base, origin in [
        ("http://rebound.example:6006/", None),  # a DNS name pointed at this server by another site
        ("http://rebound.example:6006/", "http://rebound.example:6006"),
        ("http://localhost:6006/", "http://elsewhere.example"),
        ("http://localhost:6006/", "null"),
    ]:
        answer = post(plugin, "run", base_url=base, **({"Origin": origin} if origin else {}))
        assert answer.status_code == 403 and "refused" in json.loads(answer.get_data())["error"]
    assert not (tmp_path / "logs" / "run" / "rwc_clusters.json").exists()
    for base in ("http://localhost:6006/", "http://127.0.0.1:6006/", "http://[::1]:6006/"):
        assert post(plugin, "run", base_url=base, Origin=base.rstrip("/")).status_code == 200
    behind = make_plugin(tmp_path / "logs", rwc_allowed_hosts="tb.example.org")
    assert post(behind, "run", base_url="https://tb.example.org/", Origin="https://tb.example.org").status_code == 200


def test_each_column_says_the_optimizer_steps_it_covers_and_uneven_intervals_are_warned_of(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from lightning_rwc.values_file import ValuesWriter

    run = tmp_path / "mixed"
    writer = ValuesWriter(run / "rwc_values")
    steps = [4, 6, 10, 12, 16, 18]  # every_n_steps=4 with an epoch's end every 6 steps
    for step in steps:
        writer.append(step, step // 6, {"a.weight": 0.01, "b.weight": 0.02})
    writer.close()
    events = SummaryWriter(str(run))
    events.add_scalar("rwc/_all", 1e-3, 18)
    events.close()
    plugin = make_plugin(tmp_path)
    header, _ = decode(get(plugin, "/run", run="mixed"))
    assert header["intervals"] == [4, 2, 4, 2, 4, 2]
    assert any("different numbers of optimizer steps (2, 4)" in warning for warning in header["warnings"])
    header, _ = decode(get(plugin, "/run", run="mixed", columns="3"))  # two measurements a column: their mean
    assert header["intervals"] == [3, 3, 3]
    header, _ = decode(get(plugin, "/run", run="mixed", columns="2"))
    assert header["intervals"] == [(4 + 2 + 4) / 3, (2 + 4 + 2) / 3]


def test_requests_at_once_while_event_files_grow_all_get_the_whole_run(logdir, tmp_path):
    shutil.copytree(logdir / "events_only", tmp_path / "logs" / "run")
    (events,) = (tmp_path / "logs" / "run").glob("*tfevents*")
    data = events.read_bytes()
    events.write_bytes(data[: len(data) // 2])  # the run as it was halfway, then whole while requests come
    plugin = make_plugin(tmp_path / "logs")
    get(plugin, "/run", run="run")
    events.write_bytes(data)
    bodies = []
    threads = [threading.Thread(target=lambda: bodies.append(get(plugin, "/run", run="run"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = load_history(logdir / "events_only")
    for response in bodies:
        header, matrix = decode(response)
        assert response.status_code == 200 and header["first_steps"] == history.steps
        np.testing.assert_array_equal(matrix, history.values.astype(np.float32))
