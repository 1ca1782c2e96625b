"""Per-layer relative weight change, measured where the weights live.

This module is the functional core of the package: plain PyTorch, no Lightning. :class:`WeightChangeTracker` keeps
one snapshot of the tracked weights and, on each :meth:`~WeightChangeTracker.step`, reduces every tracked tensor
with fused multi-tensor operations, refreshes the snapshot in place and moves all the results to the host in a
single transfer.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_rwc.keys import ALL_KEY

Norm = Literal["l1", "l2", "elementwise"]
ParamSelection = Literal["weights", "trainable"]

NORMS: tuple[str, ...] = ("l1", "l2", "elementwise")
PARAM_SELECTIONS: tuple[str, ...] = ("weights", "trainable")

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class WeightChangeTracker:
    """Measure the relative weight change (RWC) of each layer between consecutive calls of :meth:`step`.

    For a tracked tensor ``W`` whose previous measurement (or, the first time, its value when tracking started) is
    ``P``, the value returned under its parameter name is

    - ``norm="l1"`` (the paper's formula): ``||W - P||_1 / ||P||_1``;
    - ``norm="l2"``: ``||W - P||_2 / ||P||_2`` (Frobenius norms);
    - ``norm="elementwise"`` (what the authors' released code computed): the mean over the elements of
      ``|W - P| / |P|``, leaving out elements whose previous value is exactly zero (they would be infinite).

    The key ``"_all"`` holds the same ratio for all tracked tensors taken as one vector (for ``l1`` the summed
    absolute changes over the summed absolute weights, never a sum of per-layer ratios).

    Everything is computed on the device of the weights, with norms accumulated in float32 (float64 for float64
    weights), and the results of all layers reach the host in one transfer. Half-precision weights are compared in
    their own dtype: the difference of two such numbers is exact whenever a weight changed by less than its own
    magnitude (Sterbenz lemma), and the norms are accumulated in float32, so small changes are not lost.

    A layer whose previous norm is zero gets ``nan`` (the ratio is undefined) and NaN or inf weights give ``nan`` or
    ``inf``; each case is reported once per layer through :mod:`warnings`, never by an exception.

    Args:
        model: the module whose parameters are tracked. Only parameters with ``requires_grad`` are tracked; a
            parameter shared by several modules is measured once, under its first name.
        norm: ``"l1"``, ``"l2"`` or ``"elementwise"`` (see above).
        params: ``"weights"`` tracks parameters with more than one dimension (conv and linear kernels,
            embeddings), as the paper's code did; ``"trainable"`` tracks every trainable parameter.
        include: regular expressions; when given, only parameters whose name matches one (``re.search``) are kept.
        exclude: regular expressions; parameters whose name matches one are left out.
        snapshot_device: where the snapshot lives. ``None`` keeps it beside each weight (fastest);
            ``"cpu"`` keeps it in host memory, for accelerators that are full, and streams it one tensor at a time.

    Raises:
        ValueError: if ``norm`` or ``params`` is unknown, a pattern does not compile, or nothing is left to track.

    Example::

        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> tracker = WeightChangeTracker(model)
        >>> tracker.names
        ['0.weight', '2.weight']
        >>> with torch.no_grad():
        ...     _ = model[0].weight.mul_(1.5)
        >>> values = tracker.step()
        >>> round(values["0.weight"], 6), values["2.weight"]
        (0.5, 0.0)
    """

    def __init__(
        self,
        model: nn.Module,
        norm: Norm = "l1",
        params: ParamSelection = "weights",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        snapshot_device: str | torch.device | None = None,
    ) -> None:
        validate_norm(norm)
        validate_params(params)
        self.norm = norm
        self.params = params
        self.include = compile_patterns(include, "include")
        self.exclude = compile_patterns(exclude, "exclude")
        self.snapshot_device = None if snapshot_device is None else torch.device(snapshot_device)
        self.model = model
        self._tensors: dict[str, _Tracked] = {}
        self._warned: set[tuple[str, str]] = set()
        self._sync_parameters()
        if not self._tensors:
            raise ValueError(
                f"Nothing to track in {type(model).__name__}: no trainable parameter passes params={params!r}, "
                f"include={include!r}, exclude={exclude!r}. Loosen the filters (for example params='trainable')."
            )

    @property
    def names(self) -> list[str]:
        """Names of the tracked parameters, in the order of ``model.named_parameters()``."""
        return list(self._tensors)

    @property
    def snapshot_bytes(self) -> int:
        """Bytes held by the snapshot (one copy of the tracked weights, or of this rank's shards)."""
        return sum(t.snapshot.numel() * t.snapshot.element_size() for t in self._tensors.values())

    def step(self) -> dict[str, float]:
        """Measure every tracked layer against the previous measurement and make the current weights the baseline.

        Returns:
            ``{parameter name: RWC}`` as Python floats, plus ``"_all"`` for all tracked weights as one vector.
            Parameters that appeared since the last call get their baseline now and no value yet.
        """
        fresh = self._sync_parameters()
        measured = [name for name in self._tensors if name not in fresh]
        if not measured:
            return {}
        partials = self._partials([self._tensors[name] for name in measured])
        if any(t.sharded for t in self._tensors.values()):
            copies = [self._tensors[name].copies() for name in measured]
            partials = all_reduce_sum(partials / torch.tensor(copies, dtype=partials.dtype).to(partials.device))
        numerators, denominators = to_host(partials)
        values = {name: self._ratio(name, a, b) for name, a, b in zip(measured, numerators, denominators, strict=True)}
        values[ALL_KEY] = self._ratio(ALL_KEY, math.fsum(numerators), math.fsum(denominators))
        return values

    def snapshot_state(self) -> dict[str, Tensor]:
        """A host copy of the baseline of each tracked tensor (this rank's shard, for sharded parameters)."""
        return {name: t.snapshot.detach().cpu().clone() for name, t in self._tensors.items()}

    def load_snapshot(self, state: dict[str, Tensor]) -> None:
        """Make the tensors in ``state`` (from :meth:`snapshot_state`) the baseline of the layers of the same name.

        Raises:
            ValueError: if a tensor's shape differs from the tracked one's.
        """
        for name, value in state.items():
            if name in self._tensors:
                snapshot = self._tensors[name].snapshot
                if value.shape != snapshot.shape:
                    raise ValueError(
                        f"snapshot of {name!r} has shape {tuple(value.shape)}, expected {tuple(snapshot.shape)}"
                    )
                snapshot.copy_(value)

    def reset(self) -> None:
        """Make the current weights the new baseline, without measuring."""
        with torch.no_grad():
            for tracked in self._tensors.values():
                tracked.snapshot.copy_(tracked.local())

    def _sync_parameters(self) -> set[str]:
        """Follow the model's parameter set; return the names that got a new baseline."""
        current = dict(select_parameters(self.model, self.params, self.include, self.exclude))
        for name in [name for name, tracked in self._tensors.items() if current.get(name) is not tracked.param]:
            del self._tensors[name]
        fresh = set()
        for name, param in current.items():
            if name not in self._tensors:
                self._tensors[name] = _Tracked.create(param, self.snapshot_device)
                fresh.add(name)
        return fresh

    def _partials(self, tracked: list[_Tracked]) -> Tensor:
        """Additive per-layer numerators and denominators, shape ``(2, len(tracked))``, float64 on one device."""
        groups: dict[tuple[torch.device, torch.dtype, bool], list[int]] = {}
        for index, item in enumerate(tracked):
            key = (item.param.device, item.param.dtype, item.snapshot.device != item.param.device)
            groups.setdefault(key, []).append(index)
        device = tracked[0].param.device
        parts, order = [], []
        with torch.no_grad():
            for (_, dtype, streamed), indices in groups.items():
                reduce = _reduce_streamed if streamed else _reduce_fused
                current = [tracked[i].local() for i in indices]
                snapshots = [tracked[i].snapshot for i in indices]
                partial = reduce(current, snapshots, self.norm, _accumulation_dtype(dtype))
                parts.append(partial.to(device, torch.float64))
                order.extend(indices)
        partials = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if order != sorted(order):
            partials = partials[:, torch.tensor(order, device=device).argsort()]
        return partials

    def _ratio(self, name: str, numerator: float, denominator: float) -> float:
        if denominator == 0.0:
            self._warn_once(name, "zero", f"RWC of {name!r} is nan: its previous weights are all zero.")
            return math.nan
        value = numerator / denominator
        if self.norm == "l2":
            value = math.sqrt(value) if value >= 0 else math.nan
        if not math.isfinite(value):
            self._warn_once(name, "nonfinite", f"RWC of {name!r} is {value}: its weights contain NaN or inf.")
        return value

    def _warn_once(self, name: str, kind: str, message: str) -> None:
        if (name, kind) not in self._warned:
            self._warned.add((name, kind))
            warnings.warn(message, RuntimeWarning, stacklevel=3)


@dataclass
class _Tracked:
    """One tracked parameter and its snapshot (of the local shard, for sharded parameters)."""

    param: Tensor
    snapshot: Tensor
    sharded: bool

    @classmethod
    def create(cls, param: Tensor, snapshot_device: torch.device | None) -> _Tracked:
        sharded = is_sharded(param)
        local = param.to_local() if sharded else param
        device = local.device if snapshot_device is None else snapshot_device
        if device == local.device:
            snapshot = local.detach().clone()
        else:
            snapshot = torch.empty(local.shape, dtype=local.dtype, device=device, pin_memory=_pin(local.device, device))
            snapshot.copy_(local.detach())
        return cls(param, snapshot, sharded)

    def local(self) -> Tensor:
        return (self.param.to_local() if self.sharded else self.param).detach()

    def copies(self) -> int:
        """On how many ranks each element lives: the replicated mesh dimensions of a DTensor, every rank otherwise."""
        import torch.distributed as dist

        if not self.sharded:
            return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        mesh = self.param.device_mesh
        return math.prod(mesh.size(dim) for dim, p in enumerate(self.param.placements) if p.is_replicate())


def select_parameters(
    model: nn.Module,
    params: ParamSelection = "weights",
    include: Sequence[re.Pattern[str]] = (),
    exclude: Sequence[re.Pattern[str]] = (),
) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs that a tracker with these filters follows, each shared parameter once.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> [name for name, _ in select_parameters(model)]
        ['0.weight']
        >>> [name for name, _ in select_parameters(model, "trainable", exclude=[re.compile("bias")])]
        ['0.weight', '1.weight']
    """
    selected = []
    for name, param in model.named_parameters():
        if not param.requires_grad or (params == "weights" and param.dim() < 2):
            continue
        if include and not any(p.search(name) for p in include):
            continue
        if any(p.search(name) for p in exclude):
            continue
        selected.append((name, param))
    return selected


def is_sharded(param: Tensor) -> bool:
    """Whether ``param`` is a distributed tensor (``DTensor``, as FSDP2's ``fully_shard`` makes them).

    Example::

        >>> is_sharded(torch.nn.Linear(2, 2).weight)
        False
    """
    return hasattr(param, "to_local") and hasattr(param, "placements")


def validate_norm(norm: str) -> None:
    """Raise ``ValueError`` unless ``norm`` is one of :data:`NORMS`.

    Example::

        >>> validate_norm("l3")
        Traceback (most recent call last):
        ...
        ValueError: norm must be one of ('l1', 'l2', 'elementwise'), got 'l3'
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def validate_params(params: str) -> None:
    """Raise ``ValueError`` unless ``params`` is one of :data:`PARAM_SELECTIONS`.

    Example::

        >>> validate_params("weights")
    """
    if params not in PARAM_SELECTIONS:
        raise ValueError(f"params must be one of {PARAM_SELECTIONS}, got {params!r}")


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


def to_host(partials: Tensor) -> tuple[list[float], list[float]]:
    """The single device-to-host transfer of a measurement: all numerators and denominators at once.

    Example::

        >>> to_host(torch.tensor([[1.0, 2.0], [4.0, 8.0]]))
        ([1.0, 2.0], [4.0, 8.0])
    """
    numerators, denominators = partials.cpu().tolist()
    return numerators, denominators


def all_reduce_sum(partials: Tensor) -> Tensor:
    """Sum the per-shard partials over all ranks in one collective (sharded parameters only).

    Example::

        >>> all_reduce_sum(torch.ones(2, 3)).sum().item()  # without a process group: unchanged
        6.0
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(partials, op=dist.ReduceOp.SUM)
    return partials


def _reduce_fused(current: list[Tensor], snapshots: list[Tensor], norm: str, acc: torch.dtype) -> Tensor:
    """Per-tensor numerators and denominators, shape ``(2, k)``, with multi-tensor kernels; refreshes ``snapshots``.

    The snapshot is turned into ``P - W`` in place, so no memory beyond the snapshot is allocated (except for the
    ``elementwise`` norm, which needs the element ratios).
    """
    if norm == "elementwise":
        sums = torch.stack([_elementwise_sums(w, p) for w, p in zip(current, snapshots, strict=True)], dim=1)
        torch._foreach_copy_(snapshots, current)
        return sums
    order = 1 if norm == "l1" else 2
    if current[0].device.type == "cpu":
        return _reduce_cpu(current, snapshots, order, acc)
    dtype = None if acc == current[0].dtype else acc
    denominators = torch._foreach_norm(snapshots, order, dtype=dtype)
    torch._foreach_sub_(snapshots, current)
    numerators = torch._foreach_norm(snapshots, order, dtype=dtype)
    torch._foreach_copy_(snapshots, current)
    partials = torch.stack([torch.stack(numerators), torch.stack(denominators)]).to(torch.float64)
    return partials.square_() if order == 2 else partials


def _reduce_cpu(current: list[Tensor], snapshots: list[Tensor], order: int, acc: torch.dtype) -> Tensor:
    """:func:`_reduce_fused` on the CPU: chunk by chunk, so that each chunk is still in cache for its next pass.

    PyTorch's CPU norm kernels are slower than a plain sum and accumulate in one long float32 sum, which loses whole
    percents on a layer of 100 M weights; here each chunk of :data:`CHUNK` elements is summed on its own and the
    chunk sums are added in float64.
    """

    def reduce(x: Tensor) -> Tensor:
        if order == 1:
            return x.abs().sum(dtype=acc)
        flat = x.reshape(-1)
        return torch.dot(flat, flat) if x.dtype == acc else flat.to(acc).square().sum()

    w_chunks, owners = _chunks(current)
    p_chunks, _ = _chunks(snapshots)
    numerators, denominators = [], []
    for w, p in zip(w_chunks, p_chunks, strict=True):
        denominators.append(reduce(p))
        p.sub_(w)
        numerators.append(reduce(p))
        p.copy_(w)
    partials = torch.stack([torch.stack(numerators), torch.stack(denominators)]).to(torch.float64)
    if len(owners) == len(current):
        return partials
    return partials.new_zeros((2, len(current))).index_add_(1, torch.tensor(owners), partials)


CHUNK = 1 << 16
"""Elements per chunk of a fused reduction (a float32 sum over this many values stays accurate)."""


def _chunks(tensors: list[Tensor]) -> tuple[list[Tensor], list[int]]:
    """Views of at most :data:`CHUNK` elements that cover ``tensors`` in memory order, and the owner of each view.

    Weights and their snapshot have the same strides, so their chunk lists pair up element by element.
    """
    views: list[Tensor] = []
    owners: list[int] = []
    for i, t in enumerate(tensors):
        if t.numel() <= CHUNK:
            parts: tuple[Tensor, ...] | list[Tensor] = [t]
        elif t.is_contiguous():
            parts = t.view(-1).split(CHUNK)
        elif t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
            parts = t.permute(0, 2, 3, 1).reshape(-1).split(CHUNK)
        else:
            parts = [t]
        views.extend(parts)
        owners.extend([i] * len(parts))
    return views, owners


def _reduce_streamed(current: list[Tensor], snapshots: list[Tensor], norm: str, acc: torch.dtype) -> Tensor:
    """Like :func:`_reduce_fused` for a snapshot in host memory: one tensor at a time on the weights' device."""
    pairs = []
    for w, host in zip(current, snapshots, strict=True):
        p = host.to(w.device, non_blocking=True)
        if norm == "elementwise":
            pairs.append(_elementwise_sums(w, p))
        else:
            order = 1 if norm == "l1" else 2
            denominator = torch.linalg.vector_norm(p, order, dtype=acc)
            numerator = torch.linalg.vector_norm(p.sub_(w), order, dtype=acc)
            pair = torch.stack([numerator, denominator])
            pairs.append(pair.square_() if order == 2 else pair)
        host.copy_(w, non_blocking=True)
    return torch.stack(pairs, dim=1)


def _elementwise_sums(w: Tensor, p: Tensor) -> Tensor:
    """Sum of ``|w - p| / |p|`` over the elements where ``p != 0``, and the number of those elements."""
    nonzero = p != 0
    ratios = (w - p).abs().to(torch.float32 if w.dtype in _LOW_PRECISION else w.dtype) / p.abs()
    total = torch.where(nonzero, ratios, torch.zeros((), dtype=ratios.dtype, device=ratios.device)).sum()
    return torch.stack([total.to(torch.float64), nonzero.sum().to(torch.float64)])


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pin(source: torch.device, target: torch.device) -> bool:
    return source.type == "cuda" and target.type == "cpu"
