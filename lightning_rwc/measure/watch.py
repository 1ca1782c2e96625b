"""Noticing, cheaply and without global state, that a model's parameters may have changed since the last look.

A tracker follows parameters that appear, go away, are replaced, frozen or unfrozen. Walking the module tree for
that is most of the host's work in a measurement on a GPU (a few hundred microseconds for ResNet-152), longer than
the kernel itself. :class:`ParameterWatch` walks it only when a quick look at the modules of the last walk differs:
the names and identities of every registered parameter and submodule, and every ``requires_grad`` flag, read
without a Python loop. Every public way of changing parameters changes one of those in a module of the last walk
(a module attached anywhere is attached to one of them); only a new ``.data`` of a parameter does not, and the
tracker notices that from the weights' storage and calls :meth:`ParameterWatch.forget`.
"""

from __future__ import annotations

import functools
import operator
from itertools import chain

from torch import nn

_PARAMETERS = operator.attrgetter("_parameters")
_CHILDREN = operator.attrgetter("_modules")
_REQUIRES_GRAD = operator.attrgetter("requires_grad")
_PRESENT = functools.partial(operator.is_not, None)


class ParameterWatch:
    """Tells whether the layout of ``model`` (see :func:`module_layout`) changed since the last call.

    Example::

        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> watch = ParameterWatch(model)
        >>> watch.changed(), watch.changed()
        (True, False)
        >>> model[0].weight.requires_grad_(False)
        Parameter containing:...
        >>> watch.changed()
        True
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._modules: list[nn.Module] = []
        self._glance: _Glance | None = None  # no walk yet
        self._layout: list[tuple[str, int, bool, int]] | None = None

    def changed(self) -> bool:
        """Whether the layout differs from the one seen at the last call (``True`` at the first call)."""
        if self._glance is not None and self._glance.same(self._modules):
            return False
        self._modules = walk(self.model)
        self._glance = _Glance(self._modules)
        layout = module_layout(self.model, self._modules)
        if layout == self._layout:
            return False
        self._layout = layout
        return True

    def forget(self) -> None:
        """Walk the tree at the next call (for changes no quick look shows, such as a new ``ndim``)."""
        self._glance = None


class _Glance:
    """The registries of a list of modules, read in a few passes without a Python loop, and compared with identity."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.names, self.entries = self._read(modules)
        self.parameters = sum(map(len, map(_PARAMETERS, modules)))  # the first entries are the parameters
        self.flags = self._flags(self.entries)

    @staticmethod
    def _read(modules: list[nn.Module]) -> tuple[list[str], list[object]]:
        registries = [*map(_PARAMETERS, modules), *map(_CHILDREN, modules)]
        return list(chain.from_iterable(registries)), list(chain.from_iterable(map(dict.values, registries)))

    def _flags(self, entries: list[object]) -> list[bool]:
        return list(map(_REQUIRES_GRAD, filter(_PRESENT, entries[: self.parameters])))

    def same(self, modules: list[nn.Module]) -> bool:
        """Whether ``modules`` (those this glance was taken of) still hold the same names, objects and flags."""
        names, entries = self._read(modules)
        if names != self.names or len(entries) != len(self.entries):
            return False
        return all(map(operator.is_, entries, self.entries)) and self._flags(entries) == self.flags


def walk(model: nn.Module) -> list[nn.Module]:
    """``model`` and every module under it, each once (a module met twice, or a cycle, is walked once).

    Example::

        >>> shared = nn.Linear(2, 2)
        >>> len(walk(nn.Sequential(shared, shared, nn.ReLU())))
        3
    """
    modules, stack, seen = [], [model], {id(model)}
    while stack:
        module = stack.pop()
        modules.append(module)
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return modules


def module_layout(model: nn.Module, modules: list[nn.Module] | None = None) -> list[tuple[str, int, bool, int]]:
    """All that decides which parameters a tracker follows, as a list that is cheap to compare.

    Each submodule's attribute name and identity, and each parameter's attribute name, identity, ``requires_grad``
    and number of dimensions, in the order of ``modules`` (by default :func:`walk` of ``model``). It reads the
    registries of :class:`~torch.nn.Module` directly: twice as fast as ``named_parameters()``.

    Example::

        >>> [entry[0] for entry in module_layout(nn.Sequential(nn.Linear(2, 2)))]
        ['0', 'weight', 'bias']
    """
    layout: list[tuple[str, int, bool, int]] = []
    for module in walk(model) if modules is None else modules:
        for name, param in module._parameters.items():
            if param is not None:
                layout.append((name, id(param), param.requires_grad, param.ndim))
        for name, child in module._modules.items():
            if child is not None:
                layout.append((name, id(child), False, -1))
    return layout
