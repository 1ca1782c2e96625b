"""The lightning-rwc command on runs written in the callback's format."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import planted_curves, write_tensorboard_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_rwc.cli import build_parser, main


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("logs") / "version_0"
    names, family, values = planted_curves()
    write_tensorboard_run(run, names, values)
    return run, dict(zip(names, family, strict=True))


@pytest.mark.parametrize("method", ["hdbscan", "kmeans"])
def test_cluster_recovers_planted_families_from_event_files(planted_run, method, capsys):
    run, family = planted_run
    assert main(["cluster", str(run), "--method", method, "--no-plots"]) == 0
    data = json.loads((run / "rwc_clusters.json").read_text())
    layers = [n for n in data["labels"] if family[n] != -1]
    assert adjusted_rand_score([family[n] for n in layers], [data["labels"][n] for n in layers]) >= 0.9
    assert data["params"]["method"] == method
    out = capsys.readouterr().out
    assert "4 clusters" in out and "rwc_clusters.json" in out


def test_cluster_writes_plots_and_running_twice_replaces_everything(planted_run, capsys):
    run, _ = planted_run
    for _ in range(2):
        assert main(["cluster", str(run)]) == 0
    cluster_run = run / "rwc_clusters"
    assert sorted(p.name for p in cluster_run.glob("*.png")) == [
        "clusters.png",
        "depth.png",
        "embedding.png",
        "heatmap.png",
    ]
    assert len(list(cluster_run.glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(cluster_run), size_guidance={"scalars": 0})
    acc.Reload()
    assert len(acc.Scalars("rwc_cluster/0/mean")) == 30


def test_cluster_on_a_folder_clusters_every_run_below_it(tmp_path, capsys):
    names, _, values = planted_curves(per_family=8, measurements=6, outliers=0)
    for version in ("version_0", "version_1"):
        write_tensorboard_run(tmp_path / "lightning_logs" / version, names, values)
    assert main(["cluster", str(tmp_path / "lightning_logs"), "--method", "kmeans", "--no-plots"]) == 0
    assert (tmp_path / "lightning_logs" / "version_1" / "rwc_clusters.json").is_file()
    assert "clustered 2 of 2 runs" in capsys.readouterr().out
    # The cluster runs written the first time are not taken for source runs the second time.
    assert main(["cluster", str(tmp_path / "lightning_logs"), "--method", "kmeans", "--no-plots"]) == 0


def test_cluster_reads_a_csv_logger_run(tmp_path, capsys):
    names, _, values = planted_curves(per_family=5, measurements=5, outliers=0)
    lines = ["step," + ",".join(f"rwc/{n}" for n in names)]
    lines += [f"{j}," + ",".join(str(v) for v in values[:, j]) for j in range(values.shape[1])]
    (tmp_path / "metrics.csv").write_text("\n".join(lines) + "\n")
    assert main(["cluster", str(tmp_path), "--method", "kmeans", "--k", "4", "--no-plots"]) == 0
    assert json.loads((tmp_path / "rwc_clusters.json").read_text())["quality"]["n_clusters"] == 4


def test_errors_name_the_problem_and_exit_non_zero(tmp_path, capsys):
    assert main(["cluster", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["cluster", str(tmp_path)]) == 2
    assert "no TensorBoard event files or metrics.csv" in capsys.readouterr().err
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "other")) as writer:
        writer.add_scalar("loss/train", 1.0, 0)
    assert main(["cluster", str(tmp_path / "other")]) == 1
    assert "no 'rwc/' values" in capsys.readouterr().err
    short = tmp_path / "short"
    write_tensorboard_run(short, ["a", "b", "c"], np.ones((3, 1)))
    assert main(["cluster", str(short)]) == 1
    assert "at least 2 measurements" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cluster", str(short), "--method", "dbscan"])


def test_an_old_cluster_output_survives_a_failed_run(planted_run, tmp_path):
    run, _ = planted_run
    main(["cluster", str(run), "--no-plots"])
    before = (run / "rwc_clusters.json").read_text()
    assert main(["cluster", str(run), "--method", "kmeans", "--k", "1000", "--no-plots"]) == 1
    assert (run / "rwc_clusters.json").read_text() == before


def test_help_lists_the_subcommands_without_importing_lightning():
    code = (
        "import sys; from lightning_rwc.cli import build_parser; build_parser().format_help(); "
        "print('lightning' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    help_text = build_parser().format_help()
    assert "cluster" in help_text and "demo" in help_text


# Bad input and faults, tried in bulk: every generated run either clusters or ends with one clear line that names
# the file, and outputs written earlier are never damaged.

NAMES = st.sampled_from(["fc.weight", "layer1.0.conv1.weight", "a b.weight", "héad[0].w", "x(1)", "rwc/y", "0"])
CELLS = st.one_of(
    st.floats(0, 1, allow_nan=False).map(repr),
    st.sampled_from(["", "nan", "inf", "-1", "0", "abc", "1e309", "1,5"]),
)


@st.composite
def csv_runs(draw) -> bytes:
    names = draw(st.lists(NAMES, min_size=0, max_size=4, unique=True))
    header = (["step"] if draw(st.booleans()) or not names else []) + [f"rwc/{n}" for n in names]
    header += ["epoch"] * draw(st.booleans())
    steps = st.one_of(st.integers(0, 5).map(str), st.sampled_from(["", "x", "nan", "1e400", "2.5"]))
    rows = draw(st.lists(st.lists(CELLS, min_size=len(header), max_size=len(header)), max_size=8))
    for row in rows:
        if "step" in header:
            row[0] = draw(steps)
    lines = [",".join(header)] + [",".join(row) for row in rows]
    if draw(st.booleans()):
        lines = lines[: draw(st.integers(0, len(lines)))]  # truncated
    text = "\n".join(lines).encode()
    return text if draw(st.integers(0, 9)) else b"\xff\xfe\x00garbage"


@st.composite
def json_runs(draw) -> bytes:
    value = st.one_of(st.none(), st.floats(0, 1), st.text(max_size=3), st.integers(-2, 5))
    layers = draw(st.lists(NAMES, max_size=4, unique=True))
    steps = draw(st.lists(st.integers(0, 9), max_size=4))
    data = {
        "layers": draw(st.one_of(st.just(layers), value)),
        "steps": draw(st.one_of(st.just(steps), value)),
        "values": draw(st.one_of(st.lists(st.lists(value, max_size=4), max_size=4), value)),
        "total": draw(st.one_of(st.lists(value, max_size=4), value)),
    }
    data = {key: item for key, item in data.items() if draw(st.booleans()) or key == "layers"}
    text = json.dumps(data) if draw(st.integers(0, 5)) else draw(st.sampled_from(["[1, 2]", "{", '"text"', "null"]))
    return text.encode()


@st.composite
def event_runs(draw) -> list[tuple[str, int, float]]:
    names = draw(st.lists(NAMES, min_size=1, max_size=5, unique=True))
    values = st.one_of(st.floats(1e-6, 1), st.sampled_from([0.0, float("nan"), float("inf"), 0.01]))
    return [(f"rwc/{n}", step, draw(values)) for step in range(1, draw(st.integers(1, 6)) + 1) for n in names]


def write_events(run, scalars, damage: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run))
    for tag, step, value in scalars:
        writer.add_scalar(tag, value, step)
    writer.close()
    (path,) = run.glob("events.out.tfevents.*")
    data = path.read_bytes()
    if damage == 1:
        path.write_bytes(data[: len(data) * 2 // 3])  # truncated
    elif damage == 2:
        path.write_bytes(data[:50] + bytes(reversed(data[50:90])) + data[90:])  # a corrupt record


def write_values_file(run, data) -> None:
    """One to three segments (as resumed runs make) of random layers and values, then perhaps damage."""
    from lightning_rwc.values_file import ValuesWriter

    folder = run / "rwc_values"
    values = st.one_of(st.floats(1e-6, 1), st.sampled_from([0.0, float("nan"), float("inf"), 1e300]))
    for _ in range(data.draw(st.integers(1, 3))):
        names = data.draw(st.lists(NAMES, max_size=4, unique=True))
        writer = ValuesWriter(folder)
        for step in data.draw(st.lists(st.integers(0, 6), min_size=1, max_size=6)):
            writer.append(step, 0, {name: data.draw(values) for name in [*names, "_all"]})
        writer.close()
    segment = data.draw(st.sampled_from(sorted(folder.glob("*.json"))))
    damage = data.draw(st.integers(0, 3))
    if damage == 1:
        data_file = segment.with_suffix(".bin")
        data_file.write_bytes(data_file.read_bytes()[: data.draw(st.integers(0, 30))])  # cut off
    elif damage == 2:
        segment.write_text(data.draw(st.sampled_from(["{", '{"format": 1}', '{"format": 2, "layers": []}', "[]"])))
    elif damage == 3:
        segment.with_suffix(".bin").unlink()


def earlier_outputs(run) -> dict[str, bytes]:
    """Outputs of an earlier clustering of this run, to be found intact after a failing one."""
    (run / "rwc_clusters").mkdir()
    (run / "rwc_clusters" / "kept.txt").write_bytes(b"earlier cluster run")
    (run / "rwc_clusters.json").write_bytes(b'{"earlier": true}')
    return {"rwc_clusters/kept.txt": b"earlier cluster run", "rwc_clusters.json": b'{"earlier": true}'}


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],  # capsys is read every time
)
@given(kind=st.sampled_from(["csv", "json", "events", "values"]), data=st.data())
def test_generated_bad_runs_cluster_or_fail_with_one_clear_line(kind, data, capsys):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        run.mkdir()
        if kind == "events":
            write_events(run, data.draw(event_runs()), data.draw(st.integers(0, 2)))
            target = run
        elif kind == "values":
            write_values_file(run, data)
            target = run
        else:
            target = run / ("metrics.csv" if kind == "csv" else "history.json")
            target.write_bytes(data.draw(csv_runs() if kind == "csv" else json_runs()))
        before = earlier_outputs(run)
        capsys.readouterr()
        code = main(["cluster", str(target), "--no-plots"])
        out, err = capsys.readouterr()
        assert code in (0, 1), (code, err)
        assert not [p.name for p in run.iterdir() if p.name.endswith((".tmp", ".old"))]  # nothing half-written
        if code:
            assert err.count("\n") == 1 and err.startswith("error: ") and str(target) in err, err
            assert "Traceback" not in err
            assert {name: (run / name).read_bytes() for name in before} == before
        else:
            json.loads((run / "rwc_clusters.json").read_text(), parse_constant=lambda c: pytest.fail(c))
            assert not (run / "rwc_clusters" / "kept.txt").exists()  # replaced as a whole


KILL_SCRIPT = """
import os, signal, sys
import torch.utils.tensorboard.writer as writer
from lightning_rwc.cli import main

def killed(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

writer.SummaryWriter.{method} = killed
main(["cluster", sys.argv[1], "--no-plots"])
"""


@pytest.mark.parametrize("method", ["add_scalar", "add_text"])
def test_a_clustering_killed_while_writing_leaves_the_earlier_outputs_intact(planted_run, tmp_path, method):
    import shutil

    run = tmp_path / "version_0"
    shutil.copytree(planted_run[0], run, ignore=shutil.ignore_patterns("rwc_clusters*"))
    assert main(["cluster", str(run), "--no-plots"]) == 0
    earlier = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and "rwc_clusters" in str(p)}
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(method=method))
    result = subprocess.run([sys.executable, str(script), str(run)], capture_output=True, timeout=300)
    assert result.returncode == -9
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and "rwc_clusters" in str(p)}
    assert {k: v for k, v in after.items() if not str(k).startswith(".")} == earlier  # the visible outputs
    assert main(["cluster", str(run), "--no-plots"]) == 0  # the next run cleans up what the killed one left
    assert sorted(p.name for p in run.iterdir() if "rwc_clusters" in p.name) == ["rwc_clusters", "rwc_clusters.json"]


def test_outputs_moved_aside_by_a_killed_run_are_put_back(planted_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "version_0"
    shutil.copytree(planted_run[0], run, ignore=shutil.ignore_patterns("rwc_clusters*"))
    assert main(["cluster", str(run), "--no-plots"]) == 0
    (run / "rwc_clusters").rename(run / ".rwc_clusters.old")  # killed between the two renames of the swap
    (run / "metrics.csv").write_text("step\n1\n")  # and now the run cannot be clustered
    for path in run.glob("events.out.tfevents.*"):
        path.unlink()
    assert main(["cluster", str(run), "--no-plots"]) == 1
    assert (run / "rwc_clusters").is_dir() and not (run / ".rwc_clusters.old").exists()


def test_a_run_with_a_cut_off_event_file_is_clustered_with_one_warning_line_naming_the_file(
    planted_run, tmp_path, capsys
):
    import shutil

    run = tmp_path / "version_0"
    shutil.copytree(planted_run[0], run, ignore=shutil.ignore_patterns("rwc_clusters*"))
    (path,) = run.glob("events.out.tfevents.*")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4 + 5])  # a crash in the middle of a write
    capsys.readouterr()
    assert main(["cluster", str(run), "--no-plots"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {path}: bytes ") and "could not be read" in err[0]


def test_an_unwritable_place_for_the_outputs_is_a_clear_error(planted_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "version_0"
    shutil.copytree(planted_run[0], run, ignore=shutil.ignore_patterns("rwc_clusters*"))
    (run / ".rwc_clusters.tmp").write_text("a file where the new cluster run must go")  # root can write anywhere
    (run / "rwc_clusters.json").mkdir()  # and a directory where the JSON file must go
    assert main(["cluster", str(run), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run}: ") and err.count("\n") == 1 and "Traceback" not in err


DAMAGES = ["cut off", "bytes flipped", "block zeroed", "junk appended", "emptied", "removed"]


def damage(path, how: str, data) -> None:
    """Damage the file at ``path`` at offsets (and with bytes) that ``data`` draws."""
    content = path.read_bytes()
    offset = data.draw(st.integers(0, max(len(content) - 1, 0)))
    length = data.draw(st.integers(1, 512))
    if how == "cut off":
        path.write_bytes(content[:offset])
    elif how == "bytes flipped":
        flipped = bytes(b ^ 0xFF for b in content[offset : offset + length])
        path.write_bytes(content[:offset] + flipped + content[offset + length :])
    elif how == "block zeroed":
        path.write_bytes(content[:offset] + bytes(len(content[offset : offset + length])) + content[offset + length :])
    elif how == "junk appended":
        path.write_bytes(content + data.draw(st.binary(min_size=1, max_size=length)))
    elif how == "emptied":
        path.write_bytes(b"")
    else:
        path.unlink()


def copy_of_real_run(real_run, kind: str, run) -> list:
    """``run`` holding one kind of log of the real run; the files that may be damaged."""
    import shutil

    run.mkdir()
    if kind == "events":
        shutil.copy(real_run.event_file, run / real_run.event_file.name)
    elif kind == "csv":
        shutil.copy(real_run.csv_file, run / "metrics.csv")
    else:
        shutil.copytree(real_run.values_dir, run / "rwc_values")
    return sorted(p for p in run.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", ["events", "csv", "values"])
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_real_runs_damaged_at_random_cluster_or_fail_with_one_clear_line(real_run, kind, data, capsys):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        files = copy_of_real_run(real_run, kind, run)
        damage(data.draw(st.sampled_from(files)), data.draw(st.sampled_from(DAMAGES)), data)
        before = earlier_outputs(run)
        capsys.readouterr()
        code = main(["cluster", str(run), "--no-plots"])
        out, err = capsys.readouterr()
        assert code in (0, 1, 2), (code, err)  # 2: nothing left to read there
        assert "Traceback" not in err
        if code:
            assert err.count("\n") == 1 and err.startswith("error: ") and str(run) in err, err
            assert {name: (run / name).read_bytes() for name in before} == before
        else:
            json.loads((run / "rwc_clusters.json").read_text(), parse_constant=lambda c: pytest.fail(c))
