"""The formula of relative weight change, written once: element sums for each norm, and ratios from those sums.

For a weight ``W`` and its previous value ``P``, every norm is the ratio of two sums whose terms are:

=================  =====================================  ===========================  =====================
norm               numerator term                         denominator term             value
=================  =====================================  ===========================  =====================
``l1``             ``|P - W|``                            ``|P|``                      the ratio
``l2``             ``(P - W) ** 2``                       ``P ** 2``                   its square root
``elementwise``    ``|P - W| / |P|`` where ``P != 0``     ``1`` where ``P != 0``       the ratio
=================  =====================================  ===========================  =====================

A low-rank adapter changes a layer's effective weight by a product of small factors; :func:`low_rank_sums` forms the
same sums for it without the full-size change (see :mod:`lightning_rwc.measure.adapters`).

Sums add up over the elements, rows, shards and tensors they cover, so a measurement moves sums (not ratios)
between devices and ranks and forms ratios once, in float64, with :func:`ratios`. Every backend of the tracker
forms its sums with :func:`element_sums` or :func:`tensor_sums` (the Triton kernel of
:mod:`lightning_rwc.measure.backends.fused` with the same terms in Triton's language). To add a norm, add its terms
here; a backend without code for it falls back to these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lightning_rwc.validate import check_choice, choices

Norm = Literal["l1", "l2", "elementwise"]
NORMS = choices(Norm)
"""The norms a tracker measures in: ``("l1", "l2", "elementwise")``."""

EXPONENTS: dict[str, int] = {"l1": 1, "l2": 2}
"""The norms that are p-norms: their terms are ``|x| ** p`` and their value is the p-th root of the ratio."""

LOW_PRECISION = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums of ``dtype`` weights are accumulated in: float64 for float64 weights, float32 otherwise.

    Example::

        >>> accumulation_dtype(torch.bfloat16), accumulation_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def element_sums(
    previous: Tensor,
    current: Tensor,
    norm: str,
    dim: int | None = None,
    *,
    out: Tensor | None = None,
    scratch: Tensor | None = None,
) -> Tensor:
    """The numerator and denominator sums of ``current`` against ``previous``, over all elements or along ``dim``.

    ``P - W`` is formed in the weights' dtype: for half precision it is exact whenever a weight changed by less than
    its own magnitude (Sterbenz lemma); the sums are accumulated in :func:`accumulation_dtype`.

    Args:
        previous: ``P``.
        current: ``W``, of the same shape and dtype.
        norm: one of :data:`NORMS`.
        dim: the dimension to sum along; ``None`` sums everything.
        out: where to write the result (shape ``(2, ...)``); a new tensor by default.
        scratch: a tensor shaped like ``previous`` for the intermediate terms (no allocation for ``l1``).

    Returns:
        ``out``: numerators in ``out[0]``, denominators in ``out[1]``.

    Example::

        >>> element_sums(torch.tensor([2.0, -4.0, 0.0]), torch.tensor([3.0, -2.0, 1.0]), "l1").tolist()
        [4.0, 6.0]
    """
    return change_sums(previous, torch.sub(previous, current, out=scratch), norm, dim, out=out)


def change_sums(
    previous: Tensor, change: Tensor, norm: str, dim: int | None = None, *, out: Tensor | None = None
) -> Tensor:
    """The sums of :func:`element_sums` from ``previous`` and the change itself (either sign), as an update gives it.

    ``change`` may be overwritten with its terms.

    Example::

        >>> change_sums(torch.tensor([2.0, -4.0, 0.0]), torch.tensor([-1.0, -2.0, -1.0]), "l1").tolist()
        [4.0, 6.0]
    """
    if out is None:
        kept = [] if dim is None else [size for d, size in enumerate(previous.shape) if d != dim % previous.dim()]
        out = torch.empty(2, *kept, dtype=accumulation_dtype(change.dtype), device=change.device)
    if norm == "elementwise":
        nonzero = previous != 0
        terms = change.abs_().to(torch.float32 if change.dtype in LOW_PRECISION else change.dtype) / previous.abs()
        torch.sum(terms.masked_fill_(~nonzero, 0.0), dim, dtype=out.dtype, out=out[0])
        torch.sum(nonzero, dim, dtype=out.dtype, out=out[1])
        return out
    order = EXPONENTS[norm]
    torch.sum(_power(change, order), dim, dtype=out.dtype, out=out[0])
    torch.sum(_power(previous, order, change), dim, dtype=out.dtype, out=out[1])
    return out


def low_rank_sums(
    base: Tensor,
    change: tuple[Tensor, Tensor],
    previous: tuple[Tensor, Tensor],
    norm: str,
    chunk: int = 1 << 22,
) -> Tensor:
    """The sums of a change ``W - P = U @ V`` against ``P = base + Up @ Vp``, given as factors.

    For l2 no product of factors is formed in full: the numerator is ``sum((U^T U) * (V V^T))`` and the denominator
    ``||base||^2 + 2 sum((base Vp^T) * Up) + sum((Up^T Up) * (Vp Vp^T))``, from ``R x R`` and ``m x Rp`` products.
    The other norms form ``U @ V`` and ``P`` in bounded pieces of about ``chunk`` elements (a few rows at a time).
    Terms are accumulated in :func:`accumulation_dtype` of ``base``.

    Args:
        base: ``(m, n)``, the part of ``P`` that is not low-rank.
        change: ``U`` ``(m, R)`` and ``V`` ``(R, n)``.
        previous: ``Up`` ``(m, Rp)`` and ``Vp`` ``(Rp, n)``.
        norm: one of :data:`NORMS`.
        chunk: about how many elements a piece holds.

    Returns:
        ``(2,)`` numerator and denominator sums, on ``base``'s device.

    Example::

        >>> base, u, v = torch.eye(2), torch.ones(2, 1), torch.tensor([[0.5, 0.0]])
        >>> low_rank_sums(base, (u, v), (u[:, :0], v[:0]), "l1").tolist()
        [1.0, 2.0]
    """
    dtype = accumulation_dtype(base.dtype)
    u, v, up, vp = (factor.to(dtype) for factor in (*change, *previous))
    sums = torch.zeros(2, dtype=dtype, device=base.device)
    rows = max(1, chunk // max(1, base.shape[1]))
    for start in range(0, base.shape[0], rows):
        piece = slice(start, start + rows)
        weights = base[piece].to(dtype)
        if norm == "l2":
            sums[1] += torch.linalg.vector_norm(weights).square() + 2 * ((weights @ vp.T) * up[piece]).sum()
            continue
        weights = torch.addmm(weights, up[piece], vp)
        difference = torch.mm(u[piece], v).abs_()
        if norm == "l1":
            sums += torch.stack([difference.sum(), weights.abs_().sum()])
            continue
        nonzero = weights != 0
        terms = difference.div_(weights.abs_()).masked_fill_(~nonzero, 0.0)
        sums += torch.stack([terms.sum(), nonzero.sum(dtype=dtype)])
    if norm == "l2":
        sums[0] = _gram(u, v)
        sums[1] = (sums[1] + _gram(up, vp)).clamp_(min=0.0)
    return sums


def _gram(u: Tensor, v: Tensor) -> Tensor:
    """``||U @ V||^2`` from the ``R x R`` products ``(U^T U) * (V V^T)``."""
    return ((u.T @ u) * (v @ v.T)).sum().clamp_(min=0.0)


def tensor_sums(tensors: Sequence[Tensor], norm: str) -> Tensor:
    """The sums of ``|x| ** p`` of each tensor for a p-norm (:data:`EXPONENTS`), in multi-tensor kernels, ``(k,)``.

    The denominator sums are ``tensor_sums(P)`` and the numerator sums ``tensor_sums(P - W)``.

    Example::

        >>> tensor_sums([torch.tensor([3.0, -4.0]), torch.tensor([1.0])], "l2").tolist()
        [25.0, 1.0]
    """
    order = EXPONENTS[norm]
    accumulate = accumulation_dtype(tensors[0].dtype)
    norms = torch._foreach_norm(list(tensors), order, dtype=None if accumulate == tensors[0].dtype else accumulate)
    sums = torch.stack(norms).to(torch.float64)
    return sums if order == 1 else sums.pow_(order)


def ratios(sums: Tensor, norm: str) -> Tensor:
    """The values of ``norm`` from ``(2, k)`` sums: ``nan`` where a denominator is zero (the ratio is undefined).

    Example::

        >>> ratios(torch.tensor([[4.0, 1.0], [16.0, 0.0]], dtype=torch.float64), "l2").tolist()
        [0.5, nan]
    """
    numerators, denominators = sums
    values = torch.where(denominators != 0, numerators / denominators, math.nan)
    order = EXPONENTS.get(norm, 1)
    return values if order == 1 else values.pow_(1 / order)


def relative_weight_change(
    previous: Tensor | Sequence[Tensor], current: Tensor | Sequence[Tensor], norm: Norm = "l1"
) -> float | list[float]:
    """The relative weight change of ``current`` against ``previous``: one tensor, or each pair of two lists.

    The tracker computes the same values for a whole model with one pass over its weights; this function is the
    formula for a few tensors, with one transfer of all the sums to the host.

    Raises:
        ValueError: for an unknown ``norm``, lists of different lengths or a pair of tensors of different shapes.

    Example::

        >>> relative_weight_change(torch.tensor([1.0, -3.0]), torch.tensor([1.5, -3.0]))
        0.125
        >>> relative_weight_change([torch.ones(2), torch.ones(3)], [torch.zeros(2), torch.ones(3)], norm="l2")
        [1.0, 0.0]
    """
    check_choice("norm", norm, NORMS)
    single = isinstance(previous, Tensor)
    if single != isinstance(current, Tensor) or (not single and len(previous) != len(current)):
        raise ValueError("previous and current must both be tensors, or sequences of tensors of the same length")
    pairs = [(previous, current)] if single else list(zip(previous, current, strict=True))
    for p, w in pairs:
        if p.shape != w.shape:
            raise ValueError(
                f"previous has shape {tuple(p.shape)} and current {tuple(w.shape)}: compare a tensor with an "
                "earlier copy of itself"
            )
    if not pairs:
        return []
    device = pairs[0][1].device
    sums = [element_sums(p.detach(), w.detach(), norm).to(device, torch.float64) for p, w in pairs]
    values = ratios(torch.stack(sums, dim=1).cpu(), norm).tolist()
    return values[0] if single else values


def _power(x: Tensor, order: int, out: Tensor | None = None) -> Tensor:
    """``|x|`` (order 1) or ``x ** 2`` (order 2), into ``out`` (``x`` itself by default).

    Squares of half precision are taken in float32, where they cannot overflow.
    """
    out = x if out is None else out
    if order == 1:
        return torch.abs(x, out=out)
    if x.dtype in LOW_PRECISION:
        return x.to(torch.float32).square_()
    return torch.mul(x, x, out=out)
