"""Facts about sharded parameters, and the collectives that keep ranks measuring the same tensors.

Under FSDP2 (``fully_shard``) or tensor parallelism parameters are ``DTensor``s: each rank holds a shard
(``to_local()``) and reduces it; the per-layer sums of all ranks are added by **one** all-reduce per measurement.
That all-reduce also carries, per tensor, whether every rank measured it, and whether any rank saw the model's
parameters change; only then do the ranks compare the names they would track (:func:`agree`), so that every rank
keeps measuring the same tensors in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_rwc.warn_once import WarnOnce


def is_sharded(param: Tensor) -> bool:
    """Whether ``param`` is a distributed tensor (``DTensor``, as FSDP2's ``fully_shard`` makes them).

    Example::

        >>> is_sharded(torch.nn.Linear(2, 2).weight)
        False
    """
    return hasattr(param, "to_local") and hasattr(param, "placements")


def local(param: Tensor) -> Tensor:
    """The part of ``param`` this rank holds (its shard for a ``DTensor``), detached.

    Example::

        >>> local(torch.nn.Parameter(torch.ones(2))).requires_grad
        False
    """
    return (param.to_local() if is_sharded(param) else param).detach()


def copies(param: Tensor) -> int:
    """On how many ranks each element of ``param`` lives.

    For a ``DTensor``, the product of its replicated mesh dimensions, times the number of copies of its mesh in the
    world (a parameter placed on the data-parallel part of a 2-D mesh lives once per tensor-parallel rank); for a
    plain tensor in a distributed run, every rank.

    Example::

        >>> copies(torch.ones(2))  # no process group
        1
    """
    if is_sharded(param):
        mesh = param.device_mesh
        replicated = math.prod(mesh.size(dim) for dim, p in enumerate(param.placements) if p.is_replicate())
        return replicated * world_size() // mesh.size()
    return world_size()


def first_row(param: Tensor) -> int | None:
    """Where this rank's rows of ``param`` start: 0 for a plain tensor, the offset of a ``DTensor`` sharded by rows.

    ``None`` for other placements (split along another dimension, or over several mesh dimensions), whose local
    part is not a block of whole rows.

    Example::

        >>> first_row(torch.ones(4, 2))
        0
    """
    if not is_sharded(param):
        return 0
    placements = [p for p in param.placements if not p.is_replicate()]
    if not placements:
        return 0
    if len(placements) > 1 or not placements[0].is_shard(dim=0):
        return None
    dim = list(param.placements).index(placements[0])
    rows = math.ceil(param.shape[0] / param.device_mesh.size(dim))  # the split of torch.chunk, as Shard(0) makes it
    return min(rows * param.device_mesh.get_local_rank(dim), param.shape[0])


def full(param: Tensor) -> Tensor:
    """All of ``param`` on every rank (a collective for a ``DTensor``), detached.

    Example::

        >>> full(torch.nn.Parameter(torch.ones(2))).requires_grad
        False
    """
    return (param.full_tensor() if is_sharded(param) else param).detach()


def world_size() -> int:
    """The number of ranks, 1 without a process group."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(table: Tensor) -> Tensor:
    """Sum ``table`` over all ranks in place, in one collective (unchanged without a process group).

    Example::

        >>> all_reduce_sum(torch.ones(2, 3)).sum().item()
        6.0
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(table, op=dist.ReduceOp.SUM)
    return table


def reduce_measurement(
    sums: Tensor | None, measured: Sequence[bool], replicas: Tensor, changed: bool, device: torch.device
) -> Tensor:
    """The one all-reduce of a sharded measurement, on ``device``: a ``(3, k + 1)`` float64 table.

    Rows 0 and 1 hold the numerator and denominator sums over all ranks, each element counted once (a rank's sums
    are divided by ``replicas``, the :func:`copies` of each tensor, float64 on ``device``); row 2 holds how many ranks
    ``measured`` each tensor, and its last entry how many ranks saw the model's parameters change (``changed``).
    """
    k = len(measured)
    table = torch.zeros(3, k + 1, dtype=torch.float64, device=device)
    if k:
        table[:2, :k] = sums / replicas
        table[2, :k] = 1.0 if all(measured) else torch.tensor(measured, dtype=torch.float64).to(device)
    table[2, k] = float(changed)
    return all_reduce_sum(table)


def read_measurement(table: Tensor) -> tuple[Tensor, list[bool], bool]:
    """Split a reduced table (on the host): the sums, which tensors every rank measured, whether any rank changed.

    Example::

        >>> table = torch.tensor([[1.0, 2.0, 0.0], [4.0, 8.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
        >>> sums, measured, changed = read_measurement(table)
        >>> sums.tolist(), measured, changed
        ([[1.0, 2.0], [4.0, 8.0]], [True, False], False)
    """
    ranks = world_size()
    return table[:2, :-1], [count == ranks for count in table[2, :-1].tolist()], bool(table[2, -1] > 0)


def agree(selection: dict[str, Tensor], warn: WarnOnce) -> dict[str, Tensor]:
    """The part of ``selection`` whose names every rank selected, in rank zero's order (one ``all_gather_object``).

    A name that some ranks select and others do not is left out on all of them, and every rank warns about it (so
    that a rank-zero logger shows it).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return selection
    gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, list(selection))
    everywhere = set.intersection(*map(set, gathered))
    for name in sorted(set.union(*map(set, gathered)) - everywhere):
        warn(
            ("uneven", name),
            f"{name!r} is a tracked parameter on some ranks only: it is not measured, so that every rank measures "
            "the same tensors. Change the model alike on every rank.",
        )
    return {name: selection[name] for name in gathered[0] if name in everywhere}
