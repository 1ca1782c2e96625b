"""Files written so that a reader never sees half of one, and read only where they are what they claim to be.

Writing: strict JSON, replaced atomically through a temporary file created exclusively (never through a link).
Reading for a server (:func:`open_inside`): regular files below a folder, reached through no symbolic link, of a
size checked before anything is read.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import stat
from pathlib import Path
from typing import Any, BinaryIO


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
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # A new file (O_EXCL: never one that exists, nor a link), with the permissions the umask gives.
    handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone once replaced; a failed write leaves nothing behind


def open_inside(root: str | os.PathLike, path: str | os.PathLike, max_bytes: int | None = None) -> BinaryIO:
    """Open ``path`` for reading in binary, if it is a regular file below ``root`` reached through no symbolic link.

    Every folder between ``root`` and the file is opened without following links, then the file itself, without
    blocking (a FIFO cannot hang the caller); its type and size are checked on what was opened, so nothing can be
    swapped in between.

    Raises:
        OSError: naming the file and the reason: outside ``root``, a symbolic link on the way, not a regular file
            (a FIFO, a device, a folder), or larger than ``max_bytes``.

    Example::

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "values.bin").write_bytes(b"1234")
        >>> (root / "link.bin").symlink_to(root / "values.bin")
        >>> with open_inside(root, root / "values.bin") as handle:
        ...     handle.read()
        b'1234'
        >>> open_inside(root, root / "link.bin")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        OSError: ...link.bin: a symbolic link (on the way to) the file; not read
    """
    root, path = Path(root), Path(path)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise OSError(f"{path} is outside {root}; not read") from None
    if not parts:
        raise OSError(f"{path} is a folder, not a regular file; not read")
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            os.close(folder)
            folder = inner
        handle = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(f"{path}: a symbolic link (on the way to) the file; not read") from None
        raise
    finally:
        os.close(folder)
    info = os.fstat(handle)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "not a regular file (a FIFO, a device or a folder)"
    elif max_bytes is not None and info.st_size > max_bytes:
        problem = f"{info.st_size / 2**20:.0f} MiB, more than the {max_bytes / 2**20:.0f} MiB read of one file"
    if problem is not None:
        os.close(handle)
        raise OSError(f"{path}: {problem}; not read")
    os.set_blocking(handle, True)
    return os.fdopen(handle, "rb")
