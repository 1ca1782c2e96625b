"""Which tensors a tracker follows, and under which names: the filters, their validation, and names as users wrote them.

Wrappers that PyTorch puts around a model add attributes to every parameter's name: ``torch.compile`` adds
``_orig_mod.``, activation checkpointing ``_checkpoint_wrapped_module.``, FSDP1 ``_fsdp_wrapped_module.`` and
``DataParallel`` / ``DistributedDataParallel`` their ``module.``; PEFT adds ``base_model.model.`` around the model,
``base_layer.`` inside an adapted layer and ``modules_to_save.<adapter>.`` inside a module it trains a copy of.
Those are left out of tracked names, so the same network gives the same curves wrapped or not; filters
(``include`` / ``exclude``) see the names without them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Literal, Protocol

from torch import nn

from lightning_rwc.validate import choices

ParamSelection = Literal["weights", "trainable"]
PARAM_SELECTIONS = choices(ParamSelection)

WRAPPER_ATTRIBUTES = frozenset({"_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module", "base_layer"})
"""Attribute names that wrappers insert anywhere in a parameter's name."""

WRAPPER_PAIRS = {"base_model": "model", "modules_to_save": None}
"""Pairs of attribute names that wrappers insert: the first, then this one (``None``: any name)."""


def compile_patterns(patterns: str | Iterable[str] | None, what: str) -> list[re.Pattern[str]]:
    """Compile one pattern or several; a bad pattern is a ``ValueError`` that names it.

    Example::

        >>> [p.pattern for p in compile_patterns("fc", "include")]
        ['fc']
        >>> compile_patterns(["("], "exclude")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: exclude pattern '(' is not a valid regular expression: ...
    """
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(f"{what} must be a regular expression or a list of them, got {pattern!r}")
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"{what} pattern {pattern!r} is not a valid regular expression: {err}") from err
    return compiled


def user_name(name: str, parallel: Iterable[str] = ()) -> str:
    """``name`` without the attributes that wrappers insert.

    ``parallel`` holds the qualified names of the ``DataParallel`` / ``DistributedDataParallel`` modules of the model
    (``""`` for the model itself): their ``module`` attribute is left out too.

    Example::

        >>> user_name("_orig_mod.layer1.0._checkpoint_wrapped_module.conv1.weight")
        'layer1.0.conv1.weight'
        >>> user_name("module.fc.weight", parallel=[""]), user_name("module.fc.weight")
        ('fc.weight', 'module.fc.weight')
        >>> user_name("_orig_mod.module.fc.weight", parallel=["_orig_mod"])
        'fc.weight'
        >>> user_name("base_model.model.h.0.attn.c_attn.base_layer.weight")
        'h.0.attn.c_attn.weight'
    """
    for prefix in sorted(parallel, key=len, reverse=True):  # the innermost first: its name holds the outer ones
        head = f"{prefix}.module." if prefix else "module."
        if name.startswith(head):
            name = name[: len(head) - len("module.")] + name[len(head) :]
    parts, kept = name.split("."), []
    while parts:
        part = parts.pop(0)
        if part in WRAPPER_PAIRS and parts and WRAPPER_PAIRS[part] in (None, parts[0]):
            parts.pop(0)
        elif part not in WRAPPER_ATTRIBUTES:
            kept.append(part)
    return ".".join(kept)


def named_parameters(model: nn.Module, remove_duplicate: bool = True) -> Iterator[tuple[str, str, nn.Parameter]]:
    """``(user name, raw name, parameter)`` for ``model.named_parameters(remove_duplicate=...)``.

    Example::

        >>> [(name, raw) for name, raw, _ in named_parameters(nn.DataParallel(nn.Linear(2, 2)))]
        [('weight', 'module.weight'), ('bias', 'module.bias')]
    """
    parallel = parallel_wrappers(model)
    for raw, param in model.named_parameters(remove_duplicate=remove_duplicate):
        yield user_name(raw, parallel), raw, param


def parallel_wrappers(model: nn.Module) -> list[str]:
    """The qualified names of the ``DataParallel`` / ``DistributedDataParallel`` modules of ``model``."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return [name for name, module in model.named_modules() if isinstance(module, wrappers)]


class Row(Protocol):
    """What stands for several parameters under one name (an adapter row of :mod:`lightning_rwc.measure.adapters`)."""

    name: str


def select_parameters(
    model: nn.Module,
    params: ParamSelection = "weights",
    include: Sequence[re.Pattern[str]] = (),
    exclude: Sequence[re.Pattern[str]] = (),
    rows: Mapping[int, Row] | None = None,
) -> list[tuple[str, nn.Parameter | Row]]:
    """The ``(name, parameter)`` pairs that a tracker with these filters follows, each shared parameter once.

    Only parameters with ``requires_grad`` are followed; ``params="weights"`` keeps those with more than one
    dimension. Names are :func:`user_name` of ``named_parameters()`` (the raw name where two would coincide).
    A parameter found in ``rows`` (by ``id``, see :func:`~lightning_rwc.measure.adapters.adapter_rows`) stands
    for its row: the row is followed in its place, under its own name.

    Example::

        >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> [name for name, _ in select_parameters(model)]
        ['0.weight']
        >>> [name for name, _ in select_parameters(model, "trainable", exclude=[re.compile("bias")])]
        ['0.weight', '1.weight']
        >>> [name for name, _ in select_parameters(nn.DataParallel(model))]
        ['0.weight']
    """
    selected: dict[str, nn.Parameter | Row] = {}
    kernels_only, rows = params == "weights", rows or {}
    for name, raw, param in named_parameters(model):
        row = rows.get(id(param))
        if row is not None:
            name, raw = row.name, row.name
            if row.name in selected:
                continue
        elif not param.requires_grad or (kernels_only and param.ndim < 2):
            continue
        name = raw if name in selected else name
        if include and not any(p.search(name) for p in include):
            continue
        if exclude and any(p.search(name) for p in exclude):
            continue
        selected[name] = param if row is None else row
    return list(selected.items())
