"""TensorBoard's dashboards in a real headless Chromium show the per-layer curves and one chart per cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import planted_curves, write_tensorboard_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))

from screenshots import CHROMEDRIVER, CHROMIUM, INSTALL_HINT, capture  # noqa: E402

from lightning_rwc.pipeline import cluster_run  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()), reason=INSTALL_HINT)
def test_custom_scalars_page_shows_one_chart_per_cluster(tmp_path):
    pytest.importorskip("selenium", reason=INSTALL_HINT)
    names, _, values = planted_curves(per_family=6, measurements=10, outliers=0)
    run = tmp_path / "logs" / "version_0"
    write_tensorboard_run(run, names, values)
    out = cluster_run(run, plots=False, method="kmeans", n_clusters=4)
    shots = capture(tmp_path / "logs", tmp_path / "shots")
    assert shots["margin_charts"] == out.result.n_clusters == 4
    assert json.loads(out.json_path.read_text())["quality"]["n_clusters"] == 4
    for key in ("scalars", "custom_scalars"):
        assert shots[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shots[key].stat().st_size > 20_000
