"""Per-layer relative weight change, measured where the weights live.

This module is the functional core of the package: plain PyTorch, no Lightning. :class:`WeightChangeTracker` keeps
one snapshot of the tracked weights and, on each :meth:`~WeightChangeTracker.step`, reduces every tracked tensor
(in one pass with the Triton kernel of :mod:`lightning_rwc.fused` on CUDA, with multi-tensor kernels on other
accelerators, in cache-sized batches on the CPU), refreshes the snapshot in place and moves all the results to the
host in a single transfer.
"""

from __future__ import annotations

import math
import operator
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_rwc import fused
from lightning_rwc.keys import ALL_KEY
from lightning_rwc.watch import ParameterWatch

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
        TypeError: if ``model`` is not a :class:`torch.nn.Module`.
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
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}: pass the network itself.")
        validate_norm(norm)
        validate_params(params)
        self.norm = norm
        self.params = params
        self.include = compile_patterns(include, "include")
        self.exclude = compile_patterns(exclude, "exclude")
        self.snapshot_device = None if snapshot_device is None else torch.device(snapshot_device)
        self.model = model
        self._tensors: dict[str, _Tracked] = {}
        self._groups: list[tuple[list[int], _CpuSnapshot | _TensorLists]] = []
        self._sharded = False
        self._pointers: list[int] = []
        self._watch = ParameterWatch(model)
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
        """Bytes held by the snapshot: one copy of the tracked weights (or of this rank's shards).

        On the CPU the snapshot also fills the last row of each tensor (up to :data:`ROW` - 1 elements).
        """
        storages = [t.snapshot.untyped_storage() for t in self._tensors.values()]
        return sum({storage.data_ptr(): storage.nbytes() for storage in storages}.values())

    def step(self) -> dict[str, float]:
        """Measure every tracked layer against the previous measurement and make the current weights the baseline.

        Returns:
            ``{parameter name: RWC}`` as Python floats, plus ``"_all"`` for all tracked weights as one vector.
            Parameters that appeared (or were replaced, unfrozen or given another shape) since the last call get
            their baseline now and no value yet.
        """
        names, tracked, sharded = list(self._tensors), list(self._tensors.values()), self._sharded
        # On an accelerator the kernels run while the host looks for parameters that appeared or went away; those
        # that went away (or were replaced) since the last call are measured for nothing and left out.
        partials = self._partials(tracked) if tracked else None
        self._sync_parameters()
        if partials is None:
            return {}
        now = list(self._tensors.values())
        if len(now) != len(tracked) or not all(map(operator.is_, now, tracked)):
            measured = [index for index, name in enumerate(names) if self._tensors.get(name) is tracked[index]]
            if not measured:
                return {}
            partials, tracked, names = (
                partials[:, measured],
                [tracked[i] for i in measured],
                [names[i] for i in measured],
            )
        if sharded:
            copies = [item.copies() for item in tracked]
            partials = all_reduce_sum(partials / torch.tensor(copies, dtype=partials.dtype).to(partials.device))
        numerators, denominators = to_host(partials)
        names.append(ALL_KEY)
        return self._ratios(names, numerators + [math.fsum(numerators)], denominators + [math.fsum(denominators)])

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

    def _sync_parameters(self) -> None:
        """Follow the model's parameter set: new parameters get their baseline, those that went away are dropped."""
        if not self._watch.changed():
            return
        current = dict(select_parameters(self.model, self.params, self.include, self.exclude))
        removed = [name for name, tracked in self._tensors.items() if current.get(name) is not tracked.param]
        for name in removed:
            del self._tensors[name]
        fresh = {name for name in current if name not in self._tensors}
        for name in fresh:
            self._tensors[name] = _Tracked.create(current[name], self.snapshot_device)
        if fresh or removed:
            self._tensors = {name: self._tensors[name] for name in current}
            self._arrange(list(self._tensors.values()))

    def _arrange(self, tracked: list[_Tracked]) -> None:
        """Group ``tracked`` by device, dtype and where the snapshot lives, and lay out the CPU snapshots.

        Done again whenever the tracked set changes or a weight gets new storage (``param.data = ...``, as
        ``model.to(...)`` does): the snapshot follows the weights to their dtype and device.
        """
        keys: dict[tuple[torch.device, torch.dtype, bool], list[int]] = {}
        for index, item in enumerate(tracked):
            local = item.local()
            device = local.device if self.snapshot_device is None else self.snapshot_device
            item.snapshot = item.snapshot.to(device, local.dtype)
            key = (item.param.device, item.param.dtype, item.snapshot.device != item.param.device)
            keys.setdefault(key, []).append(index)
        self._groups = []
        for (device, _, streamed), indices in keys.items():
            members = [tracked[i] for i in indices]
            if device.type == "cpu" and not streamed:
                group: _CpuSnapshot | _TensorLists = _CpuSnapshot(members)
            else:
                group = _TensorLists(members, streamed, self.norm)
            self._groups.append((indices, group))
        self._sharded = any(item.sharded for item in tracked)
        self._pointers = _data_pointers(tracked, self._sharded)

    def _partials(self, tracked: list[_Tracked]) -> Tensor:
        """Additive per-layer numerators and denominators, shape ``(2, len(tracked))``, float64 on one device."""
        moved = _data_pointers(tracked, self._sharded) != self._pointers
        if moved:  # new storage may come with a new shape: resolve the names and filters again too
            self._watch.forget()
            tracked = self._restart_reshaped(tracked)
        if moved or not all(group.reusable for _, group in self._groups):
            self._arrange(tracked)
        device = tracked[0].param.device
        parts, order = [], []
        with torch.no_grad():
            for indices, group in self._groups:
                parts.append(group.measure(self.norm).to(device, torch.float64))
                order.extend(indices)
        partials = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if order != sorted(order):
            partials = partials[:, torch.tensor(order, device=device).argsort()]
        return partials

    def _restart_reshaped(self, tracked: list[_Tracked]) -> list[_Tracked]:
        """``tracked`` with a new baseline for each weight whose shape changed (left out of this measurement)."""
        restarted = []
        for item in tracked:
            if item.local().shape != item.snapshot.shape:
                name = next(name for name, other in self._tensors.items() if other is item)
                item = self._tensors[name] = _Tracked.create(item.param, self.snapshot_device)
            restarted.append(item)
        return restarted

    def _ratios(self, names: list[str], numerators: list[float], denominators: list[float]) -> dict[str, float]:
        """``{name: numerator / denominator}`` (the square root for ``l2``); nan where the denominator is zero."""
        try:  # without a Python loop: this runs on every measurement
            ratios = list(map(operator.truediv, numerators, denominators))
        except ZeroDivisionError:
            ratios = [a / b if b else math.nan for a, b in zip(numerators, denominators, strict=True)]
        if self.norm == "l2":
            ratios = list(map(math.sqrt, ratios))  # of sums of squares: never negative, NaN stays NaN
        if not all(map(math.isfinite, ratios)):
            for name, value, denominator in zip(names, ratios, denominators, strict=True):
                if denominator == 0.0:
                    self._warn_once(name, "zero", f"RWC of {name!r} is nan: its previous weights are all zero.")
                elif not math.isfinite(value):
                    message = f"RWC of {name!r} is {value}: its weights contain NaN or inf."
                    self._warn_once(name, "nonfinite", message)
        return dict(zip(names, ratios, strict=True))

    def _warn_once(self, name: str, kind: str, message: str) -> None:
        if (name, kind) not in self._warned:
            self._warned.add((name, kind))
            warnings.warn(message, RuntimeWarning, stacklevel=4)


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

    def data_ptr(self) -> int:
        return (self.param.to_local() if self.sharded else self.param).data_ptr()

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
    kernels_only = params == "weights"
    for name, param in model.named_parameters():
        if not param.requires_grad or (kernels_only and param.ndim < 2):
            continue
        if include and not any(p.search(name) for p in include):
            continue
        if exclude and any(p.search(name) for p in exclude):
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


def _data_pointers(tracked: list[_Tracked], sharded: bool) -> list[int]:
    """Where each tracked tensor's memory starts (its local shard's, for sharded parameters)."""
    if sharded:
        return [item.data_ptr() for item in tracked]
    return list(map(Tensor.data_ptr, map(_PARAM, tracked)))


_PARAM = operator.attrgetter("param")


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


def _reduce_foreach(current: list[Tensor], snapshots: list[Tensor], norm: str, acc: torch.dtype) -> Tensor:
    """Per-tensor numerators and denominators, shape ``(2, k)``, with multi-tensor kernels; refreshes ``snapshots``.

    The snapshot is turned into ``P - W`` in place, so no memory beyond the snapshot is allocated (except for the
    ``elementwise`` norm, which needs the element ratios).
    """
    if norm == "elementwise":
        sums = torch.stack([_elementwise_sums(w, p) for w, p in zip(current, snapshots, strict=True)], dim=1)
        torch._foreach_copy_(snapshots, current)
        return sums
    order = 1 if norm == "l1" else 2
    dtype = None if acc == current[0].dtype else acc
    denominators = torch._foreach_norm(snapshots, order, dtype=dtype)
    torch._foreach_sub_(snapshots, current)
    numerators = torch._foreach_norm(snapshots, order, dtype=dtype)
    torch._foreach_copy_(snapshots, current)
    partials = torch.stack([torch.stack(numerators), torch.stack(denominators)]).to(torch.float64)
    return partials.square_() if order == 2 else partials


class _TensorLists:
    """Tensors of one accelerator and dtype, measured by the fused kernel, multi-tensor kernels or streaming.

    The one-pass kernel of :mod:`lightning_rwc.fused` is used on CUDA where it works; PyTorch's multi-tensor kernels
    otherwise; a snapshot in host memory is streamed to the device one tensor at a time.
    """

    reusable = True

    def __init__(self, members: list[_Tracked], streamed: bool, norm: str) -> None:
        self.current = [item.local() for item in members]
        self.snapshots = [item.snapshot for item in members]
        self.reduce = _reduce_streamed if streamed else _reduce_foreach
        self.accumulate = _accumulation_dtype(self.current[0].dtype)
        self.kernel = None if streamed else _fused_kernel(self.current, self.snapshots, self.accumulate, norm)

    def measure(self, norm: str) -> Tensor:
        """Per-tensor numerators and denominators, shape ``(2, k)``; refreshes the snapshot."""
        if self.kernel is not None:
            return self.kernel.measure(norm)
        return self.reduce(self.current, self.snapshots, norm, self.accumulate)


def _fused_kernel(
    current: list[Tensor], snapshots: list[Tensor], acc: torch.dtype, norm: str
) -> fused.FusedKernel | None:
    """The one-pass kernel for these tensors if it is enabled, works on their device and they are laid out for it."""
    if not fused.ENABLED or current[0].device.type != "cuda":
        return None
    if any(_memory_order(w) is None or w.stride() != p.stride() for w, p in zip(current, snapshots, strict=True)):
        return None
    problem = fused.problem(current[0].device, current[0].dtype, norm)
    if problem is not None:
        fused.report_once(
            f"Measuring with PyTorch's multi-tensor kernels: the fused Triton kernel is not usable ({problem})."
        )
        return None
    return fused.FusedKernel(current, snapshots, acc)


ROW = 256
"""Elements per row of the CPU's flat snapshot of small tensors: each starts on a new row, rows are summed alone."""

BATCH = 1 << 19
"""Elements measured together on the CPU (2 MB of float32), so that weights, snapshot and scratch stay in cache."""


class _CpuSnapshot:
    """The snapshot of CPU tensors of one dtype, and the plan that measures them in cache-sized batches.

    A tensor of at least ``BATCH / 4`` elements keeps its own snapshot and is measured in pieces of ``BATCH``
    elements. Smaller tensors share one ``(rows, ROW)`` buffer in which each fills whole rows in its memory order
    (the rest of its last row stays zero); for each ``BATCH`` elements of that buffer one ``torch.cat`` gathers the
    current weights. Every batch then takes the same few operations, whatever the number of tensors in it: the row
    sums of ``|P|`` and ``|P - W|`` (or of the squares, or of the element ratios), then ``P <- W``, while both are
    still in cache. A per-tensor loop pays for each operation once per tensor instead.

    The views of the weights stay valid while their storage does (the tracker checks it before each measurement).
    """

    def __init__(self, members: list[_Tracked]) -> None:
        current = [item.local() for item in members]
        orders = [_memory_order(w) for w in current]
        self.count = len(members)
        self.reusable = None not in orders  # a tensor that is not dense is gathered through a copy
        self.units: list[_Unit] = []
        self.scratch = torch.empty(BATCH, dtype=current[0].dtype)
        owners: list[int] = []
        small = [i for i, w in enumerate(current) if orders[i] is None or w.numel() < BATCH // 4]
        self._gather_small(members, current, orders, small, owners)
        for i in sorted(set(range(self.count)) - set(small)):
            members[i].snapshot = _own(members[i].snapshot, current[i])
            order = orders[i]
            source, snapshot = (t.permute(order).view(-1) for t in (current[i], members[i].snapshot))
            for offset in range(0, current[i].numel(), BATCH):
                piece = slice(offset, offset + BATCH)
                self.units.append(_Unit(None, source[piece].view(1, -1), snapshot[piece].view(1, -1)))
                owners.append(i)
        self.owners = torch.tensor(owners, dtype=torch.int64)
        self.sums = torch.empty(2, len(owners), dtype=_accumulation_dtype(current[0].dtype))
        column = 0
        for unit in self.units:
            unit.scratch = self.scratch[: unit.snapshot.numel()].view(unit.snapshot.shape)
            unit.sums = self.sums[:, column : column + len(unit.snapshot)]
            column += len(unit.snapshot)

    def _gather_small(
        self,
        members: list[_Tracked],
        current: list[Tensor],
        orders: list[list[int] | None],
        small: list[int],
        owners: list[int],
    ) -> None:
        """Lay out the ``small`` tensors in the shared row buffer and plan one gathering batch per ``BATCH``."""
        rows = {i: -(-current[i].numel() // ROW) for i in small}
        self.buffer = torch.zeros(sum(rows.values()), ROW, dtype=self.scratch.dtype)
        batch_rows = BATCH // ROW
        batches: list[list[Tensor]] = [[] for _ in range(-(-len(self.buffer) // batch_rows))]
        zeros = torch.zeros(ROW, dtype=self.scratch.dtype)
        start = 0
        for i in small:
            w, count, order = current[i], rows[i], orders[i] or list(range(current[i].dim()))
            source = w.permute(order).reshape(-1)
            segment = self.buffer.view(-1)[start * ROW : start * ROW + w.numel()]
            snapshot = segment.view([w.shape[d] for d in order]).permute(_inverse(order))
            members[i].snapshot = snapshot.copy_(members[i].snapshot)
            for row in range(start, start + count):
                if row == start or row % batch_rows == 0:  # the tensor's first row, or the first of a new batch
                    end = min(start + count, (row // batch_rows + 1) * batch_rows)
                    batches[row // batch_rows].append(source[(row - start) * ROW : (end - start) * ROW])
            if w.numel() % ROW:
                batches[(start + count - 1) // batch_rows].append(zeros[: ROW - w.numel() % ROW])
            owners += [i] * count
            start += count
        gathered = torch.empty(min(batch_rows, len(self.buffer)), ROW, dtype=self.scratch.dtype)
        for index, batch in enumerate(batches):
            snapshot = self.buffer[index * batch_rows : (index + 1) * batch_rows]
            self.units.append(_Unit(batch, gathered[: len(snapshot)], snapshot))

    def measure(self, norm: str) -> Tensor:
        """Per-tensor numerators and denominators, shape ``(2, k)`` in float64; refreshes the snapshot."""
        for unit in self.units:
            if unit.gather is not None:
                torch.cat(unit.gather, out=unit.weights.view(-1))
            _row_sums(unit.weights, unit.snapshot, unit.scratch, unit.sums, norm)
            unit.snapshot.copy_(unit.weights)
        partials = torch.zeros(2, self.count, dtype=torch.float64)
        return partials.index_add_(1, self.owners, self.sums.to(torch.float64))


@dataclass(eq=False)
class _Unit:
    """One batch of a :class:`_CpuSnapshot`: rows of weights (gathered from ``gather`` if given) and of snapshot."""

    gather: list[Tensor] | None
    weights: Tensor
    snapshot: Tensor
    scratch: Tensor = field(init=False)
    sums: Tensor = field(init=False)


def _own(previous: Tensor, weights: Tensor) -> Tensor:
    """``previous`` if it is a snapshot of its own laid out like ``weights``, else a copy of it that is."""
    if (
        previous.dtype == weights.dtype
        and previous.stride() == weights.stride()
        and previous.untyped_storage().nbytes() == weights.numel() * weights.element_size()
    ):
        return previous
    return torch.empty_like(weights).copy_(previous)


def _row_sums(w: Tensor, p: Tensor, scratch: Tensor, out: Tensor, norm: str) -> None:
    """Row sums of current rows ``w`` against snapshot rows ``p``: numerators to ``out[0]``, denominators ``out[1]``."""
    if norm == "elementwise":
        out.copy_(_elementwise_sums(w, p, dim=1))
        return
    torch.sum(_powers(p, scratch, norm), 1, dtype=out.dtype, out=out[1])
    torch.sum(_powers(torch.sub(p, w, out=scratch), scratch, norm), 1, dtype=out.dtype, out=out[0])


def _powers(x: Tensor, scratch: Tensor, norm: str) -> Tensor:
    """``|x|`` (``norm="l1"``) or ``x ** 2``, written into ``scratch`` (squares of half precision in float32)."""
    if norm == "l1":
        return torch.abs(x, out=scratch)
    if x.dtype in _LOW_PRECISION:
        return x.to(torch.float32).square_()
    return torch.mul(x, x, out=scratch)


def _memory_order(t: Tensor) -> list[int] | None:
    """The order of ``t``'s dimensions from outermost to innermost in memory, or ``None`` if it is not dense."""
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    return order if t.permute(order).is_contiguous() else None


def _inverse(order: list[int]) -> list[int]:
    inverse = [0] * len(order)
    for position, dim in enumerate(order):
        inverse[dim] = position
    return inverse


def _reduce_streamed(current: list[Tensor], snapshots: list[Tensor], norm: str, acc: torch.dtype) -> Tensor:
    """Like :func:`_reduce_foreach` for a snapshot in host memory: one tensor at a time on the weights' device."""
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


def _elementwise_sums(w: Tensor, p: Tensor, dim: int | None = None) -> Tensor:
    """Sums of ``|w - p| / |p|`` over the elements where ``p != 0`` and the numbers of those elements (over ``dim``)."""
    nonzero = p != 0
    ratios = (w - p).abs().to(torch.float32 if w.dtype in _LOW_PRECISION else w.dtype) / p.abs()
    total = torch.where(nonzero, ratios, torch.zeros((), dtype=ratios.dtype, device=ratios.device)).sum(dim)
    return torch.stack([total.to(torch.float64), nonzero.sum(dim).to(torch.float64)])


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pin(source: torch.device, target: torch.device) -> bool:
    return source.type == "cuda" and target.type == "cpu"
