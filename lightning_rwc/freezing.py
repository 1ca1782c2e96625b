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
from lightning_rwc.measure import Measurement
from lightning_rwc.measure.select import named_parameters
from lightning_rwc.validate import check_choice, choices

FreezeMode = Literal["freeze", "suggest"]
MODES = choices(FreezeMode)

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class BlockFreezer:
    """Freeze the blocks of ``model`` (see :mod:`lightning_rwc.blocks`) that have stopped learning.

    At each :meth:`update` the RWC of every block is formed from the measurement's sums (all the block's tracked
    tensors as one vector) and handed to a :class:`~lightning_rwc.decide.freeze.FreezePolicy`. With
    ``mode="freeze"`` the blocks it picks are frozen: every parameter of theirs gets ``requires_grad=False`` and
    loses its gradient, so optimizers leave it exactly as it is (momentum and weight decay included), and with
    ``eval_batchnorm`` their batch-norm layers stop updating running statistics. With ``mode="suggest"`` nothing
    changes; :attr:`frozen` says what would have been frozen, and when.

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
        eval_batchnorm: put the batch-norm layers of frozen blocks in eval mode (see :meth:`keep_eval`).
        norm: the tracker's norm.

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
        eval_batchnorm: bool = True,
        norm: str = "l1",
    ) -> None:
        check_choice("mode", mode, MODES)
        self.model, self.mode, self.eval_batchnorm, self.norm = model, mode, eval_batchnorm, norm
        self.names = list(names)
        """The measured tensors' names the blocks were found from."""
        self.blocks: Blocks = find_blocks(names, patterns)
        self._owners, last = self._find_owners()
        keep = self._owners.get(last, set()) if keep_last else set()
        self.policy = FreezePolicy(self.blocks.names, rule, keep=keep)
        self._frozen: set[int] = set()  # the parameters frozen here, by identity
        self._batchnorms: list[nn.Module] = []  # whose parameters are all frozen

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
        """Freeze ``blocks`` now: no gradient, no update, batch norms in eval mode (with ``eval_batchnorm``)."""
        for param in self._params(blocks):
            param.requires_grad_(False)
            param.grad = None
            self._frozen.add(id(param))
        if self.eval_batchnorm:
            self._batchnorms = [
                module
                for module in self.model.modules()
                if isinstance(module, _BATCHNORMS)
                and (params := [id(p) for p in module.parameters(recurse=False)])
                and self._frozen.issuperset(params)
            ]
        self.keep_eval()

    def keep_eval(self) -> None:
        """Put the batch-norm layers of frozen blocks in eval mode again (``model.train()`` undoes it)."""
        for module in self._batchnorms:
            module.eval()

    def state_dict(self) -> dict[str, Any]:
        """The policy's state (frozen blocks with their steps, peaks, counters), as plain data."""
        return self.policy.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; with ``mode="freeze"`` the blocks frozen then are frozen again now."""
        self.policy.load_state_dict(state)
        if self.mode == "freeze":
            self.freeze(list(self.policy.frozen))

    def _find_owners(self) -> tuple[dict[int, set[str]], int | None]:
        """For each parameter (by identity), the blocks it belongs to under any of its names; the last trainable one."""
        owners: dict[int, set[str]] = {}
        before, last = (self.blocks.names or [None])[0], None
        for name, _, param in named_parameters(self.model, remove_duplicate=False):
            first = next(iter(owners.get(id(param), ())), None)
            block = self.blocks.of(name) or first or before
            if block is not None:
                owners.setdefault(id(param), set()).add(block)
            before, last = block, id(param) if param.requires_grad else last
        return owners, last

    def _params(self, blocks: Sequence[str]) -> list[torch.nn.Parameter]:
        """Every parameter of ``blocks``, each once."""
        wanted = set(blocks)
        return [param for param in self.model.parameters() if self._owners.get(id(param), set()) & wanted]
