"""Every measurement of a run in compact binary files beside its logs: appended as it goes, read back at once.

Reading event files back means decoding every value of every event; these files are read with one NumPy call per
segment (the benchmarks in ``benchmarks/long_runs.py`` compare the two). The folder (``{log_prefix}_values`` in the
log directory) holds segments numbered in the order they were started (one per process, and a new one when the
measured layers change). Segment ``000000`` is ``000000.json``, naming its layers, and ``000000.bin``, one row per
measurement: ``step`` (int64), ``epoch`` (int64), ``_all`` (float32), then one float32 per layer, little-endian. A
row cut off by a crash is left out with a warning; a later row at the same step replaces an earlier one, as
TensorBoard does with a resumed run.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lightning_rwc.files import write_json
from lightning_rwc.history import RWCHistory, last_at_each_step
from lightning_rwc.keys import ALL_KEY

SEGMENT_FORMAT = 1
STEP_EPOCH = struct.Struct("<qq")
"""The start of a row: step and epoch; ``_all`` and the layers' values follow as float32."""


def row_type(layers: int) -> np.dtype:
    """The type of one row of a segment with ``layers`` layers (packed: ``20 + 4 * layers`` bytes)."""
    return np.dtype([("step", "<i8"), ("epoch", "<i8"), ("total", "<f4"), ("values", "<f4", (layers,))])


class ValuesWriter:
    """Appends measurements to new segments of ``directory`` (created if missing); earlier segments stay.

    Example::

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "rwc_values"
        >>> writer = ValuesWriter(folder)
        >>> writer.append(10, 0, {"fc.weight": 0.5, "_all": 0.5})
        >>> writer.close()
        >>> read_values(folder).values.tolist()
        [[0.5]]
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._next = max((int(p.stem) for p in _segments(self.directory)), default=-1) + 1
        self._keys: list[str] | None = None  # the keys of the measurements of the open segment, in their order
        self._order = np.zeros(1, dtype=np.intp)  # where _all and each layer's value are among them (nan after them)
        self._handle: BinaryIO | None = None

    def append(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        """One measurement: ``{layer: RWC}`` and ``"_all"``, as the tracker gives them."""
        keys = list(values)
        if keys != self._keys:
            self._start(keys)
        row = np.fromiter(itertools.chain(values.values(), (math.nan,)), dtype=np.float64, count=len(keys) + 1)
        with np.errstate(over="ignore"):  # beyond float32: inf, as in TensorBoard
            row = row[self._order].astype(np.float32)
        self._handle.write(STEP_EPOCH.pack(step, epoch) + row.tobytes())

    def flush(self) -> None:
        """Hand the rows written so far to the operating system (they then outlive a killed process)."""
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        """Flush and close the segment; a later :meth:`append` starts a new one."""
        if self._handle is not None:
            self._handle.close()
        self._handle, self._keys = None, None

    def _start(self, keys: list[str]) -> None:
        self.close()
        stem = f"{self._next:06d}"
        self._next += 1
        layers = [key for key in keys if key != ALL_KEY]
        write_json(self.directory / f"{stem}.json", {"format": SEGMENT_FORMAT, "layers": layers})
        self._handle = open(self.directory / f"{stem}.bin", "ab")  # noqa: SIM115 (open across calls: see close)
        total = keys.index(ALL_KEY) if ALL_KEY in keys else len(keys)
        self._keys = keys
        self._order = np.array([total, *(i for i, key in enumerate(keys) if key != ALL_KEY)], dtype=np.intp)


def has_values(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds values file segments."""
    directory = Path(directory)
    return directory.is_dir() and any(True for _ in _segments(directory))


def read_values(directory: str | os.PathLike, opener: Callable[[Path], BinaryIO] | None = None) -> RWCHistory:
    """Every measurement in the segments of ``directory``, layers in the order they were first measured.

    Args:
        directory: the values file folder.
        opener: opens a file for reading in binary (``open`` by default; a server passes
            :func:`~lightning_rwc.files.open_inside`).

    Raises:
        FileNotFoundError: if ``directory`` holds no segment.
        ValueError: naming the file, if a segment's layer list cannot be read.

    Warns:
        UserWarning: naming the file and its bytes, where a segment ends in a row cut off (by a crash); naming the
            file and the reason, where ``opener`` refuses one (the segment is left out).
    """
    directory = Path(directory)
    opener = opener or _open_binary
    segments = sorted(_segments(directory), key=lambda p: int(p.stem))
    if not segments:
        raise FileNotFoundError(f"{directory} holds no values file segment (NNNNNN.json with NNNNNN.bin)")
    position: dict[str, int] = {}  # layer -> row of the history
    parts = []
    for meta in segments:
        try:
            layers = _layers_of(meta, opener)
            rows = _rows_of(meta.with_suffix(".bin"), row_type(len(layers)), opener)
        except OSError as err:
            warnings.warn(f"{err}: the measurements of this segment are missing", stacklevel=2)
            continue
        parts.append((np.array([position.setdefault(name, len(position)) for name in layers], dtype=np.intp), rows))
    if not parts:
        raise FileNotFoundError(f"{directory} holds no values file segment that could be read")
    steps = np.unique(np.concatenate([rows["step"] for _, rows in parts]))
    values = np.full((len(position), steps.size), np.nan)
    epochs, total = np.full(steps.size, -1), np.full(steps.size, np.nan)
    for index, rows in parts:  # in the order written: a later row at a step replaces an earlier one
        rows = rows[last_at_each_step(rows["step"])]
        columns = np.searchsorted(steps, rows["step"])
        values[np.ix_(index, columns)] = rows["values"].T
        epochs[columns], total[columns] = rows["epoch"], rows["total"]
    return RWCHistory.from_arrays(list(position), steps, values, epochs, total)


def segments_fingerprint(directory: str | os.PathLike) -> tuple:
    """The name, size and modification time of every file of the values file: what changes when rows are added."""
    directory = Path(directory)
    if not directory.is_dir():
        return ()
    stats = ((p.name, p.lstat()) for p in directory.iterdir())  # a link's own, never what it points to
    return tuple(sorted((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats))


def _segments(directory: Path) -> list[Path]:
    return [p for p in directory.glob("*.json") if p.stem.isdigit()]


def _open_binary(path: Path) -> BinaryIO:
    return open(path, "rb")


def _layers_of(meta: Path, opener: Callable[[Path], BinaryIO]) -> list[str]:
    with opener(meta) as handle:  # an OSError here: the file refused or missing, said by the caller
        text = handle.read()
    try:
        data = json.loads(text, parse_constant=_no_constant)
        layers = data["layers"]
        if data["format"] != SEGMENT_FORMAT or not all(isinstance(name, str) for name in layers):
            raise ValueError(f"format {data['format']!r} with layers {layers!r:.80}")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{meta} is not a values file segment written by this version: {err}") from err
    return layers


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _rows_of(path: Path, row: np.dtype, opener: Callable[[Path], BinaryIO]) -> np.ndarray:
    if not path.exists() and not path.is_symlink():
        return np.zeros(0, dtype=row)
    with opener(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        count = size // row.itemsize
        if count * row.itemsize < size:
            warnings.warn(
                f"{path}: bytes {count * row.itemsize} to {size} could not be read (a row cut off, for example by a "
                "crash); the measurement written there is missing",
                stacklevel=3,
            )
        return np.fromfile(handle, dtype=row, count=count) if count else np.zeros(0, dtype=row)
