"""The tracker's lifecycle: which parameters it follows, their baselines, one measurement per :meth:`step`, its state.

Plain PyTorch, no Lightning. The measuring itself is done by the backends of :mod:`lightning_rwc.measure.backends`
(one per device and dtype of the tracked weights), the formula lives in :mod:`lightning_rwc.measure.functional`,
the choice of tensors in :mod:`lightning_rwc.measure.select` and the collectives for sharded parameters in
:mod:`lightning_rwc.measure.sharding`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_rwc.keys import ALL_KEY
from lightning_rwc.measure.backends import KERNELS, Backend, Kernel, create_backend
from lightning_rwc.measure.functional import NORMS, Norm, ratios
from lightning_rwc.measure.select import PARAM_SELECTIONS, ParamSelection, compile_patterns, select_parameters
from lightning_rwc.measure.sharding import agree, copies, is_sharded, local, read_measurement, reduce_measurement
from lightning_rwc.measure.watch import ParameterWatch
from lightning_rwc.validate import check_choice
from lightning_rwc.warn_once import Emit, WarnOnce


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

    Everything is computed on the device of the weights, with sums accumulated in float32 (float64 for float64
    weights), and the sums of all layers reach the host in one transfer. A layer whose previous weights are all zero
    gets ``nan`` (the ratio is undefined) and NaN or inf weights give ``nan`` or ``inf``; each case is reported once
    per layer through ``warn``, never by an exception.

    Parameters are named as in ``model.named_parameters()`` without the attributes that wrappers insert
    (``torch.compile``'s ``_orig_mod.``, activation checkpointing, ``DistributedDataParallel``'s ``module.``; see
    :mod:`lightning_rwc.measure.select`). With sharded parameters (``DTensor``), create the tracker and call
    :meth:`step` on every rank: each rank measures its shards and one all-reduce per step adds them up.

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
        kernel: ``"auto"`` measures CUDA weights with a fused Triton kernel where it works (PyTorch's multi-tensor
            kernels otherwise, with a warning) and CPU weights in cache-sized batches; ``"foreach"`` uses PyTorch's
            multi-tensor kernels everywhere; ``"triton"`` insists on the Triton kernel.
        warn: where warnings go (each is given once per tracker, layer and kind); by default a
            :class:`RuntimeWarning` pointing at the caller.

    Attributes:
        sharded: whether the model holds sharded parameters (then every rank measures its shards).

    Raises:
        TypeError: if ``model`` is not a :class:`torch.nn.Module`.
        ValueError: if ``norm``, ``params`` or ``kernel`` is unknown, a pattern does not compile, or nothing is left
            to track.
        RuntimeError: with ``kernel="triton"``, if the Triton kernel cannot measure the weights (the reason is given).

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
        kernel: Kernel = "auto",
        warn: Emit | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}: pass the network itself.")
        self.include, self.exclude = check_settings(norm, params, include, exclude, kernel)
        self.model = model
        self.norm = norm
        self.params = params
        self.kernel = kernel
        self.snapshot_device = None if snapshot_device is None else torch.device(snapshot_device)
        self.sharded = any(map(is_sharded, model.parameters()))
        self._warn = WarnOnce(warn)
        self._watch = ParameterWatch(model)
        self._params: dict[str, Tensor] = {}
        self._groups: list[_Group] = []
        self._watch.changed()
        selection = self._select()
        self._track(agree(selection, self._warn) if self.sharded else selection)
        if not self._params:
            raise ValueError(
                f"Nothing to track in {type(model).__name__}: no trainable parameter passes params={params!r}, "
                f"include={include!r}, exclude={exclude!r}. Loosen the filters (for example params='trainable')."
            )

    @property
    def names(self) -> list[str]:
        """Names of the tracked parameters, in the order of ``model.named_parameters()``."""
        return list(self._params)

    @property
    def snapshot_bytes(self) -> int:
        """Bytes held by the snapshot: one copy of the tracked weights (or of this rank's shards).

        On the CPU the snapshot of small tensors also fills the last row of each (up to 255 elements).
        """
        storages = [snapshot.untyped_storage() for snapshot in self._snapshots().values()]
        return sum({storage.data_ptr(): storage.nbytes() for storage in storages}.values())

    def step(self) -> dict[str, float]:
        """Measure every tracked layer against the previous measurement and make the current weights the baseline.

        Returns:
            ``{parameter name: RWC}`` as Python floats, plus ``"_all"`` for all tracked weights as one vector.
            Parameters that appeared (or were replaced, unfrozen or given another shape) since the last call get
            their baseline now and no value yet.
        """
        return self.measure().values()

    def measure(self) -> Measurement:
        """Like :meth:`step`, without waiting for the device: the values are read from the returned measurement.

        On CUDA the sums of all layers are copied to pinned host memory behind the measuring kernels, and the host
        goes on at once; :meth:`Measurement.ready` tells without waiting whether they have arrived. Elsewhere, and
        for sharded parameters (whose ranks must agree on what they measure), the measurement is complete on return.

        Example::

            >>> tracker = WeightChangeTracker(torch.nn.Linear(3, 2))
            >>> pending = tracker.measure()
            >>> pending.ready(), pending.values()
            (True, {'weight': 0.0, '_all': 0.0})
        """
        names, params = list(self._params), list(self._params.values())
        restarted = self._follow_storage(names, params)
        sums = self._measure() if params else None
        # While the device measures, the host looks for parameters that appeared or went away; those that went away
        # (or were replaced) since the last call were measured for nothing and are left out.
        selection = self._select() if self._watch.changed() else None
        if selection is None and not restarted:
            measured = [True] * len(params)
        else:
            now = self._params if selection is None else selection
            measured = [i not in restarted and now.get(names[i]) is param for i, param in enumerate(params)]
        arrival = None
        if self.sharded:
            table = reduce_measurement(sums, measured, self._replicas, selection is not None, self._device)
            sums, measured, changed = read_measurement(wait(*to_host(table)))
            if changed:  # on some rank: every rank selects again, and they keep what all of them select
                self._track(agree(self._select(), self._warn))
        else:
            if sums is not None:
                sums, arrival = to_host(sums)
            if selection is not None:
                self._track(selection)
        if sums is None or not any(measured):
            return Measurement([], None, None, self._values)
        kept = None if all(measured) else [i for i, ok in enumerate(measured) if ok]
        return Measurement(names if kept is None else [names[i] for i in kept], sums, arrival, self._values, kept)

    def snapshot_state(self) -> dict[str, Tensor]:
        """A host copy of the baseline of each tracked tensor (this rank's shard, for sharded parameters)."""
        return {name: snapshot.detach().cpu().clone() for name, snapshot in self._snapshots().items()}

    def load_snapshot(self, state: dict[str, Tensor]) -> None:
        """Make the tensors in ``state`` (from :meth:`snapshot_state`) the baseline of the layers of the same name.

        Raises:
            ValueError: if a tensor's shape differs from the tracked one's.
        """
        snapshots = self._snapshots()
        for name, value in state.items():
            if name in snapshots:
                if value.shape != snapshots[name].shape:
                    raise ValueError(
                        f"snapshot of {name!r} has shape {tuple(value.shape)}, expected {tuple(snapshots[name].shape)}"
                    )
                snapshots[name].copy_(value)

    def reset(self) -> None:
        """Make the current weights the new baseline, without measuring."""
        with torch.no_grad():
            for name, snapshot in self._snapshots().items():
                snapshot.copy_(local(self._params[name]))

    def _select(self) -> dict[str, Tensor]:
        """The parameters that pass the filters now, by name."""
        return dict(select_parameters(self.model, self.params, self.include, self.exclude))

    def _snapshots(self) -> dict[str, Tensor]:
        """The baseline of each tracked tensor, by name (views into the backends' storage)."""
        names, snapshots = list(self._params), {}
        for group in self._groups:
            snapshots.update((names[i], s) for i, s in zip(group.positions, group.backend.snapshots, strict=True))
        return snapshots

    def _track(self, selection: dict[str, Tensor]) -> None:
        """Follow exactly ``selection``: a parameter kept under its name keeps its baseline, others start now."""
        snapshots = self._snapshots()
        kept = {name: snapshots[name] for name, param in selection.items() if self._params.get(name) is param}
        self._params = selection
        self._arrange(kept)

    def _follow_storage(self, names: list[str], params: list[Tensor]) -> set[int]:
        """Build the backends again if a weight got new storage (``param.data = ...``, as ``model.to(...)`` does).

        The snapshot follows the weights to their dtype and device and keeps the baseline; a weight given another
        shape starts again. Returns the positions of those (left out of this measurement).
        """
        if not params or _data_pointers(params, self.sharded) == self._pointers:
            return set()
        self._watch.forget()  # new storage may come with a new number of dimensions: select again at this step
        snapshots = self._snapshots()
        restarted = {i for i, name in enumerate(names) if local(params[i]).shape != snapshots[name].shape}
        self._arrange({n: snapshots[n] for i, n in enumerate(names) if i not in restarted})
        return restarted

    def _arrange(self, baselines: dict[str, Tensor]) -> None:
        """One backend per device and dtype of the tracked weights, from ``baselines``.

        A name without a baseline starts from its current weights.
        """
        names, params = list(self._params), list(self._params.values())
        weights = [local(p) for p in params]
        positions: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, w in enumerate(weights):
            positions.setdefault((w.device, w.dtype), []).append(i)
        self._groups = []  # the old snapshots live on in ``baselines`` only
        for members in positions.values():
            backend = create_backend(
                [weights[i] for i in members],
                [baselines.get(names[i]) for i in members],
                self.norm,
                self.kernel,
                self.snapshot_device,
                self._warn,
            )
            self._groups.append(_Group(members, backend))
        order = [i for group in self._groups for i in group.positions]
        any_param = next(iter(self.model.parameters()), None)
        self._device = weights[0].device if weights else local(any_param).device if any_param is not None else None
        self._order = None if order == sorted(order) else torch.tensor(order).argsort().to(self._device)
        self._pointers = _data_pointers(params, self.sharded)
        if self.sharded:
            self._replicas = torch.tensor([copies(p) for p in params], dtype=torch.float64).to(self._device)

    def _measure(self) -> Tensor:
        """The ``(2, k)`` float64 sums of every tracked tensor, in tracked order, on the first weight's device."""
        with torch.no_grad():
            parts = [group.backend.measure() for group in self._groups]
        sums = parts[0] if len(parts) == 1 else torch.cat([part.to(self._device) for part in parts], dim=1)
        return sums if self._order is None else sums[:, self._order]

    def _values(self, names: list[str], sums: Tensor) -> dict[str, float]:
        """``{name: value}`` from host sums, plus ``"_all"`` from the sums of all columns; warns of undefined values."""
        sums = torch.cat([sums, sums.sum(dim=1, keepdim=True)], dim=1)
        values = ratios(sums, self.norm).tolist()
        names = [*names, ALL_KEY]
        if not all(map(math.isfinite, values)):
            for name, value, denominator in zip(names, values, sums[1].tolist(), strict=True):
                if denominator == 0.0:
                    self._warn((name, "zero"), f"RWC of {name!r} is nan: its previous weights are all zero.")
                elif not math.isfinite(value):
                    self._warn((name, "nonfinite"), f"RWC of {name!r} is {value}: its weights contain NaN or inf.")
        return dict(zip(names, values, strict=True))


def check_settings(
    norm: str,
    params: str,
    include: str | Sequence[str] | None,
    exclude: str | Sequence[str] | None,
    kernel: str,
) -> tuple[list[re.Pattern[str]], list[re.Pattern[str]]]:
    """Check the settings of a tracker (a ``ValueError`` names the bad one); return the compiled patterns.

    Example::

        >>> check_settings("l1", "weights", "fc", None, "auto")
        ([re.compile('fc')], [])
        >>> check_settings("l1", "biases", None, None, "auto")
        Traceback (most recent call last):
        ...
        ValueError: params must be one of ('weights', 'trainable'), got 'biases'
    """
    check_choice("norm", norm, NORMS)
    check_choice("params", params, PARAM_SELECTIONS)
    check_choice("kernel", kernel, KERNELS)
    return compile_patterns(include, "include"), compile_patterns(exclude, "exclude")


class Measurement:
    """One measurement on its way to the host (see :meth:`WeightChangeTracker.measure`).

    Args:
        names: the names of the measured columns of ``sums``.
        sums: the ``(2, k)`` float64 sums on the host (still arriving while ``arrival`` has not happened).
        arrival: a CUDA event recorded after the copy of ``sums``, or ``None`` if they are there already.
        finish: turns names and host sums into values (the tracker's, with its warnings).
        columns: the columns of ``sums`` that belong to ``names``; ``None`` for all of them.
    """

    def __init__(
        self,
        names: list[str],
        sums: Tensor | None,
        arrival: torch.cuda.Event | None,
        finish: Callable[[list[str], Tensor], dict[str, float]],
        columns: list[int] | None = None,
    ) -> None:
        self._names, self._sums, self._arrival, self._finish, self._columns = names, sums, arrival, finish, columns
        self._values: dict[str, float] | None = None

    @classmethod
    def of(cls, values: dict[str, float], names: list[str] | None = None, sums: Tensor | None = None) -> Measurement:
        """A measurement whose values (and sums) are known already, as when another rank measured them.

        Example::

            >>> Measurement.of({"fc.weight": 0.5, "_all": 0.5}).values()
            {'fc.weight': 0.5, '_all': 0.5}
        """
        measurement = cls(names or [], sums, None, lambda names, sums: values)
        measurement._values = values
        return measurement

    def ready(self) -> bool:
        """Whether the sums have reached the host (:meth:`values` will not wait)."""
        return self._arrival is None or self._arrival.query()

    def sums(self) -> tuple[list[str], Tensor]:
        """The measured tensors' names and their ``(2, k)`` float64 numerator and denominator sums, on the host.

        Sums add up: the value of several tensors taken as one vector (a block, for example) is the ratio of their
        summed sums (see :func:`~lightning_rwc.blocks.block_values`). Waits for the device like :meth:`values`.

        Example::

            >>> tracker = WeightChangeTracker(torch.nn.Linear(3, 2))
            >>> names, sums = tracker.measure().sums()
            >>> names, sums.shape
            (['weight'], torch.Size([2, 1]))
        """
        if self._sums is None:
            return self._names, torch.zeros(2, 0, dtype=torch.float64)
        self._sums, self._arrival = wait(self._sums, self._arrival), None
        if self._columns is not None:
            self._sums, self._columns = self._sums[:, self._columns], None
        return self._names, self._sums

    def values(self) -> dict[str, float]:
        """``{parameter name: RWC}`` plus ``"_all"``, as :meth:`WeightChangeTracker.step` returns them.

        Waits for the device if the sums have not arrived yet.
        """
        if self._values is None:
            names, sums = self.sums()
            self._values = self._finish(names, sums) if sums.shape[1] else {}
        return self._values


@dataclass
class _Group:
    """The tracked tensors of one device and dtype (their positions in tracked order) and the backend measuring them."""

    positions: list[int]
    backend: Backend


def to_host(table: Tensor) -> tuple[Tensor, torch.cuda.Event | None]:
    """The single device-to-host transfer of a measurement: every sum at once.

    From CUDA the copy goes to pinned host memory without waiting for the device, and the returned event marks its
    arrival; from elsewhere it is an ordinary copy (no event).

    Example::

        >>> host, arrival = to_host(torch.tensor([[1.0, 2.0], [4.0, 8.0]]))
        >>> host.tolist(), arrival
        ([[1.0, 2.0], [4.0, 8.0]], None)
    """
    if table.device.type != "cuda":
        return table.cpu(), None
    host = torch.empty(table.shape, dtype=table.dtype, pin_memory=True)
    host.copy_(table, non_blocking=True)
    arrival = torch.cuda.Event()
    arrival.record(torch.cuda.current_stream(table.device))
    return host, arrival


def wait(host: Tensor, arrival: torch.cuda.Event | None) -> Tensor:
    """``host`` once the transfer that fills it (see :func:`to_host`) has arrived (waiting only if it has not)."""
    if arrival is not None and not arrival.query():
        arrival.synchronize()
    return host


def _data_pointers(params: list[Tensor], sharded: bool) -> list[int]:
    """Where each tracked tensor's memory starts (its local shard's, for sharded parameters)."""
    if sharded:
        return [local(p).data_ptr() for p in params]
    return list(map(Tensor.data_ptr, params))
