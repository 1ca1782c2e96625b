"""Which blocks have stopped learning: the freezing policy, fed with each block's RWC at every measurement."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lightning_rwc.validate import check_choice, check_count, check_fraction, choices

FreezeOrder = Literal["front", "any"]
FREEZE_ORDERS = choices(FreezeOrder)


@dataclass(frozen=True)
class FreezeRule:
    """When a block counts as settled and how many blocks may be frozen, checked when made.

    Args:
        threshold: fraction of a block's peak RWC below which it counts as settled.
        patience: measurements in a row a block must stay settled.
        warmup: measurements before any block may become a candidate.
        max_fraction: the largest share of the freezable blocks that may be frozen.
        order: ``"front"`` (a block only with every block before it) or ``"any"``.

    Raises:
        ValueError: for a setting out of range.

    Example::

        >>> FreezeRule(threshold=1.5)
        Traceback (most recent call last):
        ...
        ValueError: threshold must be a fraction in (0, 1), got 1.5
    """

    threshold: float = 0.5
    patience: int = 2
    warmup: int = 2
    max_fraction: float = 0.75
    order: FreezeOrder = "front"

    def __post_init__(self) -> None:
        check_choice("order", self.order, FREEZE_ORDERS)
        check_fraction("threshold", self.threshold, open_ends=True)
        check_fraction("max_fraction", self.max_fraction)
        check_count("patience", self.patience, minimum=0)
        check_count("warmup", self.warmup, minimum=0)


class FreezePolicy:
    """Decide, from each block's RWC at every measurement, which blocks to freeze.

    A block becomes a candidate when, after ``warmup`` measurements, its RWC has stayed at or below ``threshold``
    times the highest RWC it reached so far for ``patience`` measurements in a row: it still moves, but far less
    than it did (a block that never moved is no candidate). With ``order="front"`` a candidate is frozen only
    together with every block before it, so that backward stops at the frozen front (that is where time is saved);
    with ``order="any"`` each candidate is frozen by itself (that saves only its weight gradients and optimizer
    updates). Blocks in ``keep`` are never frozen (nor do they hold back the blocks after them), and at most
    ``max_fraction`` of the others are.

    Args:
        blocks: the block names, front to back.
        rule: ``threshold``, ``patience``, ``warmup``, ``max_fraction`` and ``order`` (see :class:`FreezeRule`).
        keep: blocks never frozen (by default the caller keeps the last block, the head).

    Example::

        >>> rule = FreezeRule(0.5, patience=1, warmup=1, max_fraction=1)
        >>> policy = FreezePolicy(["a", "b", "head"], rule, keep={"head"})
        >>> policy.update(10, {"a": 0.2, "b": 0.2, "head": 0.2})
        []
        >>> policy.update(20, {"a": 0.05, "b": 0.15, "head": 0.2})  # a settled (below half its peak), b not
        ['a']
        >>> policy.update(30, {"b": 0.05, "head": 0.01})
        ['b']
        >>> policy.frozen
        {'a': 20, 'b': 30}
    """

    def __init__(
        self, blocks: Sequence[str], rule: FreezeRule | None = None, keep: Sequence[str] | set[str] = ()
    ) -> None:
        self.blocks = list(blocks)
        self.rule = rule or FreezeRule()
        self.keep = set(keep)
        self.measurements = 0
        self.peaks: dict[str, float] = {}
        self.settled: dict[str, int] = {}
        self.frozen: dict[str, int] = {}
        """Each frozen block and the global step of the measurement that decided it."""

    @property
    def limit(self) -> int:
        """How many blocks may be frozen at most."""
        return math.floor(self.rule.max_fraction * sum(block not in self.keep for block in self.blocks))

    def update(self, step: int, values: Mapping[str, float]) -> list[str]:
        """Take one measurement's block values (at global ``step``); return the blocks to freeze now, front first."""
        self.measurements += 1
        for block in self.blocks:
            value = values.get(block, math.nan)
            if block in self.frozen or not math.isfinite(value):
                continue
            self.peaks[block] = max(self.peaks.get(block, 0.0), value)
            peak = self.peaks[block]
            settled = self.measurements > self.rule.warmup and peak > 0 and value <= self.rule.threshold * peak
            self.settled[block] = self.settled.get(block, 0) + 1 if settled else 0
        ready = {b for b in self.blocks if b not in self.keep and self.settled.get(b, 0) >= max(self.rule.patience, 1)}
        if self.rule.order == "front":
            chosen = []
            for block in self.blocks:
                if block in self.frozen or block in self.keep:  # a kept block does not hold back those after it
                    continue
                if block not in ready:
                    break
                chosen.append(block)
        else:
            chosen = [block for block in self.blocks if block in ready and block not in self.frozen]
        chosen = chosen[: max(self.limit - len(self.frozen), 0)]
        for block in chosen:
            self.frozen[block] = step
        return chosen

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`update` has learnt, as plain data."""
        return {
            "measurements": self.measurements,
            "peaks": dict(self.peaks),
            "settled": dict(self.settled),
            "frozen": dict(self.frozen),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`; blocks that are not among the policy's ``blocks`` are left out."""
        known = set(self.blocks)
        self.measurements = int(state.get("measurements", 0))
        self.peaks = {b: float(v) for b, v in state.get("peaks", {}).items() if b in known}
        self.settled = {b: int(v) for b, v in state.get("settled", {}).items() if b in known}
        self.frozen = {b: int(v) for b, v in state.get("frozen", {}).items() if b in known}
