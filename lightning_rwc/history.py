"""The layers x measurements table of RWC values, and reading it back from a run's logs.

:class:`RWCHistory` is the plain data that the callback fills during training and that the clustering reads.
:func:`load_history` builds one from TensorBoard event files, from a CSV file in the callback's column format (as
Lightning's ``CSVLogger`` writes it) or from a JSON file written by :meth:`RWCHistory.save`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from array import array
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lightning_rwc.keys import ALL_KEY, VALUES_SUFFIX, values_folder

FORMAT_VERSION = 1
EVENT_FILE_MARKER = "tfevents"
RECORD_FRAMING = 16
"""Bytes around each event in an event file: its length (8) and two checksums (4 each)."""


class RWCHistory:
    """RWC per layer over time: ``values[i, j]`` is the change of ``layers[i]`` at measurement ``j``.

    Measurements are ordered by ``steps`` (the global step at which each was taken); ``epochs`` holds the epoch of
    each, or ``-1`` where the source did not record it. A layer that has no value at a measurement (it appeared
    later, or the source skipped it) holds ``nan`` there. ``total`` is the ``"_all"`` series (all tracked weights as
    one vector), ``nan`` where unknown.

    With a ``capacity`` the history stays that small however long the run, evenly spread over it: when it is full,
    every second measurement it holds is dropped, and from then on it keeps every second measurement appended
    (every fourth after the next time, and so on). The values it keeps are the measurements as they were; the
    loggers hold every one (:func:`load_history`).

    Args:
        capacity: the most measurements kept (at least 2); ``None`` keeps all.

    Example::

        >>> history = RWCHistory()
        >>> history.append(step=10, epoch=0, values={"fc.weight": 0.5, "_all": 0.5})
        >>> history.append(step=20, epoch=1, values={"fc.weight": 0.25, "conv.weight": 0.1, "_all": 0.2})
        >>> history.layers, history.steps
        (['fc.weight', 'conv.weight'], [10, 20])
        >>> history.values.tolist()
        [[0.5, 0.25], [nan, 0.1]]
    """

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 2):
            raise ValueError(f"capacity must be None or a whole number of measurements >= 2, got {capacity!r}")
        self.capacity = capacity
        self.stride = 1
        """Every how many appended measurements one is kept (doubles each time a bounded history is full)."""
        self.appended = 0
        """Measurements appended so far, kept or not."""
        self._layers: dict[str, int] = {}
        self._steps: list[int] = []
        self._epochs: list[int] = []
        self._columns: list[np.ndarray] = []
        self._total: list[float] = []
        self._matrix: np.ndarray | None = None

    @property
    def layers(self) -> list[str]:
        """Layer (parameter) names, in the order they were first seen."""
        return list(self._layers)

    @property
    def steps(self) -> list[int]:
        """Global step of each measurement."""
        return list(self._steps)

    @property
    def epochs(self) -> list[int]:
        """Epoch of each measurement, ``-1`` where unknown."""
        return list(self._epochs)

    @property
    def values(self) -> np.ndarray:
        """The ``(layers, measurements)`` float64 matrix, ``nan`` where a layer has no value."""
        if self._matrix is None:
            matrix = np.full((len(self._layers), len(self._columns)), np.nan)
            for j, column in enumerate(self._columns):
                matrix[: len(column), j] = column
            self._matrix = matrix
        return self._matrix

    @property
    def total(self) -> np.ndarray:
        """The ``"_all"`` series, one value per measurement."""
        return np.asarray(self._total, dtype=np.float64)

    def __len__(self) -> int:
        """Number of measurements."""
        return len(self._steps)

    def append(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        """Add one measurement: ``{layer: RWC}``, optionally with ``"_all"``; new layers are added as rows.

        A bounded history keeps it only if it falls on its stride (see the class description).
        """
        new = values.keys() - self._layers.keys() - {ALL_KEY}  # one set operation: cheap when nothing is new
        for name in [name for name in values if name in new] if new else ():
            self._layers[name] = len(self._layers)
        self.appended += 1
        if (self.appended - 1) % self.stride:
            return
        column = np.full(len(self._layers), np.nan)
        for name, value in values.items():
            if name != ALL_KEY:
                column[self._layers[name]] = value
        self._steps.append(int(step))
        self._epochs.append(int(epoch))
        self._columns.append(column)
        self._total.append(float(values.get(ALL_KEY, math.nan)))
        self._matrix = None
        if self.capacity is not None and len(self._steps) > self.capacity:
            self._keep(slice(None, None, 2))
            self.stride *= 2

    def _keep(self, which: slice) -> None:
        """Keep only the measurements ``which`` selects."""
        self._steps, self._epochs = self._steps[which], self._epochs[which]
        self._columns, self._total = self._columns[which], self._total[which]
        self._matrix = None

    def curve(self, layer: str) -> np.ndarray:
        """The values of one layer over all measurements."""
        if layer not in self._layers:
            raise KeyError(f"No layer {layer!r} in this history; it has {len(self._layers)} layers: {self.layers[:5]}")
        return self.values[self._layers[layer]]

    @classmethod
    def from_arrays(
        cls,
        layers: Iterable[str],
        steps: Iterable[int],
        values: np.ndarray,
        epochs: Iterable[int] | None = None,
        total: Iterable[float] | None = None,
    ) -> RWCHistory:
        """Build a history from a ``(layers, measurements)`` matrix."""
        layers, steps = list(layers), [int(s) for s in steps]
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(layers), len(steps)):
            raise ValueError(
                f"values must have shape (layers, measurements) = ({len(layers)}, {len(steps)}), got {values.shape}"
            )
        if len(set(layers)) != len(layers):
            raise ValueError("layer names must be unique")
        epochs = [-1] * len(steps) if epochs is None else [int(e) for e in epochs]
        total = [math.nan] * len(steps) if total is None else [float(t) for t in total]
        if len(epochs) != len(steps) or len(total) != len(steps):
            raise ValueError(f"epochs and total need one entry per measurement ({len(steps)})")
        history = cls()
        history.appended = len(steps)
        history._layers = {name: i for i, name in enumerate(layers)}
        history._steps, history._epochs, history._total = steps, epochs, total
        history._columns = [values[:, j].copy() for j in range(len(steps))]
        return history

    def to_dict(self) -> dict[str, Any]:
        """Plain content for strict JSON, as stored in checkpoints and JSON files.

        Non-finite values (``nan``, ``inf``) are written as ``None`` (``null``) and read back as ``nan``, which the
        clustering treats as missing like every non-finite value.
        """
        return {
            "format_version": FORMAT_VERSION,
            "layers": self.layers,
            "steps": self.steps,
            "epochs": self.epochs,
            "values": [[json_float(v) for v in row] for row in self.values],
            "total": [json_float(v) for v in self._total],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RWCHistory:
        """Inverse of :meth:`to_dict`."""
        layers = data.get("layers", [])
        values = np.array(
            [[math.nan if v is None else v for v in row] for row in data.get("values", [])], dtype=np.float64
        ).reshape(len(layers), len(data.get("steps", [])))
        total = [math.nan if v is None else v for v in data.get("total", [])] or None
        return cls.from_arrays(layers, data.get("steps", []), values, data.get("epochs"), total)

    def state(self) -> dict[str, Any]:
        """Everything the history holds, compact (tensors, no lists of floats): what a checkpoint stores.

        Example::

            >>> history = RWCHistory(capacity=4)
            >>> for step in range(1, 8):
            ...     history.append(step, 0, {"fc.weight": step / 10, "_all": step / 10})
            >>> RWCHistory.from_state(history.state()).steps, history.stride
            ([1, 3, 5, 7], 2)
        """
        import torch

        return {
            "format_version": FORMAT_VERSION,
            "layers": self.layers,
            "steps": torch.tensor(self._steps, dtype=torch.int64),
            "epochs": torch.tensor(self._epochs, dtype=torch.int64),
            "values": torch.from_numpy(self.values.copy()),
            "total": torch.tensor(self._total, dtype=torch.float64),
            "capacity": self.capacity,
            "stride": self.stride,
            "appended": self.appended,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RWCHistory:
        """Inverse of :meth:`state`."""
        layers, steps = list(state.get("layers", [])), [int(s) for s in state.get("steps", [])]
        values = np.asarray(state.get("values", np.zeros((0, 0))), dtype=np.float64).reshape(len(layers), len(steps))
        epochs = [int(e) for e in state.get("epochs", [])] or None
        total = [float(t) for t in state.get("total", [])] or None
        history = cls.from_arrays(layers, steps, values, epochs, total)
        history.capacity = state.get("capacity")
        history.stride = int(state.get("stride", 1))
        history.appended = int(state.get("appended", len(steps)))
        return history

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as strict JSON, atomically (a reader never sees a half-written file)."""
        write_json(path, self.to_dict())


def load_history(path: str | os.PathLike, prefix: str = "rwc") -> RWCHistory:
    """Read the RWC history of one run.

    Args:
        path: a run directory: its values file (``{prefix}_values``, written with
            ``RelativeWeightChange(write_values=True)``: see :mod:`lightning_rwc.values_file`) if it has one, else
            its TensorBoard event files (every scalar is read, not a sample) or Lightning ``CSVLogger``'s
            ``metrics.csv``; a values file folder; a CSV file with a ``step`` column and one ``{prefix}/{layer}``
            column per layer (optionally ``epoch`` and ``{prefix}/_all``); or a JSON file written by
            :meth:`RWCHistory.save`.
        prefix: the tag prefix the callback logged under.

    Raises:
        FileNotFoundError: if ``path`` does not exist or holds no event file, CSV or JSON.
        ValueError: if the run holds no ``{prefix}/`` values (the message lists the prefixes it has).

    Warns:
        UserWarning: naming the file and its bytes, where part of an event file or values file cannot be read (a
            damaged record, or one cut off by a crash); the values before it are returned.

    Example::

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "history.json"
        >>> RWCHistory.from_arrays(["fc.weight"], [10, 20], np.array([[0.5, 0.25]])).save(path)
        >>> load_history(path).values.tolist()
        [[0.5, 0.25]]
    """
    from lightning_rwc.values_file import has_values, read_values

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass a run directory, a metrics CSV or a history JSON file")
    for folder in (path / values_folder(prefix), path):
        if has_values(folder):
            return read_values(folder)
    if path.is_file():
        if path.suffix == ".json":
            return _read_json(path)
        if path.suffix == ".csv":
            return _from_series(_read_csv(path), prefix, path)
        if EVENT_FILE_MARKER in path.name:
            return _from_series(_read_tensorboard(path.parent), prefix, path)
        raise FileNotFoundError(f"{path} is not a TensorBoard event file, a .csv or a .json file")
    if any(EVENT_FILE_MARKER in child.name for child in path.iterdir()):
        return _from_series(_read_tensorboard(path), prefix, path)
    if (path / "metrics.csv").is_file():
        return _from_series(_read_csv(path / "metrics.csv"), prefix, path)
    raise FileNotFoundError(
        f"{path} holds no TensorBoard event file and no metrics.csv; pass a run directory such as "
        "lightning_logs/version_0 (find_runs lists the runs below a folder)"
    )


def find_runs(root: str | os.PathLike, exclude_dirs: Iterable[str] = ()) -> list[Path]:
    """Every directory at or below ``root`` that holds a run (see :func:`is_run`), sorted.

    Hidden directories and those named in ``exclude_dirs`` (for example the cluster runs this package writes) are
    not entered.

    Example::

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "version_0").mkdir(); _ = (root / "version_0" / "metrics.csv").write_text("step")
        >>> [run.name for run in find_runs(root)]
        ['version_0']
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    skip = set(exclude_dirs)
    runs = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in skip and not d.startswith("."))
        if is_run(Path(directory), files):
            runs.append(Path(directory))
    return sorted(runs)


def is_run(directory: Path, files: Iterable[str] | None = None) -> bool:
    """Whether ``directory`` holds a run: event files, a ``metrics.csv`` or a values file folder.

    ``files``: the names of the files in ``directory``, where the caller has them.
    """
    from lightning_rwc.values_file import has_values

    files = [p.name for p in directory.iterdir() if p.is_file()] if files is None else files
    if any(EVENT_FILE_MARKER in name or name == "metrics.csv" for name in files):
        return True
    return any(has_values(child) for child in directory.glob(f"*{VALUES_SUFFIX}"))


def write_json(path: str | os.PathLike, data: Any, indent: int | None = None) -> None:
    """Write ``data`` as strict JSON (no ``NaN`` or ``Infinity``: see :func:`json_float`), atomically.

    Raises:
        ValueError: if ``data`` holds a non-finite float (nothing is written).

    Example::

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "data.json"
        >>> write_json(path, {"values": [json_float(0.5), json_float(float("inf"))]})
        >>> path.read_text()
        '{"values": [0.5, null]}'
    """
    write_atomic(path, json.dumps(data, allow_nan=False, indent=indent))


def json_float(value: float) -> float | None:
    """``value`` as a float, or ``None`` (``null`` in JSON) if it is ``nan`` or infinite.

    Example::

        >>> json_float(0.25), json_float(float("nan")), json_float(float("-inf"))
        (0.25, None, None)
    """
    return float(value) if math.isfinite(value) else None


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    Example::

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "note.txt"
        >>> write_atomic(path, "done")
        >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
        ('done', ['note.txt'])
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone once replaced; a failed write leaves nothing behind


class Series:
    """Scalars as read, per tag in the order tags first appear: steps and values in arrays (16 bytes a value)."""

    def __init__(self) -> None:
        self.columns: dict[str, tuple[array, array]] = {}

    def add(self, tag: str, step: int, value: float) -> None:
        """One value of ``tag`` at ``step``."""
        column = self.columns.get(tag)
        if column is None:
            column = self.columns[tag] = (array("q"), array("d"))
        column[0].append(step)
        column[1].append(value)

    def at(self, tag: str, steps: np.ndarray) -> np.ndarray:
        """The values of ``tag`` at ``steps`` (sorted), ``nan`` where it has none; the last one written at a step."""
        out = np.full(steps.size, np.nan)
        if tag in self.columns:
            written_steps, written_values = self.columns[tag]
            written = np.frombuffer(written_steps, dtype=np.int64)
            last = last_at_each_step(written)
            out[np.searchsorted(steps, written[last])] = np.frombuffer(written_values)[last]
        return out

    def steps(self, tags: Iterable[str]) -> np.ndarray:
        """Every step at which one of ``tags`` has a value, sorted."""
        return np.unique(np.concatenate([np.frombuffer(self.columns[tag][0], dtype=np.int64) for tag in tags]))


def last_at_each_step(steps: np.ndarray) -> np.ndarray:
    """Where the last entry at each step is in ``steps`` (a later one at a step replaces an earlier one), by step.

    Example::

        >>> last_at_each_step(np.array([5, 3, 5, 7])).tolist()
        [1, 2, 3]
    """
    _, from_end = np.unique(steps[::-1], return_index=True)
    return steps.size - 1 - from_end


def _from_series(series: Series, prefix: str, source: Path) -> RWCHistory:
    """Align the ``{prefix}/`` tags on the union of their steps, layers in the order the tags first appear."""
    head = f"{prefix}/"
    tags = [tag for tag in series.columns if tag.startswith(head)]
    if not tags:
        prefixes = sorted({tag.split("/", 1)[0] for tag in series.columns if "/" in tag})
        raise ValueError(
            f"{source} has no '{head}' values. Tags with a prefix found there: {prefixes or 'none'}. "
            f"Was the run trained with RelativeWeightChange (log_prefix={prefix!r})? Otherwise pass --prefix."
        )
    steps = series.steps(tags)
    layer_tags = [tag for tag in tags if tag != head + ALL_KEY]
    values = np.array([series.at(tag, steps) for tag in layer_tags]).reshape(len(layer_tags), steps.size)
    epochs = np.nan_to_num(series.at("epoch", steps), nan=-1)
    total = series.at(head + ALL_KEY, steps)
    return RWCHistory.from_arrays([tag[len(head) :] for tag in layer_tags], steps, values, epochs, total)


def _read_tensorboard(run_dir: Path) -> Series:
    """Every scalar in the run's event files, oldest file first; warns about bytes of a file that cannot be read.

    A later value at the same step (a resumed run) replaces the earlier one.
    """
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.util import tensor_util

    series = Series()
    for path in sorted(p for p in run_dir.iterdir() if EVENT_FILE_MARKER in p.name and p.is_file()):
        read = 0
        for record in RawEventFileLoader(str(path)).Load():  # stops at the first damaged or cut-off record
            read += len(record) + RECORD_FRAMING
            event = Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    series.add(value.tag, event.step, value.simple_value)
                elif value.metadata.plugin_data.plugin_name == "scalars":
                    series.add(value.tag, event.step, tensor_util.make_ndarray(value.tensor).item())
        size = path.stat().st_size
        if read < size:
            warnings.warn(
                f"{path}: bytes {read} to {size} could not be read (a damaged or cut-off record, for example "
                "after a crash); values written there are missing",
                stacklevel=3,
            )
    return series


def _read_json(path: Path) -> RWCHistory:
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as err:  # not JSON, not text
        raise ValueError(f"{path} is not a readable JSON file: {err}") from err
    try:
        return RWCHistory.from_dict(data)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a history written by RWCHistory.save: {err}") from err


def _read_csv(path: Path) -> Series:
    """The columns of a CSV file in name order with numbers compared as numbers (``h.2`` before ``h.10``).

    Lightning's ``CSVLogger`` sorts its columns, so the model's order is lost; this is the closest to it.
    """
    try:
        series = _parse_csv(path)
    except (csv.Error, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable CSV file: {err}") from err
    series.columns = {key: series.columns[key] for key in sorted(series.columns, key=_natural_key)}
    return series


def _natural_key(name: str) -> list[str | int]:
    """``name`` cut into text and numbers, so that numbers compare as numbers.

    Example::

        >>> sorted(["h.10.w", "h.2.w", "fc"], key=_natural_key)
        ['fc', 'h.2.w', 'h.10.w']
    """
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]


def _parse_csv(path: Path) -> Series:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise ValueError(f"{path} has no 'step' column; expected the CSVLogger's metrics.csv format")
        series = Series()
        for line, row in enumerate(reader, start=2):
            try:
                step = int(float(row["step"]))
            except (TypeError, ValueError, OverflowError) as err:
                raise ValueError(f"{path}, line {line}: step {row['step']!r} is not a number") from err
            if not -(2**63) <= step < 2**63:
                raise ValueError(f"{path}, line {line}: step {row['step']!r} is out of range")
            for key, cell in row.items():
                if key not in (None, "step") and cell not in (None, ""):
                    try:
                        series.add(key, step, float(cell))
                    except ValueError as err:
                        raise ValueError(f"{path}, line {line}: {key} = {cell!r} is not a number") from err
    return series
