"""Argument checks shared by every public entry point: one checker for each kind of value, one wording for each.

Each raises a ``ValueError`` that names the argument, what it must be and the value it got.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, get_args


def choices(literal: Any) -> tuple[str, ...]:
    """The choices of a ``Literal`` type, so that a type and its check never differ.

    Example::

        >>> from typing import Literal
        >>> choices(Literal["l1", "l2"])
        ('l1', 'l2')
    """
    return get_args(literal)


def check_choice(name: str, value: object, allowed: Iterable[str]) -> None:
    """Raise ``ValueError`` naming ``name``, the ``allowed`` choices and the bad ``value`` unless it is one of them.

    Example::

        >>> check_choice("norm", "l1", ("l1", "l2"))
        >>> check_choice("norm", "l3", ("l1", "l2"))
        Traceback (most recent call last):
        ...
        ValueError: norm must be one of ('l1', 'l2'), got 'l3'
    """
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_count(name: str, value: object, minimum: int = 1, optional: bool = False) -> None:
    """A whole number at least ``minimum`` (``None`` too, if ``optional``).

    Example::

        >>> check_count("every_n_steps", 0)
        Traceback (most recent call last):
        ...
        ValueError: every_n_steps must be a whole number >= 1, got 0
    """
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        also = " or None" if optional else ""
        raise ValueError(f"{name} must be a whole number >= {minimum}{also}, got {value!r}")


def check_fraction(name: str, value: object, open_ends: bool = False) -> None:
    """A number in ``[0, 1]`` (in ``(0, 1)`` with ``open_ends``).

    Example::

        >>> check_fraction("threshold", 1.0, open_ends=True)
        Traceback (most recent call last):
        ...
        ValueError: threshold must be a fraction in (0, 1), got 1.0
    """
    number = _number(value)
    inside = number is not None and (0 < number < 1 if open_ends else 0 <= number <= 1)
    if not inside:
        raise ValueError(f"{name} must be a fraction in {'(0, 1)' if open_ends else '[0, 1]'}, got {value!r}")


def check_seconds(name: str, value: object) -> None:
    """A finite number of seconds >= 0.

    Example::

        >>> check_seconds("flush_every_s", -1)
        Traceback (most recent call last):
        ...
        ValueError: flush_every_s must be a number of seconds >= 0, got -1
    """
    number = _number(value)
    if number is None or not 0 <= number < math.inf:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")


def check_switch(name: str, value: object) -> None:
    """``True`` or ``False``, nothing that merely looks like one.

    Example::

        >>> check_switch("keep_last", "yes")
        Traceback (most recent call last):
        ...
        ValueError: keep_last must be True or False, got 'yes'
    """
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_prefix(value: object, name: str = "log_prefix") -> str:
    """A non-empty string without ``/``: the first part of a logged key (returned when it is one).

    Example::

        >>> check_prefix("a/b")
        Traceback (most recent call last):
        ...
        ValueError: log_prefix must be a non-empty string without '/', got 'a/b'
    """
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(f"{name} must be a non-empty string without '/', got {value!r}")
    return value


def _number(value: object) -> float | None:
    """``value`` as a float if it is a real number (not a bool, not nan), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)
