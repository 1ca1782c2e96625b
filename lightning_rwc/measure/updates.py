"""The change an optimizer step just applied to a weight, read from the optimizer's state after the step.

One function per optimizer family gives ``W_t - W_{t-1}`` of a piece of a weight from the step's own inputs as they
stand after it (the weight, its gradient, the optimizer's state, the parameter group's settings at that step), with
PyTorch's formulas for its for-loop, multi-tensor (``foreach``) and fused implementations alike:

==========================  ==================================================================================
optimizer                   the change of a step
==========================  ==================================================================================
``SGD``, momentum           ``-lr * buf`` (the buffer holds the gradient, its weight decay and the momentum)
``SGD``, otherwise          ``-lr * (g + wd * W_{t-1} + momentum * buf)``, written with ``W_t``
``Adam``                    ``-lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)`` (``v``: the max for amsgrad)
``AdamW`` (decoupled)       the same, less ``lr * wd * W_{t-1}``, written with ``W_t``
==========================  ==================================================================================

``g`` is the gradient (negated with ``maximize``; divided by the ``grad_scale`` an AMP ``GradScaler`` gives a fused
optimizer). The change is computed in float32 (float64 for float64 weights) from the state, so for half-precision
weights it is the update the optimizer computed, not the smaller or larger change that rounding let into the
weights. :func:`problem` says why an optimizer's update cannot be read this way (then the tracker measures its
tensors against a snapshot).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer

from lightning_rwc.measure.functional import accumulation_dtype

Change = tuple[Tensor, float | Tensor]
"""A change given as ``(terms, factor)``: the change is ``factor * terms``. ``terms`` may be the optimizer's own state
(never to be written), so that a change that is a multiple of it costs nothing to form."""
Rule = Callable[[Tensor, Tensor, dict[str, Tensor], dict[str, Any], Tensor | None], Change]
"""``rule(weight, grad, state, group, grad_scale) -> (terms, factor)``: elementwise, for any piece of a weight that
the step updated (one with a gradient: the optimizers leave a weight without one as it is)."""

_COMMON = {"params", "param_names", "lr", "weight_decay", "maximize", "foreach", "differentiable", "fused"}
_SCHEDULERS = {"initial_lr", "base_lr", "max_lr", "min_lr", "base_momentum", "max_momentum", "name"}
_FOREACH = ("cuda", "xpu")  # where PyTorch's optimizers default to their multi-tensor implementation
_OPTIONS: dict[type[Optimizer], set[str]] = {
    SGD: _COMMON | {"momentum", "dampening", "nesterov"},
    Adam: _COMMON | {"betas", "eps", "amsgrad", "capturable", "decoupled_weight_decay"},
    AdamW: _COMMON | {"betas", "eps", "amsgrad", "capturable", "decoupled_weight_decay"},
}


def problem(optimizer: Optimizer) -> str | None:
    """Why the change of ``optimizer``'s steps cannot be read from its state, or ``None`` if it can.

    Example::

        >>> params = [torch.nn.Parameter(torch.ones(2))]
        >>> problem(torch.optim.AdamW(params)) is None, problem(torch.optim.RMSprop(params))
        (True, 'RMSprop is not among the optimizers whose update is read (SGD, Adam, AdamW)')
    """
    kind = type(optimizer)
    if kind not in _OPTIONS:
        return f"{kind.__name__} is not among the optimizers whose update is read (SGD, Adam, AdamW)"
    for group in optimizer.param_groups:
        unknown = sorted(set(group) - _OPTIONS[kind] - _SCHEDULERS)
        if unknown:
            return f"its parameter groups have options this reading does not know ({', '.join(unknown)})"
        if group.get("differentiable"):
            return "it is differentiable (differentiable=True)"
    return None


def rule(optimizer: Optimizer) -> Rule:
    """The function that gives the change of a step of ``optimizer`` (one whose :func:`problem` is ``None``)."""
    return sgd_change if isinstance(optimizer, SGD) else adam_change


def sgd_change(
    weight: Tensor, grad: Tensor, state: dict[str, Tensor], group: dict[str, Any], grad_scale: Tensor | None
) -> Change:
    """The change of ``weight`` in the step of :class:`torch.optim.SGD` that just ended.

    Example::

        >>> weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> sgd = torch.optim.SGD([weight], lr=0.1, weight_decay=0.5)
        >>> before = weight.detach().clone()
        >>> weight.grad = torch.tensor([1.0, 1.0]); sgd.step()
        >>> terms, factor = sgd_change(weight.detach(), weight.grad, sgd.state[weight], sgd.param_groups[0], None)
        >>> torch.allclose(terms * factor, weight.detach() - before)
        True
    """
    lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
    buffer = state.get("momentum_buffer")
    if momentum != 0 and not group["nesterov"]:  # the buffer is the whole direction: nothing to compute
        return buffer, -lr
    direction = _gradient(grad, group, grad_scale, accumulation_dtype(weight.dtype))
    if momentum != 0 and not _nesterov_in_gradient(group, weight, decay):
        direction = direction.add_(buffer, alpha=momentum)
    if _is_zero(decay):
        return direction, -lr
    # W_t = W_{t-1} (1 - lr wd) - lr d, so W_t - W_{t-1} = -lr (d + wd W_t) / (1 - lr wd)
    return direction.add_(weight, alpha=decay), -lr / (1 - lr * decay)


def adam_change(
    weight: Tensor, grad: Tensor, state: dict[str, Tensor], group: dict[str, Any], grad_scale: Tensor | None
) -> Change:
    """The change of ``weight`` in the step of :class:`torch.optim.Adam` or :class:`torch.optim.AdamW` that just ended.

    Example::

        >>> weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> adamw = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.5)
        >>> before = weight.detach().clone()
        >>> weight.grad = torch.tensor([1.0, 3.0]); adamw.step()
        >>> terms, factor = adam_change(weight.detach(), weight.grad, adamw.state[weight], adamw.param_groups[0], None)
        >>> torch.allclose(terms * factor, weight.detach() - before)
        True
    """
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    step = _scalar(state["step"])
    second = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
    correction1, correction2 = 1 - _scalar(beta1) ** step, 1 - _scalar(beta2) ** step
    denominator = torch.sqrt(_exact(second)).div_(_sqrt(correction2)).add_(eps)
    first = _exact(state["exp_avg"])
    decay = lr * group["weight_decay"] if group.get("decoupled_weight_decay", False) else 0.0
    if _is_zero(decay):  # Adam's weight decay is in the gradient, and so in the moments
        return torch.div(first, denominator, out=denominator), -lr / correction1
    # W_t = W_{t-1} (1 - lr wd) - u, so W_t - W_{t-1} = -(u + lr wd W_t) / (1 - lr wd), u = lr / c1 * m / denominator
    scale = lr / (correction1 * decay)
    if isinstance(scale, Tensor):  # addcdiv takes a number only
        return torch.div(first, denominator, out=denominator).mul_(scale).add_(weight), -decay / (1 - decay)
    return torch.addcdiv(_exact(weight), first, denominator, value=scale, out=denominator), -decay / (1 - decay)


def _nesterov_in_gradient(group: dict[str, Any], weight: Tensor, decay: float | Tensor) -> bool:
    """Whether SGD's multi-tensor step added the Nesterov momentum into the gradient itself.

    It does so where it did not copy the gradient before (no ``maximize``, no weight decay). PyTorch runs that
    implementation when asked to (``foreach=True``), and by default on CUDA and XPU unless ``fused=True``.
    """
    foreach = group["foreach"] or (group["foreach"] is None and not group["fused"] and weight.device.type in _FOREACH)
    return bool(group["nesterov"] and foreach and not group["maximize"]) and _is_zero(decay)


def _gradient(grad: Tensor, group: dict[str, Any], grad_scale: Tensor | None, dtype: torch.dtype) -> Tensor:
    """The gradient as the step used it: a float copy, unscaled, negated with ``maximize``."""
    direction = grad.to(dtype, copy=True)
    if grad_scale is not None:
        direction.div_(grad_scale.to(direction.device))
    return direction.neg_() if group["maximize"] else direction


def _exact(t: Tensor) -> Tensor:
    """``t`` in the dtype the change is computed in (itself when it has that dtype)."""
    return t.to(accumulation_dtype(t.dtype))


def _is_zero(x: Tensor | float) -> bool:
    """Whether a number is zero (a tensor, such as a tensor learning rate times a decay, counts as not zero)."""
    return not isinstance(x, Tensor) and x == 0


def _scalar(x: Tensor | float) -> Tensor | float:
    """``x`` as a Python number when it lives on the CPU (no device sync), else the device tensor itself."""
    return x.item() if isinstance(x, Tensor) and x.device.type == "cpu" else x


def _sqrt(x: Tensor | float) -> Tensor | float:
    """The square root of a number or a tensor."""
    return x.sqrt() if isinstance(x, Tensor) else x**0.5
