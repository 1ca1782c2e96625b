"""Blocks: the parts of a network that a chart groups and the freezer freezes, with one definition for both.

The rule, from parameter names alone (so that it applies to a run's logs as well as to a live model):

1. The dotted prefix that every name shares (``model.`` of a LightningModule attribute) is set aside.
2. Each top-level group (the first part of a name after that prefix) is a block: ResNet's ``conv1``, ``layer1``
   ... ``layer4``, ``fc``.
3. A group that holds more than half of the names is too coarse to read or to freeze in parts: if it is, or leads
   through children that hold most of its names to, a sequence of numbered children (``h.0``, ``h.1``, ... in
   GPT-2; ``encoder_layer_0``, ... in torchvision's ViT), each numbered child is a block, and what else the group
   holds is one more block under the group's name.
4. ``custom`` patterns (regular expressions, or plain module paths, matched from the start of a name up to a dot
   or its end) come first: a name belongs to the first pattern it matches; the others follow the rule above.

A name belongs to the block with the longest matching path; blocks are ordered by their first name, which is the
model's order (front to back) for names from ``named_parameters()``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

_NUMBERED = re.compile(r"(\D*?)(\d+)")


@dataclass(frozen=True)
class Blocks:
    """An assignment of parameter names to blocks.

    Attributes:
        names: the block names, front to back.
        paths: for each block made by the rule, its full module path (with the shared prefix).
        custom: the compiled custom patterns, with the block name of each.
    """

    names: list[str]
    paths: dict[str, str]
    custom: list[tuple[str, re.Pattern[str]]]

    def of(self, name: str) -> str | None:
        """The block of parameter ``name``, or ``None`` if it lies outside every block.

        Example::

            >>> find_blocks(["h.0.w", "h.1.w", "wte.weight"]).of("h.1.bias")
            'h.1'
        """
        for block, pattern in self.custom:
            if pattern.match(name):
                return block
        best = None
        for block, path in self.paths.items():
            if (name == path or name.startswith(path + ".")) and (best is None or len(path) > len(self.paths[best])):
                best = block
        return best

    def members(self, names: Sequence[str]) -> dict[str, list[str]]:
        """``{block: [names in it]}`` for the blocks that hold any of ``names``, front to back.

        Example::

            >>> find_blocks(["conv1.weight", "layer1.0.conv1.weight"]).members(["layer1.0.conv1.weight"])
            {'layer1': ['layer1.0.conv1.weight']}
        """
        grouped: dict[str, list[str]] = {}
        for name in names:
            block = self.of(name)
            if block is not None:
                grouped.setdefault(block, []).append(name)
        return {block: grouped[block] for block in self.names if block in grouped}


def find_blocks(names: Sequence[str], custom: Sequence[str] = ()) -> Blocks:
    """The blocks of a network whose parameters are ``names`` (see the module's rule).

    Example::

        >>> gpt = ["wte.weight", "wpe.weight"] + [f"h.{i}.{part}.weight" for i in range(12) for part in ("attn", "mlp")]
        >>> find_blocks(gpt).names[:4], len(find_blocks(gpt).names)
        (['wte', 'wpe', 'h.0', 'h.1'], 14)
        >>> resnet = ["conv1.weight", "layer1.0.conv1.weight", "layer1.1.conv1.weight", "layer2.0.conv1.weight"]
        >>> find_blocks(resnet).names
        ['conv1', 'layer1', 'layer2']
        >>> find_blocks(gpt, custom=["h.0", "h.1"]).names[:4]  # custom blocks: module paths or regular expressions
        ['wte', 'wpe', 'h.0', 'h.1']
    """
    patterns = [(pattern, _compile(pattern)) for pattern in custom]
    rest = [name for name in names if not any(p.match(name) for _, p in patterns)]
    parts = [name.split(".") for name in rest]
    shared = 0
    if len(parts) > 1:
        while all(len(p) > shared + 1 and p[shared] == parts[0][shared] for p in parts):
            shared += 1
    head = ".".join(parts[0][:shared]) + "." if shared else ""
    paths: dict[str, str] = {}
    groups: dict[str, list[list[str]]] = {}
    for split in parts:
        groups.setdefault(split[shared], []).append(split[shared + 1 :])
    for group, tails in groups.items():
        for block in _split(group, tails, len(rest)):
            paths[block] = head + block
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        block = Blocks([], paths, patterns).of(name)
        if block is not None:
            first.setdefault(block, index)
    return Blocks(sorted(first, key=first.__getitem__), paths, patterns)


def block_values(names: Sequence[str], sums: Tensor, blocks: Blocks, norm: str) -> dict[str, float]:
    """The RWC of each block from a measurement's per-tensor sums: all its tensors taken as one vector.

    Args:
        names: the tensors of the columns of ``sums``.
        sums: ``(2, k)`` numerator and denominator sums (see :meth:`~lightning_rwc.measure.Measurement.sums`).
        blocks: from :func:`find_blocks`.
        norm: the norm the sums are of.

    Example::

        >>> names = ["conv1.weight", "layer1.0.weight", "layer1.1.weight", "layer2.0.weight"]
        >>> sums = torch.tensor([[0.5, 1.0, 3.0, 2.0], [1.0, 10.0, 10.0, 20.0]], dtype=torch.float64)
        >>> block_values(names, sums, find_blocks(names), "l1")
        {'conv1': 0.5, 'layer1': 0.2, 'layer2': 0.1}
    """
    from lightning_rwc.measure.functional import ratios

    members = blocks.members(names)
    if not members:
        return {}
    column = {name: i for i, name in enumerate(names)}
    owners = torch.tensor([b for b, block in enumerate(members) for _ in members[block]], dtype=torch.int64)
    order = torch.tensor([column[name] for block in members for name in members[block]], dtype=torch.int64)
    grouped = torch.zeros(2, len(members), dtype=torch.float64).index_add_(1, owners, sums[:, order].double())
    return dict(zip(members, ratios(grouped, norm).tolist(), strict=True))


def _split(group: str, tails: list[list[str]], total: int) -> list[str]:
    """The block paths of one top-level group (relative to the shared prefix): itself, and its numbered parts."""
    if len(tails) * 2 <= total:
        return [group]
    path, node = group, tails
    while True:
        children: dict[str, list[list[str]]] = {}
        for tail in node:
            if len(tail) > 1:  # a parameter of a submodule, not of this module itself
                children.setdefault(tail[0], []).append(tail[1:])
        numbered = [child for child in children if _NUMBERED.fullmatch(child)]
        stems = {_NUMBERED.fullmatch(child).group(1) for child in numbered}
        if len(numbered) >= 2 and len(stems) == 1 and sum(len(children[c]) for c in numbered) * 2 > len(node):
            return [group, *(f"{path}.{child}" for child in numbered)]
        largest = max(children, key=lambda child: len(children[child]), default=None)
        if largest is None or len(children[largest]) * 2 <= len(node):
            return [group]
        path, node = f"{path}.{largest}", children[largest]


def _compile(pattern: str) -> re.Pattern[str]:
    """A block pattern that matches a name from its start up to a dot or the name's end."""
    try:
        return re.compile(f"(?:{pattern})(?:\\.|$)")
    except re.error as err:
        raise ValueError(f"block pattern {pattern!r} is not a valid regular expression: {err}") from err
