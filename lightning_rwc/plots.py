"""Matplotlib figures of a clustering result (optional extra: ``pip install lightning-rwc[plots]``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lightning_rwc.clustering import ClusterResult
    from lightning_rwc.history import RWCHistory

INSTALL_HINT = "Plots need matplotlib: pip install matplotlib (or pip install 'lightning-rwc[plots]')."


def require_matplotlib() -> None:
    """Raise a ``ModuleNotFoundError`` that says how to install matplotlib, if it is missing.

    Example::

        >>> require_matplotlib()  # matplotlib is installed: nothing happens
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(INSTALL_HINT) from err


def heatmap(history: RWCHistory, result: ClusterResult) -> Figure:
    """Layers x time heatmap of ``log10(RWC)``, rows grouped by cluster (noise last) and by depth within one.

    Example::

        >>> import numpy as np
        >>> from lightning_rwc import RWCHistory, cluster_layers
        >>> values = np.array([[1, 1], [1, 1.1], [9, 9], [9, 9.9]])
        >>> history = RWCHistory.from_arrays(["a", "b", "c", "d"], [1, 2], values)
        >>> result = cluster_layers(history, method="kmeans", n_clusters=2)
        >>> heatmap(history, result).axes[0].get_title()
        'Relative weight change per layer'
    """
    fig = _figure(figsize=(9, max(3.0, min(12.0, 0.12 * len(result.layers) + 1.5))))
    ax = fig.add_subplot()
    order = sorted(result.layers, key=lambda n: (result.labels[n] == -1, result.labels[n], result.depth[n]))
    rows = np.array([history.curve(name) for name in order])
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(np.where(rows > 0, rows, np.nan))
    image = ax.imshow(logs, aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax, label="log10 RWC")
    bounds = [i for i in range(1, len(order)) if result.labels[order[i]] != result.labels[order[i - 1]]]
    for b in bounds:
        ax.axhline(b - 0.5, color="white", linewidth=1)
    ax.set_xlabel("measurement (step " + f"{result.steps[0]}..{result.steps[-1]})")
    ax.set_ylabel("layer (grouped by cluster)")
    if len(order) <= 60:
        ax.set_yticks(range(len(order)), [f"[{result.labels[n]}] {n}" for n in order], fontsize=6)
    ax.set_title("Relative weight change per layer")
    fig.tight_layout()
    return fig


def cluster_curves(result: ClusterResult) -> Figure:
    """Each cluster's mean RWC over the steps, with its quartile band, on a log axis.

    Example::

        >>> import numpy as np
        >>> from lightning_rwc import RWCHistory, cluster_layers
        >>> values = np.array([[1, 1], [1, 1.1], [9, 9], [9, 9.9]])
        >>> history = RWCHistory.from_arrays(["a", "b", "c", "d"], [1, 2], values)
        >>> result = cluster_layers(history, method="kmeans", n_clusters=2)
        >>> len(cluster_curves(result).axes[0].lines)
        2
    """
    fig = _figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    colors = _colors(result)
    for s in result.summaries:
        ax.plot(result.steps, s.mean, color=colors[s.cluster_id], label=f"cluster {s.cluster_id} ({len(s.members)})")
        ax.fill_between(result.steps, s.lower, s.upper, color=colors[s.cluster_id], alpha=0.25)
    ax.set_yscale("log")
    ax.set_xlabel("global step")
    ax.set_ylabel("RWC")
    ax.set_title("Cluster means with quartile bands")
    if result.summaries:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def embedding(result: ClusterResult) -> Figure:
    """The first two embedding coordinates of each layer, coloured by cluster (noise in grey).

    Example::

        >>> import numpy as np
        >>> from lightning_rwc import RWCHistory, cluster_layers
        >>> values = np.array([[1, 1], [1, 1.1], [9, 9], [9, 9.9]])
        >>> history = RWCHistory.from_arrays(["a", "b", "c", "d"], [1, 2], values)
        >>> result = cluster_layers(history, method="kmeans", n_clusters=2)
        >>> len(embedding(result).axes[0].collections)
        2
    """
    fig = _figure(figsize=(6, 5))
    ax = fig.add_subplot()
    colors = _colors(result)
    labels = np.array([result.labels[n] for n in result.layers])
    xy = result.embedding if result.embedding.shape[1] >= 2 else np.c_[result.embedding, np.zeros(len(labels))]
    for cid in sorted(set(labels.tolist())):
        mask = labels == cid
        name = "noise" if cid == -1 else f"cluster {cid}"
        ax.scatter(xy[mask, 0], xy[mask, 1], s=18, color=colors.get(cid, "0.6"), label=name)
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.set_title(f"Layer embedding ({result.params.get('reduction')})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def depth_membership(result: ClusterResult) -> Figure:
    """Cluster of each layer against its depth (position in the model), to see whether clusters follow depth.

    Example::

        >>> import numpy as np
        >>> from lightning_rwc import RWCHistory, cluster_layers
        >>> values = np.array([[1, 1], [1, 1.1], [9, 9], [9, 9.9]])
        >>> history = RWCHistory.from_arrays(["a", "b", "c", "d"], [1, 2], values)
        >>> result = cluster_layers(history, method="kmeans", n_clusters=2)
        >>> len(depth_membership(result).axes[0].collections)
        4
    """
    fig = _figure(figsize=(8, 3))
    ax = fig.add_subplot()
    colors = _colors(result)
    for name in result.layers:
        cid = result.labels[name]
        ax.scatter(result.depth[name], cid, s=25, color=colors.get(cid, "0.6"))
    ax.set_yticks(
        sorted({*result.labels.values()}), [("noise" if c == -1 else str(c)) for c in sorted({*result.labels.values()})]
    )
    ax.set_xlabel("depth (parameter order)")
    ax.set_ylabel("cluster")
    ax.set_title("Cluster membership against depth")
    fig.tight_layout()
    return fig


def save_plots(history: RWCHistory, result: ClusterResult, directory: str | os.PathLike) -> list[Path]:
    """Write ``heatmap.png``, ``clusters.png``, ``embedding.png`` and ``depth.png`` into ``directory``.

    Example::

        >>> import numpy as np
        >>> from lightning_rwc import RWCHistory, cluster_layers
        >>> values = np.array([[1, 1], [1, 1.1], [9, 9], [9, 9.9]])
        >>> history = RWCHistory.from_arrays(["a", "b", "c", "d"], [1, 2], values)
        >>> result = cluster_layers(history, method="kmeans", n_clusters=2)
        >>> import tempfile
        >>> [p.name for p in save_plots(history, result, tempfile.mkdtemp())]
        ['heatmap.png', 'clusters.png', 'embedding.png', 'depth.png']
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in (
        ("heatmap.png", heatmap(history, result)),
        ("clusters.png", cluster_curves(result)),
        ("embedding.png", embedding(result)),
        ("depth.png", depth_membership(result)),
    ):
        path = directory / name
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def _figure(figsize: tuple[float, float]) -> Figure:
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _colors(result: ClusterResult) -> dict[int, object]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {s.cluster_id: cmap(i % 10) for i, s in enumerate(result.summaries)}
