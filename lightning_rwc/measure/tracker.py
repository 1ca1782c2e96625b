"""The tracker's lifecycle: which parameters it follows, their baselines, one measurement per step, its state.

Plain PyTorch, no Lightning. The measuring itself is done by the backends of :mod:`lightning_rwc.measure.backends`
(one per device and dtype of the tracked weights), the formula lives in :mod:`lightning_rwc.measure.functional`,
the choice of tensors in :mod:`lightning_rwc.measure.select` and the collectives for sharded parameters in
:mod:`lightning_rwc.measure.sharding`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_rwc.measure.adapters import AdapterMode, adapter_rows
from lightning_rwc.measure.backends import Kernel
from lightning_rwc.measure.functional import Norm
from lightning_rwc.measure.groups import BackendGroups, Tracked, same, value
from lightning_rwc.measure.measurement import Measurement, named_values, to_host, wait
from lightning_rwc.measure.select import ParamSelection, select_parameters
from lightning_rwc.measure.settings import MeasureSettings, Source
from lightning_rwc.measure.sharding import agree, is_sharded, local, read_measurement, reduce_measurement
from lightning_rwc.measure.source import OptimizerSource
from lightning_rwc.measure.watch import ParameterWatch
from lightning_rwc.warn_once import Emit, WarnOnce


class WeightChangeTracker:
    """Measure the relative weight change (RWC) of each layer between consecutive calls of :meth:`step`.

    For a tracked tensor ``W`` whose previous measurement (or, the first time, its value when tracking started) is
    ``P``, the value returned under its parameter name is ``||W - P|| / ||P||`` in the chosen norm (see
    :mod:`lightning_rwc.measure.functional`). The key ``"_all"`` holds the same ratio for all tracked tensors taken
    as one vector (for ``l1`` the summed absolute changes over the summed absolute weights, never a sum of per-layer
    ratios).

    Everything is computed on the device of the weights, with sums accumulated in float32 (float64 for float64
    weights), and the sums of all layers reach the host in one transfer. A layer whose previous weights are all zero
    gets ``nan`` (the ratio is undefined) and NaN or inf weights give ``nan`` or ``inf``; each case is reported once
    per layer through ``warn``, never by an exception.

    Names are those of ``named_parameters()`` without what wrappers insert (:mod:`lightning_rwc.measure.select`).
    With sharded parameters (``DTensor``), call :meth:`step` on every rank: one all-reduce adds up the shards.

    Args:
        model: the module whose parameters are tracked. Only parameters with ``requires_grad`` are tracked; a
            parameter shared by several modules is measured once, under its first name.
        norm: ``"l1"`` (the paper's formula), ``"l2"`` (Frobenius norms) or ``"elementwise"`` (what the authors'
            released code computed: the mean of ``|W - P| / |P|`` over the elements where ``P`` is not zero).
        params: ``"weights"`` tracks parameters with more than one dimension (conv and linear kernels,
            embeddings), as the paper's code did; ``"trainable"`` tracks every trainable parameter.
        include: regular expressions; when given, only parameters whose name matches one (``re.search``) are kept.
        exclude: regular expressions; parameters whose name matches one are left out.
        snapshot_device: ``None`` keeps the snapshot beside each weight (fastest); ``"cpu"`` in host memory.
        kernel: ``"auto"`` measures CUDA weights with a fused Triton kernel where it works (PyTorch's multi-tensor
            kernels otherwise, with a warning) and CPU weights in cache-sized batches; ``"foreach"`` uses PyTorch's
            multi-tensor kernels everywhere; ``"triton"`` insists on the Triton kernel.
        adapters: ``"effective"`` measures each adapter of a LoRA layer (PEFT) by the change of the layer's
            effective weight, in one row named as the layer's weight (:mod:`lightning_rwc.measure.adapters`);
            ``"factors"`` tracks the adapters' factors ``lora_A`` and ``lora_B`` as parameters.
        source: ``"snapshot"`` compares the weights with a copy kept from the previous measurement;
            ``"optimizer"`` keeps no copy: each measurement is the change of the last step of ``optimizer``, read
            from its state right after the step (:mod:`lightning_rwc.measure.source`). Call :meth:`step` after every
            optimizer step then. SGD, Adam and AdamW are read; other optimizers' tensors fall back to a snapshot,
            with a warning. Changes the optimizer did not make (by hand, an EMA swap, a checkpoint load) are not
            seen.
        optimizer: with ``source="optimizer"``, the optimizer (or list of optimizers) that updates the model.
        warn: where warnings go (once per layer and kind); by default a :class:`RuntimeWarning` at the caller.

    Attributes:
        sharded: whether the model holds sharded parameters (then every rank measures its shards).

    Raises:
        TypeError: if ``model`` is not a :class:`torch.nn.Module`.
        ValueError: if ``norm``, ``params``, ``kernel`` or ``source`` is unknown, a pattern does not compile, nothing
            is left to track, or ``source="optimizer"`` comes without an optimizer.
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
        adapters: AdapterMode = "effective",
        source: Source = "snapshot",
        optimizer: Optimizer | Sequence[Optimizer] | None = None,
        warn: Emit | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}: pass the network itself.")
        self.settings = MeasureSettings(norm, params, include, exclude, snapshot_device, kernel, adapters, source)
        if (source == "optimizer") != (optimizer is not None):
            raise ValueError(
                f"optimizer is needed with source='optimizer' and only then (source={source!r}, optimizer="
                f"{type(optimizer).__name__ if optimizer is not None else None})"
            )
        self.model = model
        self.sharded = any(map(is_sharded, model.parameters()))
        self._patterns = self.settings.patterns()
        self._warn = WarnOnce(warn)
        self._watch = ParameterWatch(model)
        self._params: dict[str, Tracked] = {}
        self._source = None if optimizer is None else OptimizerSource(optimizer, self.settings.norm, self._warn)
        self._groups = BackendGroups(self.settings, self._warn, self._source)
        self._finish = functools.partial(named_values, norm=self.settings.norm, warn=self._warn)
        self._watch.changed()
        selection = self._select()
        self._track(agree(selection, self._warn) if self.sharded else selection)
        if not self._params:
            raise ValueError(
                f"Nothing to track in {type(model).__name__}: no trainable parameter passes params={params!r}, "
                f"include={include!r}, exclude={exclude!r}. Loosen the filters (for example params='trainable')."
            )

    @classmethod
    def from_settings(
        cls,
        model: nn.Module,
        settings: MeasureSettings,
        optimizers: Optimizer | Sequence[Optimizer] | None = None,
        warn: Emit | None = None,
        baseline: dict[str, Tensor] | None = None,
    ) -> WeightChangeTracker:
        """A tracker of ``model`` with ``settings``, as the callback makes one.

        ``optimizers`` are used with ``source="optimizer"`` only. The tracker continues from ``baseline`` (a
        :meth:`state_dict`) where it fits the model; where it does not, from the current weights, with a warning.
        """
        s = settings
        optimizers = optimizers if s.source == "optimizer" else None
        options = (s.snapshot_device, s.kernel, s.adapters, s.source)
        tracker = cls(model, s.norm, s.params, s.include, s.exclude, *options, optimizer=optimizers, warn=warn)
        try:
            tracker.load_state_dict(baseline or {})
        except ValueError as err:  # a checkpoint of another model: its baseline does not fit this one
            tracker.reset()
            tracker._warn("baseline", f"The checkpoint's baseline does not fit this model ({err}): curves restart.")
        return tracker

    @property
    def names(self) -> list[str]:
        """Names of the tracked parameters, in the order of ``model.named_parameters()``."""
        return list(self._params)

    @property
    def snapshot_bytes(self) -> int:
        """Bytes held by the snapshot: one copy of the tracked weights (or shards), small CPU tensors' rows filled."""
        storages = [snapshot.untyped_storage() for snapshot in self._groups.snapshots().values()]
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
        restarted = self._groups.follow_storage(self._params, self.sharded)
        if restarted is not None:  # new storage may come with a new number of dimensions: select again at this step
            self._watch.forget()
        sums = self._groups.measure() if params else None
        restarted = (restarted or set()) | self._groups.unmeasured()  # without exactly one step of their optimizer
        # While the device measures, the host looks for parameters that appeared or went away; those that went away
        # (or were replaced) since the last call were measured for nothing and are left out.
        selection = self._select() if self._watch.changed() else None
        if selection is None and not restarted:
            measured = [True] * len(params)
        else:
            now = self._params if selection is None else selection
            measured = [i not in restarted and same(now.get(names[i]), param) for i, param in enumerate(params)]
        arrival = None
        if self.sharded:
            device = self._groups.device or self._any_device()
            table = reduce_measurement(sums, measured, self._groups.replicas, selection is not None, device)
            sums, measured, changed = read_measurement(wait(*to_host(table)))
            if changed:  # on some rank: every rank selects again, and they keep what all of them select
                self._track(agree(self._select(), self._warn))
        else:
            if sums is not None:
                sums, arrival = to_host(sums)
            if selection is not None:
                self._track(selection)
        if sums is None or not any(measured):
            return Measurement([], None, None, self._finish)
        kept = None if all(measured) else [i for i, ok in enumerate(measured) if ok]
        return Measurement(names if kept is None else [names[i] for i in kept], sums, arrival, self._finish, kept)

    def state_dict(self) -> dict[str, Tensor]:
        """A host copy of the baseline of each tracked tensor (this rank's shard, for sharded parameters)."""
        return {name: snapshot.detach().cpu().clone() for name, snapshot in self._groups.snapshots().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Make the tensors in ``state`` (from :meth:`state_dict`) the baseline of the layers of the same name.

        Raises:
            ValueError: if a tensor's shape differs from the tracked one's.
        """
        snapshots = self._groups.snapshots()
        for name, saved in state.items():
            if name in snapshots:
                if saved.shape != snapshots[name].shape:
                    raise ValueError(
                        f"snapshot of {name!r} has shape {tuple(saved.shape)}, expected {tuple(snapshots[name].shape)}"
                    )
                snapshots[name].copy_(saved)

    def reset(self) -> None:
        """Make the current weights the new baseline, without measuring."""
        with torch.no_grad():
            for name, snapshot in self._groups.snapshots().items():
                snapshot.copy_(value(self._params[name]))
        if self._source is not None:
            self._source.forget()

    def close(self) -> None:
        """Stop following the optimizer's steps (``source="optimizer"``): its hooks are removed."""
        if self._source is not None:
            self._source.close()

    def _select(self) -> dict[str, Tracked]:
        """The parameters (and adapter rows) that pass the filters now, by name."""
        rows = adapter_rows(self.model, self._warn) if self.settings.adapters == "effective" else None
        return dict(select_parameters(self.model, self.settings.params, *self._patterns, rows))

    def _any_device(self) -> torch.device | None:
        """The device of the model's first parameter, for a rank that tracks nothing now."""
        param = next(iter(self.model.parameters()), None)
        return None if param is None else local(param).device

    def _track(self, selection: dict[str, Tracked]) -> None:
        """Follow exactly ``selection``: a parameter kept under its name keeps its baseline, others start now."""
        snapshots = self._groups.snapshots()
        kept = {name: snapshots[name] for name, param in selection.items() if same(self._params.get(name), param)}
        self._params = selection
        self._groups.arrange(selection, kept, self.sharded)
