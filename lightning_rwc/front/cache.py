"""Skipping the frozen front's forward pass: its output is computed once per input sample and reused.

While a model trains with a frozen front (a prefix of its blocks frozen and in eval mode), the front's output for a
given input never changes. :class:`FrontCache` cuts the model after that front (:mod:`lightning_rwc.front.cut`),
puts its own forward in place of the forward of the module it cut, and for each batch computes the front only for
the samples it has not seen, takes the others from its store (:mod:`lightning_rwc.front.store`), and runs the rest of
the forward on them all. While the model is in eval mode (validation, testing) and for calls it cannot key (a batch
without tensors), the module's own forward runs.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from lightning_rwc.front.cut import SUPPORTED, Cut, CutError, cut
from lightning_rwc.front.store import ActivationStore, fingerprints
from lightning_rwc.validate import check_count
from lightning_rwc.warn_once import WarnOnce

_TRAINING_MODES = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)


class FrontCache:
    """Outputs of a model's frozen front, reused instead of running the front again for inputs seen before.

    Args:
        max_bytes: the most bytes of outputs kept in memory.
        folder: where to spill outputs beyond ``max_bytes``, as memory-mapped files; ``None``: keep only what fits.
        dtype: the dtype outputs are kept in: ``None`` (theirs), ``torch.float16`` (half the bytes of float32; at most
            2**-11 relative error per element) or ``torch.bfloat16`` (at most 2**-8).

    Attributes:
        hits: samples whose front output came from the store, since the cache was made.
        misses: samples whose front was computed, since then.

    Raises:
        ValueError: if ``max_bytes`` is not a whole number >= 0, or ``dtype`` is not a floating-point dtype.

    Example::

        >>> model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> _ = model[0].requires_grad_(False)
        >>> cache = FrontCache()
        >>> cache.attach(model, "0")
        True
        >>> x = torch.randn(4, 3)
        >>> _ = model(x); _ = model(x)
        >>> cache.hits, cache.misses
        (4, 4)
        >>> cache.detach()
    """

    def __init__(
        self, max_bytes: int = 1 << 30, folder: str | os.PathLike | None = None, dtype: torch.dtype | None = None
    ) -> None:
        check_count("max_bytes", max_bytes, minimum=0)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be None or a floating-point torch.dtype, got {dtype!r}")
        self.max_bytes, self.folder, self.dtype = max_bytes, folder, dtype
        self.store = ActivationStore(max_bytes, folder, dtype)
        self.hits = self.misses = 0
        self.path: str | None = None
        """The module path after which the model is cut now (``None``: not attached)."""
        self._cut: Cut | None = None
        self._model: nn.Module | None = None
        self._warn = WarnOnce()
        self._checked = False
        self._like: tuple[torch.device, torch.dtype] | None = None  # where and in what the front's output lives

    @property
    def size(self) -> int:
        """Bytes of outputs held, in memory and in memory-mapped files."""
        return self.store.in_memory + self.store.spilled

    def attach(self, model: nn.Module, path: str, warn: WarnOnce | None = None) -> bool:
        """Cache the front of ``model`` up to and including the module at ``path``; forget what an earlier cut kept.

        Returns whether the model could be cut there; if not, the model is left as it is and ``warn`` (a
        :class:`RuntimeWarning` by default) says why, once per reason, with the models that can be cut.
        """
        if path == self.path and model is self._model:
            return True
        self.detach()
        self._warn = warn or self._warn
        try:
            self._cut = cut(model, path)
        except CutError as err:
            self._warn(("cut", str(err)), f"The frozen front is computed every step, not cached: {err}. {_SUPPORTED}")
            return False
        self._model, self.path, self._checked, self._like = model, path, False, None
        self._cut.root.forward = self._forward  # an instance attribute over the class's forward, removed by detach
        return True

    def detach(self) -> None:
        """Give the cut module its own forward back and forget every output kept."""
        if self._cut is not None and "forward" in vars(self._cut.root):
            del self._cut.root.forward
        self._cut, self._model, self.path = None, None, None
        self.store.clear()

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        halves = self._cut
        batch = _batch_size(args, kwargs)
        if not self._model.training or batch is None:  # the model's mode: the cut module may be all frozen, in eval
            return type(halves.root).forward(halves.root, *args, **kwargs)
        keys = fingerprints([*args, *kwargs.values()], batch)
        hit, stored = self.store.get(keys)
        missed = [i for i, h in enumerate(hit) if not h]
        computed = None
        if missed:
            index = torch.tensor(missed)
            devices = [i for i in range(torch.cuda.device_count())] if not self._checked else []
            # the first call is checked after it ran: a front that fails the check must not have drawn random numbers
            with torch.no_grad(), torch.random.fork_rng(devices, enabled=not self._checked):
                computed = halves.front(*_rows(args, index, batch), **_rows(kwargs, index, batch))
            self._like = computed.device, computed.dtype
            if not self._checked and not self._check(halves):  # this batch too runs the whole forward
                return type(halves.root).forward(halves.root, *args, **kwargs)
            self.store.put([keys[i] for i in missed], computed)
        self.hits, self.misses = self.hits + batch - len(missed), self.misses + len(missed)
        output = computed if stored is None else _assemble(hit, stored, computed, *self._like)
        return halves.rest(output, *args, **kwargs)

    def _check(self, halves: Cut) -> bool:
        """Whether the front is frozen and in eval mode (else its output would change); if not, stop caching."""
        self._checked = True
        trained = [m for m in halves.modules if any(p.requires_grad for p in m.parameters(recurse=False))]
        training = [m for m in halves.modules if isinstance(m, _TRAINING_MODES) and m.training]
        if trained or training:
            module = (trained or training)[0]
            what = "trains" if trained else f"is in training mode ({type(module).__name__})"
            self._warn(
                ("front", what),
                f"The frozen front is computed every step, not cached: a module it runs {what}, so its output would "
                "change. Freeze whatever the forward runs before the last frozen block.",
            )
            self.detach()
        return not (trained or training)


_SUPPORTED = f"Cached fronts: {SUPPORTED}."


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    """The batch size: the first dimension of the first tensor among the inputs (``None`` without a tensor)."""
    first = next((a for a in [*args, *kwargs.values()] if isinstance(a, Tensor) and a.dim()), None)
    return None if first is None else first.shape[0]


def _rows(inputs: Any, index: Tensor, batch: int) -> Any:
    """``inputs`` (a tuple or a dict) with every batch-first tensor cut down to the rows of ``index``."""

    def take(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() and value.shape[0] == batch:
            return value.index_select(0, index.to(value.device))
        return value

    if isinstance(inputs, dict):
        return {key: take(value) for key, value in inputs.items()}
    return tuple(take(value) for value in inputs)


def _assemble(
    hit: list[bool], stored: Tensor, computed: Tensor | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """The front's output for the whole batch: stored rows where ``hit``, computed rows elsewhere, in order."""
    if computed is None:
        return stored.to(device, dtype, non_blocking=True)
    output = torch.empty((len(hit), *stored.shape[1:]), device=device, dtype=dtype)
    found = torch.tensor(hit, device=device)
    output[found] = stored.to(device, dtype)
    output[~found] = computed
    return output
