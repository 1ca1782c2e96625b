"""What the RWC dashboard shows of one run, read once per change and sent compactly to the page.

A run's values come from its values file where it has one (exact, in the model's order, read in one NumPy call per
segment), else from its event files, read by :class:`~lightning_rwc.runs.EventFiles` (every value, the model's
order, only what was appended since the last reading). Every file is opened through an ``opener``: the plugin's
reads only regular files inside the run's folder, through no link, of a bounded size
(:func:`~lightning_rwc.files.open_inside`). The page receives one binary answer: a JSON header (layers, blocks,
steps, epochs, clusters, decisions, warnings) and the layers x columns matrix as float32, with the columns reduced
to at most what a screen shows.
"""

from __future__ import annotations

import json
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lightning_rwc.blocks import find_blocks
from lightning_rwc.decide.health import first_flags
from lightning_rwc.history import RWCHistory
from lightning_rwc.keys import CLUSTER_JSON, DEFAULT_PREFIX, freeze_prefix, values_folder
from lightning_rwc.runs import EVENT_FILE_MARKER, EventFiles, Opener, Series, history_from_series, natural_key
from lightning_rwc.tensorboard import bin_means
from lightning_rwc.values_file import has_values, read_values, segments_fingerprint


@dataclass
class RunData:
    """One run as the dashboard shows it.

    Attributes:
        history: the layers x measurements values (``None`` when the run holds none).
        source: ``"values file"`` or ``"event files"``.
        warnings: what the readers warned about (damaged or cut-off files), or why there is nothing to show.
        clusters: the run's latest clustering (``rwc_clusters.json``), as written, or ``None``.
        decisions: freezing decisions and health flags: ``{"kind", "name", "step"}`` each.
    """

    history: RWCHistory | None
    source: str
    warnings: list[str] = field(default_factory=list)
    clusters: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)


def from_values_file(run_dir: Path, prefix: str = DEFAULT_PREFIX, opener: Opener | None = None) -> RunData:
    """The run's values file, with the warnings its reader gives."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            history = read_values(run_dir / values_folder(prefix), opener)
        except (OSError, ValueError) as err:
            return RunData(None, "values file", [str(err), *(str(w.message) for w in caught)])
    return RunData(history, "values file", [str(w.message) for w in caught])


def from_event_files(files: EventFiles, prefix: str = DEFAULT_PREFIX) -> RunData:
    """The run's event files as ``files`` has read them (model order, the same warnings as ``load_history``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            history = history_from_series(files.series, prefix, files.run_dir.name)
        except ValueError as err:
            return RunData(None, "event files", [*files.problems, str(err)])
    found = RunData(history, "event files", [*files.problems, *(str(w.message) for w in caught)])
    head = f"{freeze_prefix(prefix)}/"
    columns = files.series.columns.items()
    freezes = {tag: list(zip(*column, strict=True)) for tag, column in columns if tag.startswith(head)}
    found.decisions = freeze_decisions(freezes, prefix)
    return found


def from_scalars(scalars: dict[str, list[tuple[int, float]]], prefix: str = DEFAULT_PREFIX) -> RunData:
    """The run's scalars as TensorBoard's data provider gives them (``{tag: [(step, value), ...]}``, sampled).

    For a run without a folder the tab can read (TensorBoard started without ``--logdir``). The provider does not
    keep the order the tags were written in: the layers come in name order (numbers compared as numbers).
    """
    series = Series()
    for tag in sorted(scalars, key=natural_key):
        for step, value in scalars[tag]:
            series.add(tag, step, value)
    try:
        history = history_from_series(series, prefix, "this run")
    except ValueError as err:
        return RunData(None, "event files", [str(err)])
    note = "TensorBoard's data provider gave the values (sampled for long runs); layers in name order."
    return RunData(history, "event files", [note], decisions=freeze_decisions(scalars, prefix))


def freeze_decisions(scalars: dict[str, list[tuple[int, float]]], prefix: str = DEFAULT_PREFIX) -> list[dict]:
    """Each block frozen (or suggested) by ``LayerFreezer`` at the step of its decision, from ``{tag: [(step, v)]}``."""
    head = f"{freeze_prefix(prefix)}/"
    return [
        {"kind": "frozen", "name": tag[len(head) :], "step": int(step)}
        for tag, points in scalars.items()
        if tag.startswith(head) and tag != f"{head}frozen_blocks"
        for step, value in points
        if value == 1.0
    ]


def health_flags(history: RWCHistory) -> list[dict[str, Any]]:
    """The dead and runaway layers of a history, each at the first measurement that flagged it."""
    steps = history.steps
    return [
        {"kind": kind, "name": history.layers[i], "step": steps[first[i]]}
        for kind, first in first_flags(history.values, history.total).items()
        for i in np.flatnonzero(first >= 0)
    ]


def read_clusters(run_dir: Path | None, opener: Opener | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The cluster JSON beside the run, as the page uses it, and why it could not be read (``None``: it was).

    Example::

        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> _ = (run / CLUSTER_JSON).write_text('{"labels": {"fc": NaN}, "clusters": [], "steps": []}')
        >>> clusters, problem = read_clusters(run)
        >>> clusters, problem.split("/")[-1]
        (None, 'rwc_clusters.json could not be read (NaN is not JSON); run the clustering again')
    """
    path = None if run_dir is None else run_dir / CLUSTER_JSON
    if path is None or not (path.exists() or path.is_symlink()):
        return None, None
    try:
        with (opener or _open_binary)(path) as handle:
            data = json.loads(handle.read(), parse_constant=_no_constant)
        found = {"labels": dict(data["labels"]), "clusters": list(data["clusters"]), "steps": list(data["steps"])}
        _check_clusters(found)
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = str(err) if isinstance(err, OSError) else f"{path} could not be read ({err})"
        return None, f"{reason}; run the clustering again"
    return found, None


def _check_clusters(found: dict[str, Any]) -> None:
    """Raise ``TypeError`` unless ``found`` has the types the page draws from (as ``ClusterResult.save`` writes)."""
    numbers = (int, float, type(None))
    layers = all(isinstance(k, str) and type(v) is int for k, v in found["labels"].items())
    steps = all(type(step) is int for step in found["steps"])
    clusters = all(
        isinstance(c, dict)
        and type(c.get("cluster_id")) is int
        and isinstance(c.get("members"), list)
        and all(isinstance(c.get(k), list) and all(isinstance(v, numbers) for v in c[k]) for k in ("lower", "upper"))
        for c in found["clusters"]
    )
    if not (layers and steps and clusters):
        raise TypeError("its labels, steps or clusters are not what the clustering writes")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _open_binary(path: Path) -> BinaryIO:
    return open(path, "rb")


def fingerprint(run_dir: Path | None, prefix: str = DEFAULT_PREFIX) -> tuple:
    """What changes when the run's values file, event files or cluster file change (sizes, modification times)."""
    if run_dir is None:
        return ()
    parts = [segments_fingerprint(run_dir / values_folder(prefix))]
    for path in sorted(p for p in run_dir.iterdir() if EVENT_FILE_MARKER in p.name or p.name == CLUSTER_JSON):
        stat = path.lstat()  # a link's own, never what it points to
        parts.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(parts)


def has_values_file(run_dir: Path | None, prefix: str = DEFAULT_PREFIX) -> bool:
    """Whether the run has a values file (then the dashboard reads it)."""
    return run_dir is not None and has_values(run_dir / values_folder(prefix))


def binned(values: np.ndarray, bins: int) -> np.ndarray:
    """``values`` in ``bins`` columns: the geometric mean of each bin's positive values, 0 where it holds only zeros.

    Example::

        >>> binned(np.array([[0.1, 0.001, 0.0, 0.0, np.nan, np.nan]]), 3).tolist()
        [[0.01, 0.0, nan]]
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(values > 0, np.log10(values), np.nan)
    means = np.power(10.0, bin_means(logs, bins, axis=1))
    zeros = bin_means(np.where(values == 0, 1.0, np.nan), bins, axis=1) == 1
    return np.where(np.isnan(means) & zeros, 0.0, means)


MAX_CELLS = 1_900_000
"""The most values one answer holds (7.6 MB of float32): fewer columns for runs with very many layers."""


def columns_sent(history: RWCHistory | None, asked: int) -> int:
    """How many columns the answer for ``asked`` columns holds: what the cached answers are keyed by.

    Example::

        >>> history = RWCHistory.from_arrays(["a", "b"], range(1, 51), np.ones((2, 50)))
        >>> columns_sent(history, 20), columns_sent(history, 4000), columns_sent(None, 20)
        (20, 50, 0)
    """
    if history is None or not len(history):
        return 0
    return max(1, min(asked, MAX_CELLS // max(len(history.layers), 1), len(history)))


def encode(data: RunData, max_columns: int) -> bytes:
    """The binary answer for the page: header length (4 bytes), a JSON header, then float32 values.

    The values are ``(layers, columns)``: each column the mean (of ``log10``) of adjacent measurements when there
    are more than ``max_columns`` (or than :data:`MAX_CELLS` allows); ``nan`` where a layer has no value. The header
    says, per column, the first and last step it covers and the epoch of its first measurement.
    """
    header: dict[str, Any] = {"source": data.source, "warnings": list(data.warnings), "decisions": data.decisions}
    header["clusters"] = data.clusters
    history = data.history
    matrix = np.zeros((0, 0), dtype=np.float32)
    if history is not None and len(history):
        values = history.values
        starts = np.linspace(0, values.shape[1], columns_sent(history, max_columns) + 1).astype(int)
        matrix = values if starts.size - 1 == values.shape[1] else binned(values, starts.size - 1)
        steps, epochs = np.asarray(history.steps), np.asarray(history.epochs)
        blocks = find_blocks(history.layers)
        header["intervals"], uneven = _intervals(history, starts)
        header["warnings"] += [uneven] if uneven else []
        header |= {
            "layers": history.layers,
            "blocks": [blocks.of(layer) or "" for layer in history.layers],
            "first_steps": steps[starts[:-1]].tolist(),
            "last_steps": steps[starts[1:] - 1].tolist(),
            "epochs": epochs[starts[:-1]].tolist(),
            "measurements": len(history),
            "health": health_flags(history),
        }
    header["shape"] = list(matrix.shape)
    text = json.dumps(header, allow_nan=False).encode()
    text += b" " * (-(len(text) + 4) % 4)  # the values start on a 4-byte boundary
    return struct.pack("<I", len(text)) + text + matrix.astype("<f4").tobytes()


def _intervals(history: RWCHistory, starts: np.ndarray) -> tuple[list[float] | None, str | None]:
    """Per column, the mean optimizer steps its measurements cover; a warning where the run's intervals differ."""
    intervals = history.intervals()
    if intervals is None:
        return None, None
    means = np.add.reduceat(intervals, starts[:-1]) / np.diff(starts)
    distinct = sorted(set(intervals[1:].tolist()))  # the first one's is counted from step 0
    if len(distinct) < 2:
        return means.tolist(), None
    listed = ", ".join(map(str, distinct[:4])) + (", ..." if len(distinct) > 4 else "")
    return means.tolist(), (
        f"Measurements cover different numbers of optimizer steps ({listed}): RWC grows with the steps it covers. "
        "Per step divides each value by its interval."
    )
