"""Cluster one logged run end to end: read its history, cluster, write the cluster run, the JSON file and plots."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_rwc.keys import CLUSTER_JSON, CLUSTER_RUN_DIR, DEFAULT_PREFIX

if TYPE_CHECKING:
    from lightning_rwc.clustering import ClusterResult
    from lightning_rwc.history import RWCHistory


@dataclass
class RunOutput:
    """What :func:`cluster_run` wrote for one run.

    Example::

        >>> RunOutput.__dataclass_fields__.keys()
        dict_keys(['run', 'result', 'cluster_run', 'json_path', 'plots', 'plots_skipped'])
    """

    run: Path
    result: ClusterResult
    cluster_run: Path
    json_path: Path
    plots: list[Path] = field(default_factory=list)
    plots_skipped: str | None = None


def cluster_run(
    run: str | os.PathLike,
    prefix: str = DEFAULT_PREFIX,
    plots: bool = True,
    history: RWCHistory | None = None,
    **options: Any,
) -> RunOutput:
    """Cluster the layers of one run and write the results beside it.

    Writes ``<run>/rwc_clusters/`` (a TensorBoard run with the cluster summaries, its custom-scalars layout and,
    with ``plots``, PNG figures) and ``<run>/rwc_clusters.json``. Both are replaced, never appended to, so running
    twice gives the same files. ``history``: the run's values where the caller has read them already (else they are
    read with :func:`~lightning_rwc.runs.load_history`). ``options`` go to
    :func:`~lightning_rwc.clustering.cluster_layers`.

    Raises:
        FileNotFoundError: if the run does not exist or holds no logs.
        ValueError: if the run holds no RWC values or too few to cluster.

    Example::

        >>> import tempfile
        >>> import numpy as np
        >>> from lightning_rwc.history import RWCHistory
        >>> run = Path(tempfile.mkdtemp())
        >>> values = np.array([[1, 1], [1, 1.1], [9, 9], [9, 9.9]])
        >>> RWCHistory.from_arrays(["a", "b", "c", "d"], [1, 2], values).save(run / "history.json")
        >>> out = cluster_run(run / "history.json", plots=False, method="kmeans", n_clusters=2)
        >>> out.json_path.name, out.cluster_run.name, out.result.n_clusters
        ('rwc_clusters.json', 'rwc_clusters', 2)
    """
    from lightning_rwc.clustering import cluster_layers
    from lightning_rwc.runs import load_history
    from lightning_rwc.tensorboard import recover_dir, write_cluster_run

    run = Path(run)
    recover_dir((run if run.is_dir() else run.parent) / CLUSTER_RUN_DIR)  # outputs moved aside by a killed run
    history = load_history(run, prefix=prefix) if history is None else history
    result = cluster_layers(history, **options)
    directory = run if run.is_dir() else run.parent
    target = write_cluster_run(result, directory, prefix=prefix)
    json_path = directory / CLUSTER_JSON
    result.save(json_path)
    output = RunOutput(run=run, result=result, cluster_run=target, json_path=json_path)
    if plots:
        from lightning_rwc.plots import save_plots

        try:
            output.plots = save_plots(history, result, target)
        except ModuleNotFoundError as err:
            output.plots_skipped = str(err)
    return output
