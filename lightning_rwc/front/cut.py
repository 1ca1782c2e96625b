"""Where a model can be cut into its frozen front and the rest, and the two halves as functions: one rule, here.

The front is every computation of a module's forward up to the output of its last frozen block; its output must be
the only value the rest of the forward takes from it (the forward's own inputs may be used again). Two kinds of
model are cut:

- **a stack of layers** in an ``nn.ModuleList`` (Hugging Face's GPT-2 ``transformer.h``, BERT's
  ``encoder.layer``), when the last frozen block is one of its layers: the module that owns the list is split; the
  front is its forward until that layer has run, the rest its forward with the frozen layers replaced by the front's
  output;
- **any module whose forward** ``torch.fx`` **can trace**, when the last frozen block is one of its children
  (``nn.Sequential`` stacks of blocks, torchvision's ResNet and VGG): its graph is split after the last node of that
  child.

Anything else raises :class:`CutError` with the reason and :data:`SUPPORTED`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, fx, nn

SUPPORTED = (
    "nn.Sequential stacks of blocks, models whose forward torch.fx can trace with the frozen blocks first "
    "(torchvision's ResNet and VGG), and stacks of transformer layers in an nn.ModuleList (Hugging Face's GPT-2 and "
    "BERT)"
)
"""The models whose frozen front can be cut off and cached, in words (for messages)."""


class CutError(ValueError):
    """The model cannot be cut after its frozen front (the message says why, and what can be)."""


@dataclass
class Cut:
    """A module's forward in two halves: ``rest(front(*args, **kwargs), *args, **kwargs)`` is ``forward(...)``.

    Attributes:
        root: the module whose forward is split.
        front: computes the front's output, one tensor with the batch first.
        rest: the rest of the forward from that output and the forward's own inputs.
        modules: the modules the front runs (not ``root`` itself), known before it runs (``fx``) or found on its
            first call (stacks).
    """

    root: nn.Module
    front: Callable[..., Tensor]
    rest: Callable[..., Any]
    modules: list[nn.Module] = field(default_factory=list)


def cut(model: nn.Module, path: str) -> Cut:
    """Cut ``model`` after the module at ``path`` (dotted, from ``model``), the last block of its frozen front.

    Raises:
        CutError: if ``path`` is not a module of ``model``, or the forward around it cannot be cut there.

    Example::

        >>> import torch
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> halves = cut(model, "0")
        >>> x = torch.randn(5, 3)
        >>> torch.equal(halves.rest(halves.front(x), x), model(x))
        True
    """
    try:
        module = model.get_submodule(path)
    except AttributeError as err:
        raise CutError(f"{path!r} is not a module of the model") from err
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    if isinstance(parent, nn.ModuleList):
        owner_path, _, list_name = parent_path.rpartition(".")
        return _stack(model.get_submodule(owner_path), list_name, int(name))
    return _graph(parent, name, module)


class _Stop(Exception):
    """Ends a forward as soon as the front's output is known."""

    def __init__(self, output: Any) -> None:
        self.output = output


class _Replay(nn.Module):
    """Stands in for the frozen layers of a stack: gives the front's output, shaped as the last layer gave it."""

    def __init__(self, front: Tensor, template: Any) -> None:
        super().__init__()
        self.front, self.template = front, template

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self.template, tuple):
            return (self.front, *[None] * (len(self.template) - 1))
        return self.front


def _stack(owner: nn.Module, list_name: str, last: int) -> Cut:
    """The cut of the module that owns a stack of layers, after layer ``last``."""
    layers: nn.ModuleList = getattr(owner, list_name)
    forward = type(owner).forward.__get__(owner)  # the class's forward: the module's own may be replaced later
    result = Cut(owner, front=lambda *a, **k: None, rest=lambda *a, **k: None)
    templates: list[Any] = []

    def front(*args: Any, **kwargs: Any) -> Tensor:
        def stop(module: nn.Module, inputs: Any, output: Any) -> None:
            raise _Stop(output)

        def seen(module: nn.Module, inputs: Any) -> None:
            ran.append(module)

        ran: list[nn.Module] = []
        handles = [layers[last].register_forward_hook(stop)]
        if not result.modules:  # the first call finds which modules the front runs
            handles += [m.register_forward_pre_hook(seen) for m in owner.modules() if m is not owner]
        try:
            forward(*args, **kwargs)
        except _Stop as stopped:
            output = stopped.output
        else:
            raise CutError(f"layer {last} of {list_name!r} did not run in the forward of {type(owner).__name__}")
        finally:
            for handle in handles:
                handle.remove()
        result.modules = result.modules or ran
        templates[:] = [output]
        return output[0] if isinstance(output, tuple) else output

    def rest(front_output: Tensor, *args: Any, **kwargs: Any) -> Any:
        template = templates[0] if templates else front_output
        replaced = nn.ModuleList([_Replay(front_output, template), *list(layers)[last + 1 :]])
        setattr(owner, list_name, replaced)
        try:
            return forward(*args, **kwargs)
        finally:
            setattr(owner, list_name, layers)

    result.front, result.rest = front, rest
    return result


def _graph(parent: nn.Module, child: str, module: nn.Module) -> Cut:
    """The cut of ``parent``'s traced forward after the last node of its child ``child``."""
    try:
        traced = fx.symbolic_trace(parent)
    except Exception as err:  # tracing fails in many ways: data-dependent control flow, unsupported calls, ...
        raise CutError(f"torch.fx cannot trace {type(parent).__name__}: {type(err).__name__}: {err}") from err
    nodes = list(traced.graph.nodes)
    mine = [i for i, n in enumerate(nodes) if n.op == "call_module" and (n.target + ".").startswith(child + ".")]
    if not mine:
        raise CutError(f"the forward of {type(parent).__name__} does not call {child!r}")
    front = nodes[: mine[-1] + 1]
    placeholders = {n for n in front if n.op == "placeholder"}
    inner = set(front) - placeholders
    crossing = {used for n in nodes[mine[-1] + 1 :] for used in n.all_input_nodes if used in inner}
    if len(crossing) != 1:
        raise CutError(
            f"the rest of {type(parent).__name__}'s forward uses {len(crossing)} values of the front after "
            f"{child!r}, not one"
        )
    (output,) = crossing
    front_graph, rest_graph = fx.Graph(), fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in front:
        env[node] = front_graph.node_copy(node, env.__getitem__)
    front_graph.output(env[output])
    env = {output: rest_graph.placeholder("front_output")}
    for node in nodes:
        if node.op == "placeholder" or node not in front:
            env[node] = rest_graph.node_copy(node, env.__getitem__)
    modules = [parent.get_submodule(n.target) for n in front if n.op == "call_module"]
    return Cut(parent, fx.GraphModule(parent, front_graph), fx.GraphModule(parent, rest_graph), modules)
