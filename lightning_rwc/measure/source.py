"""Measuring from the optimizer's update: each step's change read after the step, with no copy of the weights.

With ``source="optimizer"`` a tracker keeps no snapshot of the weights it reads this way. Hooks on each optimizer
reduce, just before every step, the norm of each tracked weight it holds (the denominator) and, right after it, the
norm of the change the step applied (:mod:`lightning_rwc.measure.updates`), in pieces of at most :data:`CHUNK`
elements: no tensor of a weight's size is allocated or kept. The next measurement hands those sums on. A LoRA row's
factors are small: their values before the step are recovered from the update, and its effective weight measured
as from a snapshot (:mod:`lightning_rwc.measure.adapters`).

What the optimizer did not do is not seen: a weight changed by hand, by an EMA swap, weight normalisation or a
checkpoint load. A measurement covers exactly one step of each tensor's optimizer: a tensor whose optimizer took no
step since the last measurement (an AMP ``GradScaler`` that skipped it, batches that only accumulate gradients) gets
no value, and neither does one whose optimizer took several (with one warning). A weight that a step leaves alone
(it has no gradient) or that no optimizer holds has the value 0 whenever a step was measured. The ``l1`` and ``l2``
norms are read this way; ``elementwise`` needs each previous weight, and is measured against a snapshot.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_rwc.measure.adapters import AdapterMeasure, AdapterRow
from lightning_rwc.measure.backends.base import Backend
from lightning_rwc.measure.functional import EXPONENTS, accumulation_dtype, tensor_sums
from lightning_rwc.measure.sharding import full, local
from lightning_rwc.measure.updates import Rule, problem, rule
from lightning_rwc.warn_once import WarnOnce

CHUNK = {"cpu": 1 << 20}
"""At most how many elements of a weight are read and written at a time, by device type (elsewhere
``DEVICE_CHUNK``): pieces small enough to bound the memory a step's reading allocates, large enough that the
cost of each operation stays small beside its work."""
DEVICE_CHUNK = 1 << 22

SEVERAL_STEPS = (
    "source='optimizer' measures one optimizer step at a time: {} took several steps since the last measurement and "
    "got no value. Measure after every optimizer step (every_n_steps=1)."
)


class OptimizerSource(Backend):
    """The backend of the tensors measured from their optimizer's steps; it holds sums between a step and a measurement.

    Args:
        optimizers: the optimizers that update the model. One whose update cannot be read (see
            :func:`~lightning_rwc.measure.updates.problem`) is named in a warning, and :meth:`reads` refuses its
            tensors: the tracker measures those against a snapshot.
        norm: see :mod:`lightning_rwc.measure.functional`.
        warn: where warnings go.

    Raises:
        ValueError: if ``optimizers`` is empty or holds something that is not a :class:`torch.optim.Optimizer`.
    """

    def __init__(self, optimizers: Optimizer | Sequence[Optimizer], norm: str, warn: WarnOnce) -> None:
        super().__init__([], [], norm)
        optimizers = [optimizers] if isinstance(optimizers, Optimizer) else list(optimizers or [])
        if not optimizers or not all(isinstance(o, Optimizer) for o in optimizers):
            raise ValueError(
                f"source='optimizer' needs the optimizer(s) that update the model, got {optimizers!r}: pass "
                "optimizer=<a torch.optim.Optimizer> (or a list of them), or use source='snapshot'"
            )
        self.snapshots: list[Tensor] = []
        self.unmeasured: set[int] = set()
        """Positions that got no value in the last :meth:`measure` (no step, or several, since the one before)."""
        self._warn = warn
        self._others: set[int] = set()  # parameters of optimizers whose update is not read
        self._handles: list = []
        self._optimizers: list[Optimizer] = []
        this = weakref.ref(self)  # the optimizer's hooks do not keep the tracker alive
        for optimizer in optimizers:
            reason = problem(optimizer) if norm in EXPONENTS else f"norm={norm!r} needs each previous weight"
            if reason is None:
                self._optimizers.append(optimizer)
                self._handles.append(optimizer.register_step_pre_hook(_hook(this, OptimizerSource.before_step)))
                self._handles.append(optimizer.register_step_post_hook(_hook(this, OptimizerSource.after_step)))
                continue
            self._others.update(id(p) for group in optimizer.param_groups for p in group["params"])
            warn(
                ("source", id(optimizer)),
                f"source='optimizer': the tensors of {type(optimizer).__name__} are measured against a snapshot of "
                f"their weights instead, since {reason}.",
            )
        weakref.finalize(self, _remove, self._handles)  # a tracker dropped without close() leaves no hook behind
        self.follow([], [])

    def reads(self, tracked: Tensor | AdapterRow) -> bool:
        """Whether ``tracked`` is measured from its optimizer's steps (it is not held by an optimizer that is not)."""
        return not any(id(p) in self._others for p in _params(tracked))

    def follow(self, names: list[str], tracked: list[Tensor | AdapterRow]) -> None:
        """Measure ``tracked`` (named ``names``), in this order, from now on; steps taken before are forgotten."""
        self.names, self.weights = names, tracked
        self._index = {id(p): i for i, t in enumerate(tracked) for p in _params(t)}
        self.forget()

    def forget(self) -> None:
        """Drop what the steps since the last measurement left (as a new baseline does)."""
        self._sums: dict[int, Tensor] = {}
        self._before: dict[int, Tensor] = {}
        self._steps = [0] * len(self.weights)
        self._stepped = False

    def close(self) -> None:
        """Remove the hooks from the optimizers."""
        _remove(self._handles)
        self._optimizers = []

    def measure(self) -> Tensor:
        """The ``(2, k)`` sums of each tensor's step since the last call; :attr:`unmeasured` names those without."""
        several = [self.names[i] for i, steps in enumerate(self._steps) if steps > 1]
        self._warn.many("steps", several, SEVERAL_STEPS.format("{layer}"), SEVERAL_STEPS.format("{count} tensors"))
        held = {id(p) for optimizer in self._optimizers for group in optimizer.param_groups for p in group["params"]}
        self.unmeasured, columns = set(), []
        for i, tracked in enumerate(self.weights):
            sums = self._sums.get(i) if self._steps[i] == 1 else None
            idle = not self._steps[i] and self._stepped and not any(id(p) in held for p in _params(tracked))
            if sums is None and idle:  # no optimizer holds it, and one took a step: its change is zero
                sums = _unchanged(tracked, self.norm)
            if sums is None:
                self.unmeasured.add(i)
                sums = torch.zeros(2, dtype=torch.float64)
            columns.append(sums)
        self.forget()
        device = next((c.device for c in columns if c.device.type != "cpu"), torch.device("cpu"))
        return torch.stack([c.to(device, torch.float64) for c in columns], dim=1)

    def before_step(self, optimizer: Optimizer) -> None:
        """Reduce the norm of each tracked weight ``optimizer`` holds, as it is before the step."""
        positions = [i for i in map(self._index.get, _held(optimizer)) if i is not None]
        weights = [(i, local(w)) for i in positions if isinstance(w := self.weights[i], Tensor)]
        groups: dict[tuple[torch.device, torch.dtype], list[tuple[int, Tensor]]] = {}
        for i, weight in weights:
            groups.setdefault((weight.device, weight.dtype), []).append((i, weight))
        with torch.no_grad():
            for members in groups.values():
                sums = tensor_sums([weight for _, weight in members], self.norm)
                self._before.update(zip([i for i, _ in members], sums.unbind(), strict=True))

    def after_step(self, optimizer: Optimizer) -> None:
        """Reduce the change the step of ``optimizer`` just applied to each tracked tensor it holds."""
        found_inf = getattr(optimizer, "found_inf", None)  # set by a GradScaler for a fused step, which it may skip
        if isinstance(found_inf, Tensor) and bool(found_inf.item()):
            self._before.clear()
            return
        self._stepped = True
        step = _Step(optimizer, rule(optimizer), getattr(optimizer, "grad_scale", None))
        rows: dict[int, Tensor] = {}
        with torch.no_grad():
            for param in step.groups:
                i = self._index.get(id(param))
                if i is None or i in rows or (i not in self._before and isinstance(self.weights[i], Tensor)):
                    continue
                tracked = self.weights[i]
                if isinstance(tracked, AdapterRow):
                    rows[i] = torch.cat([step.previous(p).flatten() for p in tracked.raw()])
                else:
                    denominator = self._before.pop(i)
                    self._sums[i] = torch.stack([step.numerator(param, self.norm).to(denominator), denominator])
                self._steps[i] += 1
            if rows:
                measured = AdapterMeasure([self.weights[i] for i in rows], list(rows.values()), self.norm).measure()
                self._sums.update(zip(rows, measured.unbind(1), strict=True))


class _Step:
    """One step of one optimizer: the change it applied to each of its parameters."""

    def __init__(self, optimizer: Optimizer, change: Rule, scale: Tensor | None) -> None:
        self.optimizer, self.change, self.scale = optimizer, change, scale
        self.groups = {p: group for group in optimizer.param_groups for p in group["params"]}

    def numerator(self, param: Tensor, norm: str) -> Tensor:
        """The sum of ``|change| ** p`` over ``param``'s local tensor, piece by piece (zero without a gradient)."""
        weight = local(param)
        total = torch.zeros((), dtype=accumulation_dtype(weight.dtype), device=weight.device)
        if param.grad is None:  # the optimizers leave a weight without a gradient as it is
            return total
        grad, group, state = local(param.grad), self.groups[param], self.optimizer.state.get(param, {})
        tensors = {k: local(v) for k, v in state.items() if isinstance(v, Tensor) and v.shape == param.shape}
        scalars = {k: v for k, v in state.items() if k not in tensors}
        order, chunk = EXPONENTS[norm], CHUNK.get(weight.device.type, DEVICE_CHUNK)
        whole = weight.numel() <= chunk or not all(t.is_contiguous() for t in (weight, grad, *tensors.values()))
        factor = 1.0
        for start in [0] if whole else range(0, weight.numel(), chunk):

            def cut(t: Tensor, start: int = start) -> Tensor:
                return t if whole else t.view(-1)[start : start + chunk]

            pieces = {k: cut(v) for k, v in tensors.items()}
            terms, factor = self.change(cut(weight), cut(grad), scalars | pieces, group, self.scale)
            total += torch.linalg.vector_norm(terms, order, dtype=total.dtype) ** order
        return total * abs(factor) ** order

    def previous(self, param: Tensor) -> Tensor:
        """``param`` in full as it was before the step (an adapter's factor: small)."""
        now = full(param)
        if param not in self.groups or param.grad is None:
            return now
        state = self.optimizer.state[param]
        state = {k: full(v) if isinstance(v, Tensor) and v.shape == param.shape else v for k, v in state.items()}
        terms, factor = self.change(now, full(param.grad), state, self.groups[param], self.scale)
        return (now.to(terms.dtype) - terms * factor).to(now.dtype)


def _unchanged(tracked: Tensor | AdapterRow, norm: str) -> Tensor:
    """The ``(2,)`` sums of a tensor or an adapter row that did not change."""
    if isinstance(tracked, AdapterRow):
        return AdapterMeasure([tracked], [None], norm).measure()[:, 0]
    denominator = tensor_sums([local(tracked)], norm)[0]
    return torch.stack([torch.zeros_like(denominator), denominator])


def _held(optimizer: Optimizer) -> list[int]:
    """The ``id`` of each parameter ``optimizer`` holds."""
    return [id(p) for group in optimizer.param_groups for p in group["params"]]


def _params(tracked: Tensor | AdapterRow) -> tuple[Tensor, ...]:
    """The parameters an optimizer updates for ``tracked``: itself, or an adapter row's factors."""
    return tracked.raw() if isinstance(tracked, AdapterRow) else (tracked,)


def _remove(handles: list) -> None:
    """Remove each hook of ``handles`` (once: the list is emptied)."""
    while handles:
        handles.pop().remove()


def _hook(
    source: weakref.ref[OptimizerSource], method: Callable[[OptimizerSource, Optimizer], None]
) -> Callable[..., None]:
    """A step hook that hands the step to ``method`` of the source while the source exists."""

    def hook(optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        if (alive := source()) is not None:
            method(alive, optimizer)

    return hook
