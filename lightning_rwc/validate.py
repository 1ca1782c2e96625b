"""Argument checks shared by the public entry points: one wording for every rejected choice."""

from __future__ import annotations

from collections.abc import Iterable


def check_choice(name: str, value: object, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` naming ``name``, the allowed ``choices`` and the bad ``value`` unless it is one of them.

    Example::

        >>> check_choice("norm", "l1", ("l1", "l2"))
        >>> check_choice("norm", "l3", ("l1", "l2"))
        Traceback (most recent call last):
        ...
        ValueError: norm must be one of ('l1', 'l2'), got 'l3'
    """
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
