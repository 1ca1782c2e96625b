"""Freezing a model's blocks as the policy decides, from a tracker's measurements: plain PyTorch, no Lightning.

Use it in any training loop::

    tracker = WeightChangeTracker(model)
    freezer = BlockFreezer(model, tracker.names, rule=FreezeRule(warmup=2))
    for step in ...:  # after the optimizer step, every so many steps
        frozen_now = freezer.update(step, tracker.measure())
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from lightning_rwc.blocks import Blocks, block_values, find_blocks
from lightning_rwc.decide.freeze import FreezePolicy, FreezeRule
from lightning_rwc.front import FrontCache
from lightning_rwc.measure import Measurement
from lightning_rwc.measure.select import named_parameters
from lightning_rwc.validate import check_choice, choices

FreezeMode = Literal["freeze", "suggest"]
MODES = choices(FreezeMode)


class BlockFreezer:
    """Freeze the blocks of ``model`` (see :mod:`lightning_rwc.blocks`) that have stopped learning.

    At each :meth:`update` the RWC of every block is formed from the measurement's sums (all the block's tracked
    tensors as one vector) and handed to a :class:`~lightning_rwc.decide.freeze.FreezePolicy`. With
    ``mode="freeze"`` the blocks it picks are frozen: every parameter of theirs gets ``requires_grad=False`` and
    loses its gradient, so optimizers leave it exactly as it is (momentum and weight decay included), and with
    ``eval_frozen`` their modules run in eval mode (batch-norm statistics frozen, dropout off), so that a frozen
    block computes the same output for the same input. With a ``cache``, once a prefix of the blocks is frozen its
    output is computed once per input and reused (:class:`~lightning_rwc.front.FrontCache`). With
    ``mode="suggest"`` nothing changes; :attr:`frozen` says what would have been frozen, and when.

    Blocks are found from the tracked tensors' ``names``; a parameter outside every block (a batch norm between two
    blocks, say) belongs to the block of the parameter before it, and a parameter registered twice (tied weights)
    to the block of its first name too. With ``keep_last`` the blocks of the model's last trainable parameter are
    never frozen: the head, or the embedding tied to it (then backward still runs through frozen layers to reach the
    embedding, and freezing saves their weight gradients and optimizer updates only).

    Args:
        model: the model the tracker measures.
        names: the tracked tensors' names (``tracker.names``).
        mode: ``"freeze"`` or ``"suggest"``.
        rule: when a block is settled and how many may be frozen (:class:`~lightning_rwc.decide.FreezeRule`).
        patterns: custom blocks, regular expressions or module paths (see :func:`~lightning_rwc.blocks.find_blocks`).
        keep_last: never freeze the last block (the head) and what shares parameters with it.
        eval_frozen: run the modules of frozen blocks in eval mode (see :meth:`keep_eval`): the modules whose
            parameters are all frozen, and a module without parameters where the module with parameters before it
            (in the model's order) is frozen, as a dropout after a frozen layer.
        norm: the tracker's norm.
        cache: keeps the frozen front's outputs (with ``mode="freeze"`` and ``eval_frozen``); ``None``: no cache.

    Example::

        >>> from lightning_rwc import WeightChangeTracker
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> tracker = WeightChangeTracker(model)
        >>> freezer = BlockFreezer(model, tracker.names, rule=FreezeRule(warmup=0, patience=1))
        >>> freezer.policy.blocks, freezer.policy.keep
        (['0', '1', '2'], {'2'})
        >>> freezer.update(1, tracker.measure())  # nothing moved yet: no block has a peak to fall from
        []
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        mode: FreezeMode = "freeze",
        rule: FreezeRule | None = None,
        patterns: Sequence[str] = (),
        keep_last: bool = True,
        eval_frozen: bool = True,
        norm: str = "l1",
        cache: FrontCache | None = None,
    ) -> None:
        check_choice("mode", mode, MODES)
        self.model, self.mode, self.eval_frozen, self.norm = model, mode, eval_frozen, norm
        self.cache = cache if mode == "freeze" and eval_frozen else None
        self.names = list(names)
        """The measured tensors' names the blocks were found from."""
        self.blocks: Blocks = find_blocks(names, patterns)
        self._owners, last = self._find_owners()
        keep = self._owners.get(last, set()) if keep_last else set()
        self.policy = FreezePolicy(self.blocks.names, rule, keep=keep)
        self._frozen: set[int] = set()  # the parameters frozen here, by identity
        self._eval: list[nn.Module] = []  # the modules of frozen blocks

    @property
    def frozen(self) -> dict[str, int]:
        """Each frozen (or, suggesting, would-be-frozen) block and the global step of its decision."""
        return dict(self.policy.frozen)

    def update(self, step: int, measurement: Measurement) -> list[str]:
        """Decide from one measurement taken at global ``step``; return the blocks frozen (or suggested) now."""
        names, sums = measurement.sums()
        chosen = self.policy.update(step, block_values(names, sums, self.blocks, self.norm))
        if self.mode == "freeze":
            self.freeze(chosen)
        return chosen

    def freeze(self, blocks: Sequence[str]) -> None:
        """Freeze ``blocks`` now: no gradient, no update, modules in eval mode (``eval_frozen``), the front cached."""
        for param in self._params(blocks):
            param.requires_grad_(False)
            param.grad = None
            self._frozen.add(id(param))
        if self.eval_frozen:
            self._eval = self._frozen_modules()
        self.keep_eval()
        if self.cache is not None:
            self._cache_front()

    def keep_eval(self) -> None:
        """Put the modules of frozen blocks in eval mode again (``model.train()`` undoes it)."""
        for module in self._eval:
            module.train(False)

    def state_dict(self) -> dict[str, Any]:
        """The policy's state (frozen blocks with their steps, peaks, counters), as plain data."""
        return self.policy.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; with ``mode="freeze"`` the blocks frozen then are frozen again now."""
        self.policy.load_state_dict(state)
        if self.mode == "freeze":
            self.freeze(list(self.policy.frozen))

    def _frozen_modules(self) -> list[nn.Module]:
        """The modules of frozen blocks: all parameters frozen, or none and the module with some before it frozen."""
        found, before = [], False
        for module in self.model.modules():
            params = [id(p) for p in module.parameters()]
            own = any(True for _ in module.parameters(recurse=False))
            frozen = self._frozen.issuperset(params) if params else before
            if frozen:
                found.append(module)
            before = self._frozen.issuperset(params) if own else before
        return found

    def _cache_front(self) -> None:
        """Cache the output of the longest frozen prefix of the blocks, cut after its last block."""
        names, frozen = self.blocks.names, self.policy.frozen
        prefix = next((i for i, block in enumerate(names) if block not in frozen), len(names))
        paths = [self.blocks.paths.get(block) for block in names]
        if prefix == 0 or paths[prefix - 1] is None:
            return
        last = paths[prefix - 1]
        if any(path and path.startswith(last + ".") for path in paths[prefix:]):  # a group holding later blocks
            return
        self.cache.attach(self.model, last)

    def _find_owners(self) -> tuple[dict[int, set[str]], int | None]:
        """For each parameter (by identity), the blocks it belongs to under any of its names; the last trainable one."""
        owners: dict[int, set[str]] = {}
        before, last, known = (self.blocks.names or [None])[0], None, set(self.blocks.names)
        for name, _, param in named_parameters(self.model, remove_duplicate=False):
            first = next(iter(owners.get(id(param), ())), None)
            block = self.blocks.of(name)  # a group's path (VGG's "features") may hold no tracked name: not a block
            block = (block if block in known else None) or first or before
            if block is not None:
                owners.setdefault(id(param), set()).add(block)
            before, last = block, id(param) if param.requires_grad else last
        return owners, last

    def _params(self, blocks: Sequence[str]) -> list[torch.nn.Parameter]:
        """Every parameter of ``blocks``, each once."""
        wanted = set(blocks)
        return [param for param in self.model.parameters() if self._owners.get(id(param), set()) & wanted]
