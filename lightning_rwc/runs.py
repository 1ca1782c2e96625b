"""Reading a run's RWC values back: from its values file, TensorBoard event files, a CSV log or a JSON file.

:func:`load_history` turns any of them into an :class:`~lightning_rwc.history.RWCHistory`; :func:`find_runs` lists
the runs below a folder. Every reader follows one rule for a step written twice (a resumed run): the value written
last wins (:func:`~lightning_rwc.history.last_at_each_step`).
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lightning_rwc.history import RWCHistory, last_at_each_step
from lightning_rwc.keys import ALL_KEY, VALUES_SUFFIX, values_folder
from lightning_rwc.values_file import has_values, read_values

EVENT_FILE_MARKER = "tfevents"
RECORD_FRAMING = 16
"""Bytes around each event in an event file: its length (8) and two checksums (4 each)."""


def load_history(path: str | os.PathLike, prefix: str = "rwc") -> RWCHistory:
    """Read the RWC history of one run.

    Args:
        path: a run directory: its values file (``{prefix}_values``, written by the
            :class:`~lightning_rwc.parts.ValuesFile` part: see :mod:`lightning_rwc.values_file`) if it has one, else
            its TensorBoard event files (every scalar is read, not a sample) or Lightning ``CSVLogger``'s
            ``metrics.csv``; a values file folder; a CSV file with a ``step`` column and one ``{prefix}/{layer}``
            column per layer (optionally ``epoch`` and ``{prefix}/_all``); or a JSON file written by
            :meth:`RWCHistory.save`.
        prefix: the tag prefix the callback logged under.

    Raises:
        FileNotFoundError: if ``path`` does not exist or holds no event file, CSV or JSON.
        ValueError: if the run holds no ``{prefix}/`` values (the message lists the prefixes it has).

    The epoch of each measurement is the one written with its values (the callback logs ``epoch`` with them), else
    the latest epoch logged at or before its step (never one from a later step), else ``-1``.

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
            return history_from_series(_read_csv(path), prefix, path)
        if EVENT_FILE_MARKER in path.name:
            return history_from_series(read_tensorboard(path.parent), prefix, path)
        raise FileNotFoundError(f"{path} is not a TensorBoard event file, a .csv or a .json file")
    if any(EVENT_FILE_MARKER in child.name for child in path.iterdir()):
        return history_from_series(read_tensorboard(path), prefix, path)
    if (path / "metrics.csv").is_file():
        return history_from_series(_read_csv(path / "metrics.csv"), prefix, path)
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
    files = [p.name for p in directory.iterdir() if p.is_file()] if files is None else files
    if any(EVENT_FILE_MARKER in name or name == "metrics.csv" for name in files):
        return True
    return any(has_values(child) for child in directory.glob(f"*{VALUES_SUFFIX}"))


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

    def at(self, tag: str, steps: np.ndarray, latest: bool = False) -> np.ndarray:
        """The values of ``tag`` at ``steps`` (sorted), the last one written at a step; ``nan`` where it has none.

        With ``latest``, where ``tag`` has no value at a step, the value at the latest step before it (as for the
        epoch, which the loggers write at other steps than the measurements'); never one from a later step.

        Example::

            >>> series = Series()
            >>> for step, epoch in ((4, 0), (9, 1), (12, 1)):
            ...     series.add("epoch", step, epoch)
            >>> steps = np.array([3, 4, 10])
            >>> series.at("epoch", steps).tolist(), series.at("epoch", steps, latest=True).tolist()
            ([nan, 0.0, nan], [nan, 0.0, 1.0])
        """
        out = np.full(steps.size, np.nan)
        if tag not in self.columns:
            return out
        written_steps, written_values = self.columns[tag]
        last = last_at_each_step(np.frombuffer(written_steps, dtype=np.int64))  # sorted by step
        written, values = np.frombuffer(written_steps, dtype=np.int64)[last], np.frombuffer(written_values)[last]
        where = np.searchsorted(written, steps, side="right") - 1  # the latest written step at or before each step
        found = where >= 0
        if not latest:
            found &= written[np.maximum(where, 0)] == steps
        out[found] = values[where[found]]
        return out

    def add_record(self, step: int, items: list[tuple[str, float]]) -> None:
        """Values written together (one event, one CSV row) at ``step``.

        An ``epoch`` among them is the epoch of those values: it is also kept under :func:`epoch_tag` of each tag
        prefix in the record, since other writers may log another epoch at the same step (Lightning logs, at the
        last step of an epoch, the epoch that starts next).
        """
        epoch = None
        for tag, value in items:
            self.add(tag, step, value)
            if tag == "epoch":
                epoch = value
        if epoch is not None and len(items) > 1:
            for head in {tag[: tag.find("/")] for tag, _ in items if "/" in tag}:
                self.add(epoch_tag(head), step, epoch)

    def steps(self, tags: Iterable[str]) -> np.ndarray:
        """Every step at which one of ``tags`` has a value, sorted."""
        return np.unique(np.concatenate([np.frombuffer(self.columns[tag][0], dtype=np.int64) for tag in tags]))


def epoch_tag(prefix: str) -> str:
    """The key under which a :class:`Series` keeps the epochs written together with the ``prefix`` tags."""
    return f"\x00epoch of {prefix}"


def history_from_series(series: Series, prefix: str, source: Path | str) -> RWCHistory:
    """Align the ``{prefix}/`` tags on the union of their steps, layers in the order the tags first appear.

    Raises:
        ValueError: naming ``source`` and the prefixes it has, if it has no ``{prefix}/`` tag.
    """
    head = f"{prefix}/"
    tags = [tag for tag in series.columns if tag.startswith(head)]
    if not tags:
        prefixes = sorted({tag.split("/", 1)[0] for tag in series.columns if "/" in tag})
        raise ValueError(
            f"{source} has no '{head}' values (tags with a prefix found there: {prefixes or 'none'}): the run took "
            f"no measurement (it ended before the first one, or had no RelativeWeightChange), or logged them under "
            f"another prefix (pass --prefix)."
        )
    steps = series.steps(tags)
    layer_tags = [tag for tag in tags if tag != head + ALL_KEY]
    values = np.array([series.at(tag, steps) for tag in layer_tags]).reshape(len(layer_tags), steps.size)
    # The epoch written with the values, else the latest epoch logged at or before their step (never a later one).
    epochs = series.at(epoch_tag(prefix), steps)
    epochs = np.nan_to_num(np.where(np.isnan(epochs), series.at("epoch", steps, latest=True), epochs), nan=-1)
    total = series.at(head + ALL_KEY, steps)
    return RWCHistory.from_arrays([tag[len(head) :] for tag in layer_tags], steps, values, epochs, total)


def read_tensorboard(run_dir: Path) -> Series:
    """Every scalar in the run's event files, oldest file first; warns about bytes of a file that cannot be read.

    A later value at the same step (a resumed run) replaces the earlier one.
    """
    files = EventFiles(run_dir)
    files.update()
    for problem in files.problems:
        warnings.warn(problem, stacklevel=3)
    return files.series


Opener = Callable[[Path], BinaryIO]


class EventFiles:
    """The scalars of a run's TensorBoard event files, read again only where they grew.

    Records are read one at a time, each checked against its checksums and against the bytes the file holds before
    anything is allocated for it; reading a file stops at its first damaged or cut-off record. :meth:`update` reads
    what was appended since the last call; if a file other than the newest grew, shrank or went away, it reads
    everything again.

    Args:
        run_dir: the run's folder.
        opener: opens a file for reading in binary (``open`` by default; a server passes
            :func:`~lightning_rwc.files.open_inside`).

    Attributes:
        series: every scalar read so far.
    """

    def __init__(self, run_dir: str | os.PathLike, opener: Opener | None = None) -> None:
        self.run_dir = Path(run_dir)
        self._open = opener or _open_binary
        self.series = Series()
        self._read: dict[str, tuple[int, int]] = {}  # file name -> (bytes read, its size then)
        self._problems: dict[str, str] = {}

    @property
    def problems(self) -> list[str]:
        """What could not be read, one line per file, as of the last :meth:`update`."""
        return list(self._problems.values())

    @property
    def nbytes(self) -> int:
        """The memory the values read take."""
        return sum(16 * len(steps) for steps, _ in self.series.columns.values())

    def update(self) -> bool:
        """Read what the files gained since the last call; returns whether anything new was read."""
        paths = sorted(p for p in self.run_dir.iterdir() if EVENT_FILE_MARKER in p.name)
        sizes = {p.name: _size(p) for p in paths}
        known = list(self._read)
        grown = [name for name in known if sizes.get(name) != self._read[name][1]]
        if [p.name for p in paths][: len(known)] != known or any(name != known[-1] for name in grown):
            self.series, self._read, self._problems = Series(), {}, {}  # not only appended to: read all again
        before = dict(self._read)
        for path in paths:
            if path.name in self._read and sizes[path.name] == self._read[path.name][1]:
                continue
            problem = self._read_file(path)
            self._problems.pop(path.name, None)
            if problem:
                self._problems[path.name] = problem
        return self._read != before

    def _read_file(self, path: Path) -> str | None:
        from tensorboard.compat.proto.event_pb2 import Event

        from lightning_rwc.tensorboard import masked_crc32c

        offset = self._read.get(path.name, (0, 0))[0]
        try:
            handle = self._open(path)
        except OSError as err:
            self._read[path.name] = (0, _size(path))
            return f"{err} (skipped)" if str(path) in str(err) else f"{path}: {err} (skipped)"
        skipped, damage = 0, None
        with handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(offset)
            while offset < size:
                head = handle.read(12)
                if len(head) < 12 or masked_crc32c(head[:8]) != int.from_bytes(head[8:], "little"):
                    damage = "a damaged or cut-off record header"
                    break
                length = int.from_bytes(head[:8], "little")
                if length > size - offset - RECORD_FRAMING:  # checked before reading: a header may claim anything
                    damage = f"a record of {length} bytes where the file holds {size - offset - RECORD_FRAMING}"
                    break
                body = handle.read(length + 4)
                if len(body) < length + 4 or masked_crc32c(body[:-4]) != int.from_bytes(body[-4:], "little"):
                    damage = "a damaged or cut-off record"
                    break
                try:
                    event = Event.FromString(body[:-4])
                except Exception:  # noqa: BLE001 - protobuf's DecodeError, or any other failure to parse
                    damage = "a record that is not an event"
                    break
                items, unread = _scalars(event)
                skipped += unread
                self.series.add_record(event.step, items)
                offset += length + RECORD_FRAMING
        self._read[path.name] = (offset, size)
        notes = []
        if damage is not None:
            notes.append(
                f"{path}: bytes {offset} to {size} could not be read ({damage}, for example after a crash); values "
                "written there are missing"
            )
        if skipped:
            notes.append(f"{path}: {skipped} values logged as scalars hold no number; skipped")
        return "; ".join(notes) or None


def _open_binary(path: Path) -> BinaryIO:
    return open(path, "rb")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _scalars(event: Any) -> tuple[list[tuple[str, float]], int]:
    """The numbers of an event's scalar summaries, and how many values claimed to be scalars but hold none."""
    from tensorboard.util import tensor_util

    items, unread = [], 0
    for value in event.summary.value:
        if value.HasField("simple_value"):
            items.append((value.tag, value.simple_value))
        elif value.metadata.plugin_data.plugin_name == "scalars":
            try:
                number = tensor_util.make_ndarray(value.tensor)
            except Exception:  # noqa: BLE001 - a tensor TensorBoard's own converter cannot read
                number = None
            if number is not None and number.size == 1 and number.dtype.kind in "biuf":
                items.append((value.tag, float(number.item())))
            else:
                unread += 1
    return items, unread


def _read_json(path: Path) -> RWCHistory:
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as err:  # not JSON, not text
        raise ValueError(f"{path} is not a readable JSON file: {err}") from err
    try:
        history = RWCHistory()
        history.load_state_dict(data)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a history written by RWCHistory.save: {err}") from err
    return history


def _read_csv(path: Path) -> Series:
    """The columns of a CSV file in name order with numbers compared as numbers (``h.2`` before ``h.10``).

    Lightning's ``CSVLogger`` sorts its columns, so the model's order is lost; this is the closest to it.
    """
    try:
        series = _parse_csv(path)
    except (csv.Error, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable CSV file: {err}") from err
    series.columns = {key: series.columns[key] for key in sorted(series.columns, key=natural_key)}
    return series


def natural_key(name: str) -> list[str | int]:
    """``name`` cut into text and numbers, so that numbers compare as numbers.

    Example::

        >>> sorted(["h.10.w", "h.2.w", "fc"], key=natural_key)
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
            items = []
            for key, cell in row.items():
                if key not in (None, "step") and cell not in (None, ""):
                    try:
                        items.append((key, float(cell)))
                    except ValueError as err:
                        raise ValueError(f"{path}, line {line}: {key} = {cell!r} is not a number") from err
            series.add_record(step, items)
    return series
