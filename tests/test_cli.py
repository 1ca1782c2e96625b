"""The lightning-rwc command on runs written in the callback's format."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import planted_curves, write_tensorboard_run
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
