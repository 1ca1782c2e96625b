"""Warnings given once: the one mechanism that the tracker, its backends and the callback share.

Each owner (a tracker, a callback) holds its own :class:`WarnOnce`, so nothing is remembered for the whole process
and warnings are handed on as they are made, never captured and re-emitted.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Hashable, Iterable

Emit = Callable[[str], object]
"""Where a warning's message goes: ``warnings.warn``-like (the default) or Lightning's ``rank_zero_warn``."""


class WarnOnce:
    """Pass each message to ``emit`` the first time its key is seen, and drop it after that.

    Args:
        emit: called with the message; by default a :class:`RuntimeWarning` attributed to the first caller outside
            this package (the line of the user's code that led to it).

    Example::

        >>> seen = []
        >>> warn = WarnOnce(seen.append)
        >>> warn("layer", "first"); warn("layer", "again"); warn("other", "second")
        >>> seen
        ['first', 'second']
    """

    def __init__(self, emit: Emit | None = None) -> None:
        self.emit = emit or runtime_warning
        self._seen: set[Hashable] = set()

    def __call__(self, key: Hashable, message: str) -> None:
        """Give ``message`` unless a warning with ``key`` was given already."""
        if key not in self._seen:
            self._seen.add(key)
            self.emit(message)

    def many(self, kind: Hashable, layers: Iterable[str], single: str, several: str, examples: int = 3) -> None:
        """One warning for the layers of ``layers`` not yet warned about for ``kind``, however many there are.

        ``single`` is the message for one layer (``{layer}`` stands for its name), ``several`` the message for more
        (``{count}`` for how many, ``{names}`` for the first ``examples`` of them).

        Example::

            >>> seen = []
            >>> warn = WarnOnce(seen.append)
            >>> warn.many("dead", ["a", "b", "c", "d", "e"], "{layer} is dead", "{count} layers are dead: {names}")
            >>> warn.many("dead", ["a", "f"], "{layer} is dead", "{count} layers are dead: {names}")
            >>> seen
            ["5 layers are dead: 'a', 'b', 'c' and 2 more", "'f' is dead"]
        """
        new = [layer for layer in layers if (kind, layer) not in self._seen]
        if not new:
            return
        self._seen.update((kind, layer) for layer in new)
        if len(new) == 1:
            self.emit(single.format(layer=repr(new[0])))
            return
        names = ", ".join(map(repr, new[:examples])) + (
            f" and {len(new) - examples} more" if len(new) > examples else ""
        )
        self.emit(several.format(count=len(new), names=names))


def runtime_warning(message: str) -> None:
    """``warnings.warn(message, RuntimeWarning)`` pointing at the first frame outside ``lightning_rwc``."""
    level, frame = 1, sys._getframe(0)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("lightning_rwc"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, RuntimeWarning, stacklevel=level)
