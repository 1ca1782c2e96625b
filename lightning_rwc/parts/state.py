"""The parts' states inside the callback's checkpoint state."""

from __future__ import annotations

from typing import Any

from lightning_rwc.parts.base import Part
from lightning_rwc.parts.history import History


def parts_state_dict(parts: list[Part]) -> dict[str, dict[str, Any]]:
    """The state of every part the callback saves (a part that is a callback is saved by Lightning itself)."""
    from lightning.pytorch.callbacks import Callback

    return {part_key(i, part): part.state_dict() for i, part in enumerate(parts) if not isinstance(part, Callback)}


def load_parts_state_dict(parts: list[Part], callback_state: dict[str, Any]) -> None:
    """Hand each part its state from the callback's, saved by :func:`parts_state_dict` under ``"parts"``.

    A part with none saved starts afresh. Versions 1 and 2 of the callback's state held the history at the top, as
    the callback's own: it goes to the :class:`~lightning_rwc.parts.History` part.
    """
    state = callback_state.get("parts")
    if state is None:
        old = {"history": callback_state.get("history", {})}
        state = {part_key(i, part): old for i, part in enumerate(parts) if isinstance(part, History)}
    for i, part in enumerate(parts):
        if part_key(i, part) in state:
            part.load_state_dict(state[part_key(i, part)])


def part_key(index: int, part: Part) -> str:
    """The name a part's state is saved under: its place among the parts, and its class."""
    return f"{index}:{type(part).__qualname__}"
