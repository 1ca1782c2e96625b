"""Group layers whose RWC curves evolve alike: features, dimensionality reduction, clustering, summaries.

The functions here take an :class:`~lightning_rwc.history.RWCHistory` and return plain data
(:class:`ClusterResult`); they know nothing about logging or plotting.

How values become features (the documented rule):

1. Each layer's curve over the measurements is read from the history; ``nan``, ``inf`` and missing values (a layer
   that appeared later, a step another layer was not measured at) count as missing.
2. A layer with fewer than two finite values is left out and listed in ``result.excluded`` with the reason.
3. Zero values (a layer that did not move) are raised to a floor, a tenth of the smallest positive value in the
   whole table, so that their logarithm is defined; missing values are filled by linear interpolation over the
   measurement index, holding the nearest value beyond either end. ``result.imputed`` counts, per layer, the values
   filled or floored this way.
4. Features are ``log10`` of the curve (``features="magnitude"``), or that curve z-scored per layer
   (``features="shape"``), which clusters by trend alone: use it when layers of very different scale but the same
   dynamics should fall together.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from lightning_rwc.files import json_float, write_json
from lightning_rwc.history import RWCHistory
from lightning_rwc.validate import check_choice

CLUSTERS_FORMAT = 1
FEATURES = ("magnitude", "shape")
REDUCTIONS = ("pca", "none", "umap")
METHODS = ("auto", "hdbscan", "kmeans")
Method = Literal["auto", "hdbscan", "kmeans"]


@dataclass
class ClusterSummary:
    """One cluster: its members (in depth order), their depth range and its mean / quartile curves over time.

    Example::

        >>> ClusterSummary(0, ["a.weight"], (0, 0), np.ones(2), np.ones(2), np.ones(2)).members
        ['a.weight']
    """

    cluster_id: int
    members: list[str]
    depth_range: tuple[int, int]
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


@dataclass
class ClusterResult:
    """The outcome of :func:`cluster_layers`.

    Attributes:
        layers: the clustered layers, in depth order (excluded layers are not among them).
        steps: the global steps of the measurements (the time axis of every curve).
        labels: ``{layer: cluster id}``; ``-1`` marks layers that fit no cluster (HDBSCAN noise).
        depth: ``{layer: position among all layers of the history}`` (the model's parameter order).
        embedding: ``(len(layers), n_components)`` coordinates the clustering ran on.
        summaries: one :class:`ClusterSummary` per cluster, by id (noise has none).
        silhouette: silhouette score of the clusters in the embedding (noise left out); ``None`` if undefined.
        noise_fraction: share of the clustered layers labelled ``-1``.
        explained_variance: share of the feature variance the reduction kept (1.0 without reduction).
        excluded: ``{layer: reason}`` for layers left out by the feature rule.
        imputed: ``{layer: number of values filled or floored}``, for layers where that happened.
        params: the parameters used.
        next_id: the smallest id not given to a cluster by this result or the earlier ones it was matched to: a
            cluster that vanishes leaves its id unused, so a later, different cluster never takes it.

    Example::

        >>> values = np.array([[1, 1], [1, 1.1], [9, 9], [9, 9.9]])
        >>> history = RWCHistory.from_arrays(["a", "b", "c", "d"], [1, 2], values)
        >>> result = cluster_layers(history, method="kmeans", n_clusters=2)
        >>> result.labels, result.n_clusters
        ({'a': 0, 'b': 0, 'c': 1, 'd': 1}, 2)
    """

    layers: list[str]
    steps: list[int]
    labels: dict[str, int]
    depth: dict[str, int]
    embedding: np.ndarray
    summaries: list[ClusterSummary]
    silhouette: float | None
    noise_fraction: float
    explained_variance: float
    excluded: dict[str, str] = field(default_factory=dict)
    imputed: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    next_id: int = 0

    @property
    def n_clusters(self) -> int:
        """Number of clusters (noise not counted)."""
        return len(self.summaries)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible content: the format written by :meth:`save` (see the README)."""
        return {
            "format_version": CLUSTERS_FORMAT,
            "params": self.params,
            "steps": self.steps,
            "labels": self.labels,
            "depth": self.depth,
            "quality": {
                "n_clusters": self.n_clusters,
                "silhouette": None if self.silhouette is None else json_float(self.silhouette),
                "noise_fraction": json_float(self.noise_fraction),
                "explained_variance": json_float(self.explained_variance),
            },
            "clusters": [
                {
                    **{k: v for k, v in asdict(s).items() if k not in ("mean", "lower", "upper")},
                    "mean": _json_list(s.mean),
                    "lower": _json_list(s.lower),
                    "upper": _json_list(s.upper),
                }
                for s in self.summaries
            ],
            "noise": [layer for layer in self.layers if self.labels[layer] == -1],
            "excluded": self.excluded,
            "imputed": self.imputed,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` as strict JSON (non-finite values as ``null``), atomically."""
        write_json(path, self.to_dict(), indent=1)

    def markdown(self) -> str:
        """A short Markdown report: quality figures, then each cluster's members and depth range."""
        silhouette = "n/a" if self.silhouette is None else f"{self.silhouette:.3f}"
        method = self.params.get("why", self.params.get("method"))
        lines = [
            f"**{self.n_clusters} clusters** of {len(self.layers)} layers ({method}); "
            f"silhouette {silhouette}, noise {self.noise_fraction:.0%}, explained variance "
            f"{self.explained_variance:.0%}.",
            "",
        ]
        for s in self.summaries:
            lines.append(
                f"- cluster {s.cluster_id}: {_layers(len(s.members))}, depth {_span(*s.depth_range)}: "
                + ", ".join(s.members)
            )
        noise = [layer for layer in self.layers if self.labels[layer] == -1]
        if noise:
            lines.append(f"- noise: {_layers(len(noise))}: " + ", ".join(noise))
        if self.excluded:
            lines.append(f"- excluded: {_layers(len(self.excluded))}: " + ", ".join(self.excluded))
        return "\n".join(lines)


def cluster_layers(
    history: RWCHistory,
    *,
    features: Literal["magnitude", "shape"] = "magnitude",
    reduction: Literal["pca", "none", "umap"] = "pca",
    method: Method = "auto",
    n_clusters: int | None = None,
    min_cluster_size: int | None = None,
    max_components: int = 10,
    explained_variance: float = 0.9,
    seed: int = 0,
    previous: ClusterResult | None = None,
    per_step: bool | None = None,
) -> ClusterResult:
    """Cluster the layers of ``history`` by their RWC curves.

    Args:
        history: the RWC history (for example ``callback.history`` or :func:`~lightning_rwc.runs.load_history`).
        features: ``"magnitude"`` (log curves as they are) or ``"shape"`` (log curves z-scored per layer).
        reduction: ``"pca"`` (components kept up to ``explained_variance``, at most ``max_components``),
            ``"none"``, or ``"umap"`` (needs the ``umap-learn`` package).
        method: ``"auto"`` (HDBSCAN where it finds structure, at least two clusters holding at least half of the
            layers; otherwise k-means with k by silhouette: ``params["why"]`` says which and why), ``"hdbscan"``
            (no k needed; layers that fit no cluster are labelled ``-1``) or ``"kmeans"`` (every layer gets a
            cluster, as in the original recipe).
        n_clusters: k for k-means; ``None`` picks it by the best silhouette for k in 2..10.
        min_cluster_size: HDBSCAN's smallest cluster; ``None`` uses ``max(2, min(100, layers // 20))``.
        max_components: most PCA components kept.
        explained_variance: share of variance the PCA components must explain.
        seed: random seed (k-means, UMAP, silhouette sampling); the result is deterministic for a given seed.
        previous: an earlier result; clusters keep the ids of its clusters they share most members with (see
            :func:`match_labels`).
        per_step: cluster each value divided by the optimizer steps it covers
            (:meth:`~lightning_rwc.history.RWCHistory.intervals`), so that measurements of different intervals
            compare; ``None``: where the run's intervals differ (``params["per_step"]`` says which was used).

    Raises:
        ValueError: for an unknown option, fewer than two measurements, fewer than three usable layers, or
            ``per_step=True`` for a history that cannot say its intervals.

    Example::

        >>> import numpy as np
        >>> from lightning_rwc.history import RWCHistory
        >>> t = np.arange(1, 11)
        >>> curves = [0.1 / t + 0.001 * i for i in range(6)] + [0.001 * np.ones(10) + 0.0001 * i for i in range(6)]
        >>> history = RWCHistory.from_arrays([f"l{i}.weight" for i in range(12)], t, np.array(curves))
        >>> result = cluster_layers(history, method="kmeans")
        >>> result.n_clusters, result.labels["l0.weight"] != result.labels["l11.weight"]
        (2, True)
    """
    check_choice("features", features, FEATURES)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("method", method, METHODS)
    if n_clusters is not None and n_clusters < 2:
        raise ValueError(f"n_clusters must be at least 2 (or None for automatic k), got {n_clusters}")
    if not 0 < explained_variance <= 1:
        raise ValueError(f"explained_variance must be in (0, 1], got {explained_variance}")
    if len(history) < 2:
        raise ValueError(
            f"Clustering needs at least 2 measurements per layer; this history has {len(history)}. "
            "Train for more epochs (or measure every_n_steps)."
        )
    all_layers = history.layers
    values, per_step = _per_step(history, per_step)
    curves, kept, excluded, imputed = prepare_curves(values, all_layers)
    if len(kept) < 3:
        raise ValueError(
            f"Clustering needs at least 3 layers with 2 or more finite values; {len(kept)} of {len(all_layers)} "
            f"qualify (excluded: {excluded or 'none'})."
        )
    feats = np.log10(curves)
    if features == "shape":
        std = feats.std(axis=1, keepdims=True)
        feats = (feats - feats.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
    embedding, kept_variance = reduce_features(feats, reduction, max_components, explained_variance, seed)
    params_extra: dict[str, Any] = {}
    if method != "kmeans":
        size = min_cluster_size or max(2, min(100, len(kept) // 20))
        labels = _hdbscan(embedding, size)
        params_extra = {"min_cluster_size": size}
        found, noise = len(set(labels.tolist()) - {-1}), float(np.mean(labels == -1))
        if method == "auto":
            structure = found >= 2 and noise <= 0.5
            params_extra["why"] = f"HDBSCAN found {found} clusters with {noise:.0%} noise"
            method = "hdbscan" if structure else "kmeans"
    if method == "kmeans":
        labels, k = _kmeans(embedding, n_clusters, seed)
        params_extra |= {"n_clusters": k, "k_chosen": "given" if n_clusters else "silhouette"}
        if "why" in params_extra:
            params_extra["why"] += f", too little structure in {len(kept)} layers: k-means with k={k} by silhouette"
    labels = _order_by_depth(labels)
    names = [all_layers[i] for i in kept]
    next_id = int(labels.max(initial=-1)) + 1
    if previous is not None:
        floor = max(previous.next_id, max(previous.labels.values(), default=-1) + 1)
        labels = match_labels(names, labels, previous.labels, floor)
        next_id = max(floor, int(labels.max(initial=-1)) + 1)
    raw = np.where(np.isfinite(values[kept]), values[kept], np.nan)
    return ClusterResult(
        layers=names,
        steps=history.steps,
        labels={name: int(label) for name, label in zip(names, labels, strict=True)},
        depth={name: int(i) for name, i in zip(names, kept, strict=True)},
        embedding=embedding,
        summaries=summarise(names, kept, labels, raw),
        silhouette=_silhouette(embedding, labels, seed),
        noise_fraction=float(np.mean(labels == -1)),
        explained_variance=kept_variance,
        excluded=excluded,
        imputed=imputed,
        params={
            "features": features,
            "reduction": reduction,
            "method": method,
            "n_components": int(embedding.shape[1]),
            "seed": seed,
            "per_step": per_step,
            **params_extra,
        },
        next_id=next_id,
    )


def _per_step(history: RWCHistory, per_step: bool | None) -> tuple[np.ndarray, bool]:
    """The values to cluster (per optimizer step where asked, or where the intervals differ) and whether per step."""
    intervals = history.intervals()
    known = intervals is not None and bool((intervals > 0).all())
    if per_step is None:
        per_step = known and len(set(intervals.tolist())) > 1
    if per_step and not known:
        raise ValueError(
            "per_step=True needs each measurement's interval, which this history cannot say (a bounded history "
            "that dropped measurements): read the run's logs with load_history, or pass per_step=False"
        )
    return (history.values / intervals if per_step else history.values), per_step


def elbow_k(embedding: np.ndarray, k_max: int = 8, seed: int = 0) -> tuple[int, list[float]]:
    """The k at the elbow of the k-means inertia curve for k = 1..k_max, and the curve.

    The elbow is the k farthest below the straight line from the first to the last point of the curve, with the
    inertia on a log scale and both axes scaled to [0, 1]: this automates the original work's choice of k by eye.

    Example::

        >>> points = np.concatenate([np.zeros((10, 2)), np.full((10, 2), 5.0), np.full((10, 2), 10.0)])
        >>> points += np.random.default_rng(0).normal(scale=0.1, size=points.shape)
        >>> elbow_k(points)[0]
        3
    """
    from sklearn.cluster import KMeans

    ks = np.arange(1, min(k_max, len(embedding)) + 1)
    inertias = [float(KMeans(n_clusters=int(k), n_init=10, random_state=seed).fit(embedding).inertia_) for k in ks]
    if len(ks) < 3:
        return int(ks[-1]), inertias
    logs = np.log(np.maximum(inertias, np.finfo(np.float64).tiny))
    span = logs[0] - logs[-1]
    if span <= 0:
        return 1, inertias
    x = (ks - 1) / (ks[-1] - 1)
    y = (logs - logs[-1]) / span
    return int(ks[np.argmax(1 - x - y)]), inertias


def original_recipe(history: RWCHistory, seed: int = 0, k_max: int = 8) -> tuple[ClusterResult, list[float]]:
    """The WeightScale recipe, for comparison: PCA to 2 components, then k-means with k at the elbow.

    The hand-made steps of the original (dropping the first and last layer, replacing outliers) are left out; the
    feature rule of this module stands in for them. Returns the result and the inertia curve for k = 1..k_max.

    Example::

        >>> t = np.arange(1, 11)
        >>> rows = [0.1 / t * (1 + 0.01 * i) for i in range(6)] + [0.001 * (1 + 0.01 * i) + 0 * t for i in range(6)]
        >>> history = RWCHistory.from_arrays([f"l{i}" for i in range(12)], t, np.array(rows))
        >>> result, inertias = original_recipe(history)
        >>> result.embedding.shape[1], len(inertias)
        (2, 8)
    """
    options: dict[str, Any] = {"max_components": 2, "explained_variance": 1.0, "method": "kmeans", "seed": seed}
    probe = cluster_layers(history, n_clusters=2, **options)
    k, inertias = elbow_k(probe.embedding, k_max, seed)
    if k < 2:
        return probe, inertias
    return cluster_layers(history, n_clusters=k, **options), inertias


def prepare_curves(
    values: np.ndarray, layers: Sequence[str]
) -> tuple[np.ndarray, list[int], dict[str, str], dict[str, int]]:
    """Apply the feature rule of this module to a ``(layers, measurements)`` table.

    Returns:
        The positive, finite curves of the kept layers, the indices of those layers, ``{layer: reason}`` for the
        excluded ones and ``{layer: count}`` of filled or floored values.
    """
    values = np.asarray(values, dtype=np.float64)
    usable = np.isfinite(values) & (values >= 0)
    positive = values[usable & (values > 0)]
    floor = max(positive.min() / 10, np.finfo(np.float64).tiny) if positive.size else 1e-12
    kept, excluded, imputed, rows = [], {}, {}, []
    index = np.arange(values.shape[1])
    for i, name in enumerate(layers):
        ok = usable[i]
        if ok.sum() < 2:
            excluded[name] = f"{int(ok.sum())} finite value(s) of {values.shape[1]}"
            continue
        row = np.where(ok, np.maximum(values[i], floor), np.nan)
        logs = np.log10(row)
        filled = np.interp(index, index[ok], logs[ok])
        count = int((~ok).sum() + (ok & (values[i] < floor)).sum())
        if count:
            imputed[name] = count
        kept.append(i)
        rows.append(10.0**filled)
    return np.array(rows).reshape(len(kept), values.shape[1]), kept, excluded, imputed


def reduce_features(
    features: np.ndarray, reduction: str, max_components: int, explained_variance: float, seed: int
) -> tuple[np.ndarray, float]:
    """Reduce ``(layers, measurements)`` features; return the embedding and the share of variance kept.

    Example::

        >>> features = np.random.default_rng(0).normal(size=(20, 6))
        >>> embedding, kept = reduce_features(features, "pca", max_components=3, explained_variance=0.5, seed=0)
        >>> embedding.shape[0], 2 <= embedding.shape[1] <= 3, kept >= 0.5
        (20, True, True)
    """
    if reduction == "none":
        return features, 1.0
    if reduction == "umap":
        try:
            import umap
        except ImportError as err:
            raise ModuleNotFoundError("reduction='umap' needs umap-learn: pip install umap-learn") from err
        dims = max(2, min(max_components, features.shape[1], features.shape[0] - 2))
        return umap.UMAP(n_components=dims, random_state=seed).fit_transform(features), math.nan
    from sklearn.decomposition import PCA

    cap = min(max_components, *features.shape)
    pca = PCA(n_components=cap, random_state=seed).fit(features)  # randomized SVD for large inputs
    ratios = np.nan_to_num(pca.explained_variance_ratio_)
    cumulative = np.cumsum(ratios)
    keep = int(np.searchsorted(cumulative, explained_variance - 1e-12) + 1)
    keep = max(min(2, cap), min(keep, cap))
    return pca.transform(features)[:, :keep], float(cumulative[keep - 1]) if cumulative.size else 1.0


def summarise(names: Sequence[str], depths: Sequence[int], labels: np.ndarray, raw: np.ndarray) -> list[ClusterSummary]:
    """Per cluster: members, depth range, and the mean and quartiles of the members' raw RWC at each step.

    Example::

        >>> raw = np.array([[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]])
        >>> [s.mean.tolist() for s in summarise(["a", "b", "c"], [0, 1, 2], np.array([0, 0, -1]), raw)]
        [[2.0, 3.0]]
    """
    summaries = []
    for cid in sorted(set(labels.tolist()) - {-1}):
        rows = np.flatnonzero(labels == cid)
        mean, lower, upper = _column_statistics(raw[rows])
        members, depth_range = [names[r] for r in rows], (int(depths[rows[0]]), int(depths[rows[-1]]))
        summaries.append(ClusterSummary(int(cid), members, depth_range, mean, lower, upper))
    return summaries


def _column_statistics(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, first and third quartile of each column without its ``nan`` values (``nan`` where all are)."""
    stats = np.full((3, block.shape[1]), np.nan)
    missing = np.isnan(block)
    complete = ~missing.any(axis=0)  # one vectorised pass (NumPy's nan-skipping quantiles go column by column)
    partial = ~complete & ~missing.all(axis=0)  # all-nan columns are left out rather than warned about
    with np.errstate(invalid="ignore"):  # inf - inf in a mean is nan, as it should be
        for columns, mean, percentile in ((complete, np.mean, np.percentile), (partial, np.nanmean, np.nanpercentile)):
            if columns.any():
                stats[0, columns] = mean(block[:, columns], axis=0)
                stats[1:, columns] = percentile(block[:, columns], [25, 75], axis=0)
    return stats[0], stats[1], stats[2]


def match_labels(names: Sequence[str], labels: np.ndarray, previous: dict[str, int], next_id: int = 0) -> np.ndarray:
    """Renumber ``labels`` so that clusters keep the ids of the earlier clusters they share members with.

    What the matching guarantees, whatever the clusters:

    - it is one-to-one: two clusters never get the same id, and each earlier id goes to at most one cluster;
    - a cluster takes an earlier id only if it shares at least one member with that earlier cluster, and the
      assignment maximises the total number of shared members (Hungarian assignment on the overlap counts);
    - a cluster that takes no earlier id gets a new one: ``next_id`` or more, and above every earlier id;
    - noise (``-1``) stays ``-1``.

    So when a cluster splits, the part that shares most with it keeps the id and the other part gets a new one;
    when clusters merge, the merged cluster keeps one of their ids and the other id is not used again.

    Example::

        >>> match_labels(["a", "b", "c"], np.array([0, 0, 1]), {"a": 4, "b": 4, "c": -1}).tolist()
        [4, 4, 5]
    """
    from scipy.optimize import linear_sum_assignment

    new_ids = sorted(set(labels.tolist()) - {-1})
    old_ids = sorted(set(previous.values()) - {-1})
    mapping: dict[int, int] = {}
    if new_ids and old_ids:
        overlap = np.zeros((len(new_ids), len(old_ids)))
        for name, label in zip(names, labels, strict=True):
            old = previous.get(name, -1)
            if label != -1 and old != -1:
                overlap[new_ids.index(label), old_ids.index(old)] += 1
        for r, c in zip(*linear_sum_assignment(-overlap), strict=True):
            if overlap[r, c] > 0:
                mapping[new_ids[r]] = old_ids[c]
    next_id = max(next_id, max(old_ids, default=-1) + 1)
    for cid in new_ids:
        if cid not in mapping:
            mapping[cid] = next_id
            next_id += 1
    return np.array([mapping.get(int(label), -1) for label in labels], dtype=int)


def _hdbscan(embedding: np.ndarray, min_cluster_size: int) -> np.ndarray:
    import hdbscan

    size = max(2, min(min_cluster_size, len(embedding)))
    return hdbscan.HDBSCAN(min_cluster_size=size).fit_predict(embedding).astype(int)


def _kmeans(embedding: np.ndarray, n_clusters: int | None, seed: int) -> tuple[np.ndarray, int]:
    from sklearn.cluster import KMeans

    def fit(k: int) -> np.ndarray:
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embedding)

    if n_clusters is not None:
        if n_clusters >= len(embedding):
            raise ValueError(f"n_clusters={n_clusters} needs more layers than the {len(embedding)} clustered")
        return fit(n_clusters), n_clusters
    distinct = len(np.unique(embedding, axis=0))
    if distinct < 2:
        return np.zeros(len(embedding), dtype=int), 1
    best: tuple[float, np.ndarray, int] | None = None
    for k in range(2, min(10, distinct, len(embedding) - 1) + 1):
        labels = fit(k)
        score = _silhouette(embedding, labels, seed)
        if score is not None and (best is None or score > best[0] + 1e-9):
            best = (score, labels, k)
    return (best[1], best[2]) if best is not None else (fit(2), 2)


def _silhouette(embedding: np.ndarray, labels: np.ndarray, seed: int) -> float | None:
    from sklearn.metrics import silhouette_score

    mask = labels != -1
    k = len(set(labels[mask].tolist()))
    if k < 2 or k >= mask.sum():
        return None
    sample = 5000 if mask.sum() > 5000 else None
    return float(silhouette_score(embedding[mask], labels[mask], sample_size=sample, random_state=seed))


def _order_by_depth(labels: np.ndarray) -> np.ndarray:
    """Number clusters 0, 1, ... in the order of their first member (the shallowest layer).

    Example::

        >>> _order_by_depth(np.array([2, -1, 0, 2])).tolist()
        [0, -1, 1, 0]
    """
    order: dict[int, int] = {}
    for label in labels.tolist():
        if label != -1 and label not in order:
            order[label] = len(order)
    return np.array([order.get(label, -1) for label in labels.tolist()], dtype=int)


def _span(first: int, last: int) -> str:
    """``"3-7"``, or ``"3"`` for one depth."""
    return str(first) if first == last else f"{first}-{last}"


def _layers(count: int) -> str:
    """``"1 layer"``, ``"2 layers"``."""
    return f"{count} layer" if count == 1 else f"{count} layers"


def _json_list(curve: np.ndarray) -> list[float | None]:
    return [json_float(v) for v in curve.tolist()]
