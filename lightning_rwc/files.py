"""Writing files so that a reader never sees half of one: strict JSON and atomic replacement."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


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
