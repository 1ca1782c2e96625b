"""Noticing, cheaply, that a model's parameters may have changed since the last measurement.

A tracker has to follow parameters that appear, go away, are replaced, frozen or unfrozen. Walking the module tree
for that is most of the host's work in a measurement on a GPU (a few hundred microseconds for ResNet-152), longer
than the kernel itself. :class:`ParameterWatch` walks the tree only when something may have changed:

- every parameter and submodule registration in the process (``setattr``, ``register_parameter``, ``add_module``)
  is counted by PyTorch's global registration hooks of :mod:`torch.nn`;
- the other changes (``del module.weight``, ``module.weight = None``, ``requires_grad_``, a container's ``del``,
  ``insert`` or ``pop``) show in a quick look at the modules of the last walk: the identity of every parameter, the
  number of children of every module and every ``requires_grad`` flag, read without a Python loop.
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

_registrations = 0
"""Parameters and submodules registered in this process since the hooks were installed."""


def _count(module: nn.Module, name: str, value: object) -> None:
    global _registrations
    _registrations += 1


@functools.cache
def _install_hooks() -> None:
    """Count registrations from now on (once per process; the hooks change nothing they see)."""
    from torch.nn.modules.module import (
        register_module_module_registration_hook,
        register_module_parameter_registration_hook,
    )

    register_module_parameter_registration_hook(_count)
    register_module_module_registration_hook(_count)


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
        _install_hooks()
        self.model = model
        self._registrations = -1  # no walk yet
        self._layout: list[tuple[str, int, bool, int]] | None = None
        self._modules: list[nn.Module] = []
        self._params: list[nn.Parameter | None] = []
        self._children: list[int] = []
        self._flags: list[bool] = []

    def changed(self) -> bool:
        """Whether the layout differs from the one seen at the last call (``True`` at the first call)."""
        if self._registrations == _registrations and self._looks_the_same():
            return False
        self._registrations = _registrations  # read before walking: a registration meanwhile is seen next time
        self._modules = walk(self.model)
        self._params, self._children, self._flags = self._look()
        layout = module_layout(self.model, self._modules)
        if layout == self._layout:
            return False
        self._layout = layout
        return True

    def forget(self) -> None:
        """Walk the tree at the next call (for changes no registration or quick look shows, such as a new ``ndim``)."""
        self._registrations = -1

    def _look(self) -> tuple[list[nn.Parameter | None], list[int], list[bool]]:
        params = list(chain.from_iterable(map(dict.values, map(_PARAMETERS, self._modules))))
        children = list(map(len, map(_CHILDREN, self._modules)))
        return params, children, list(map(_REQUIRES_GRAD, filter(_PRESENT, params)))

    def _looks_the_same(self) -> bool:
        params, children, flags = self._look()
        same_params = len(params) == len(self._params) and all(map(operator.is_, params, self._params))
        return same_params and children == self._children and flags == self._flags


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
