"""Low-rank adapters (PEFT's LoRA) measured by the change of each adapted layer's effective weight.

A LoRA layer computes with ``W0 + s * B @ A``: a frozen base weight ``W0`` and, per adapter, trained factors ``A``
(``r x in``) and ``B`` (``out x r``, zero at the start) with a scale ``s``. The factors' own RWC says little (``B``
starts at zero, so its first value is undefined), so each adapter of each adapted layer becomes one row whose value
is the RWC of the layer's effective weight::

    ||s (B_t A_t - B_{t-1} A_{t-1})|| / ||W0 + sum over active adapters of s B_{t-1} A_{t-1}||

named as the layer's weight (``transformer.h.0.attn.c_attn.weight``, without PEFT's wrapper segments), with the
adapter's name before ``weight`` when the model holds several adapters. Merged adapters are part of the base weight
and are taken out of it, so merging does not change the value. The sums come from
:func:`~lightning_rwc.measure.functional.low_rank_sums`: only the factors are kept as the snapshot.

Layers are recognised by their attributes (``lora_A``, ``lora_B``, ``scaling``, ``get_base_layer``), so PEFT is not
imported. Linear layers (``fan_in_fan_out`` too, as GPT-2's ``Conv1D``), convolutions with a 1x1 ``lora_B`` and
embeddings are measured this way; a layer whose base weight is quantized or trained, or whose adapter is a variant
(DoRA), keeps its raw factors as rows, with one warning for all such layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_rwc.measure.backends.base import Backend
from lightning_rwc.measure.functional import low_rank_sums
from lightning_rwc.measure.select import parallel_wrappers, user_name
from lightning_rwc.measure.sharding import copies, first_row, full, local, world_size
from lightning_rwc.validate import choices
from lightning_rwc.warn_once import WarnOnce

AdapterMode = Literal["effective", "factors"]
ADAPTER_MODES = choices(AdapterMode)


@dataclass(frozen=True)
class AdapterRow:
    """One adapter of one adapted layer: a row of the measurement.

    Attributes:
        name: the row's name (the layer's weight, with the adapter when the model has several).
        layer: the LoRA layer (PEFT's ``LoraLayer``).
        adapter: the adapter's name.
    """

    name: str
    layer: nn.Module
    adapter: str

    def raw(self, adapter: str | None = None) -> tuple[Tensor, Tensor]:
        """The parameters ``A`` and ``B`` of ``adapter`` (this row's by default)."""
        adapter = self.adapter if adapter is None else adapter
        if adapter in self.layer.lora_A:
            return self.layer.lora_A[adapter].weight, self.layer.lora_B[adapter].weight
        return self.layer.lora_embedding_A[adapter], self.layer.lora_embedding_B[adapter]

    def factors(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """``U`` and ``V`` with ``U @ V`` the change ``B @ A`` makes, laid out as the base weight is stored."""
        if a.dim() > 2:  # convolution: the kernel's dimensions follow the input channels
            return b.flatten(1), a.flatten(1)
        if self.adapter in self.layer.lora_A and not getattr(self.layer, "fan_in_fan_out", False):
            return b, a
        return a.T, b.T  # stored transposed: Conv1D (fan_in_fan_out) and embeddings


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(raw name, module)`` of each LoRA layer of ``model``."""
    for name, module in model.named_modules():
        if all(hasattr(module, attribute) for attribute in ("lora_A", "lora_B", "scaling", "get_base_layer")):
            yield name, module


def adapter_rows(model: nn.Module, warn: WarnOnce) -> dict[int, AdapterRow]:
    """The row of each trainable LoRA factor of ``model``, by the factor's ``id``.

    Layers that cannot be measured by their effective weight are left out (their factors stay parameters) and
    share one warning.
    """
    parallel = parallel_wrappers(model)
    layers = list(lora_layers(model))
    adapters = {a for _, layer in layers for a in (*layer.lora_A, *getattr(layer, "lora_embedding_A", {}))}
    rows: dict[int, AdapterRow] = {}
    problems: dict[str, list[str]] = {}
    for raw, layer in layers:
        layer_name = user_name(f"{raw}.weight" if raw else "weight", parallel)
        for adapter in (*layer.lora_A, *getattr(layer, "lora_embedding_A", {})):
            name = layer_name if len(adapters) == 1 else f"{layer_name.removesuffix('weight')}{adapter}.weight"
            row = AdapterRow(name, layer, adapter)
            a, b = row.raw()
            if not (a.requires_grad or b.requires_grad):
                continue
            problem = _problem(row)
            if problem is None:
                rows |= {id(a): row, id(b): row}
            else:
                problems.setdefault(problem, []).append(name)
    for problem, names in problems.items():
        warn.many(
            ("adapter", problem),
            names,
            f"{{layer}} is measured by its raw LoRA factors, not its effective weight: {problem}.",
            f"{{count}} adapted layers are measured by their raw LoRA factors, not their effective weights: "
            f"{problem} ({{names}}).",
        )
    return rows


def _problem(row: AdapterRow) -> str | None:
    """Why ``row`` cannot be measured by its layer's effective weight, or ``None``."""
    layer, base = row.layer, row.layer.get_base_layer()
    weight = getattr(base, "weight", None)
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        return "the base weight is quantized or missing"
    if weight.requires_grad:
        return "the base weight is trained too"
    if row.adapter in getattr(layer, "lora_variant", {}):
        return "the adapter is a variant of LoRA (such as DoRA)"
    a, b = row.raw()
    if a.dim() > 2 and (any(size != 1 for size in b.shape[2:]) or getattr(base, "groups", 1) != 1):
        return "a grouped convolution or a lora_B kernel larger than 1x1"
    u, v = row.factors(a.detach(), b.detach())
    if u.shape[0] != weight.shape[0] or u.shape[0] * v.shape[1] != weight.numel():
        return "the factors' shapes do not match the base weight"
    return None


class AdapterMeasure(Backend):
    """Measures the effective change of adapter rows; each row's snapshot holds its ``A`` and ``B``, flattened.

    Args:
        weights: the rows, in the order of the sums.
        baselines: the previous snapshot of each row (from an earlier arrangement), or ``None`` to start now.
        norm: see :mod:`lightning_rwc.measure.functional`.
    """

    def __init__(self, weights: list[AdapterRow], baselines: list[Tensor | None], norm: str) -> None:
        super().__init__(weights, baselines, norm)
        self.snapshots = []
        for row, baseline in zip(weights, baselines, strict=True):
            now = current(row)
            same = baseline is not None and baseline.shape == now.shape
            self.snapshots.append(baseline.to(now) if same else now)

    def measure(self) -> Tensor:
        """The ``(2, k)`` float64 sums of every row (over this rank's rows of the base weight), then new snapshots."""
        now = [[full(t) for t in row.raw()] for row in self.weights]
        rows = zip(self.weights, self.snapshots, now, strict=True)
        tracked = {(id(row.layer), row.adapter): _split(snapshot, factors) for row, snapshot, factors in rows}
        sums = [self._sums(row, factors, tracked) for row, factors in zip(self.weights, now, strict=True)]
        for snapshot, (a, b) in zip(self.snapshots, now, strict=True):
            snapshot.copy_(torch.cat([a.flatten(), b.flatten()]))
        device = sums[0].device
        return torch.stack([s.to(device, torch.float64) for s in sums], dim=1)

    def _sums(
        self, row: AdapterRow, now: list[Tensor], tracked: dict[tuple[int, str], tuple[Tensor, Tensor]]
    ) -> Tensor:
        layer, weight = row.layer, row.layer.get_base_layer().weight
        start = first_row(weight)
        base = local(weight) if start is not None else full(weight)
        base = base.reshape(base.shape[0], -1)
        rows = slice(start or 0, (start or 0) + base.shape[0])
        scale = layer.scaling[row.adapter]
        u, v = row.factors(*now)
        u0, v0 = row.factors(*tracked[id(layer), row.adapter])
        change = (torch.cat([u * scale, u0 * -scale], dim=1)[rows], torch.cat([v, v0]))
        terms = []  # P = W0 + the active adapters at t-1, where the stored weight holds the merged ones (at t)
        active = [] if getattr(layer, "disable_adapters", False) else list(layer.active_adapters)
        for adapter, sign in [(a, 1.0) for a in active] + [(a, -1.0) for a in layer.merged_adapters]:
            if adapter in layer.lora_A or adapter in getattr(layer, "lora_embedding_A", {}):
                other = AdapterRow(row.name, layer, adapter)
                snapshot = tracked.get((id(layer), adapter)) if sign > 0 else None
                a, b = snapshot if snapshot is not None else [full(t) for t in other.raw()]
                terms.append((other.factors(a, b), sign * layer.scaling[adapter]))
        up = torch.cat([f[0] * s for f, s in terms] or [u[:, :0]], dim=1)[rows]
        vp = torch.cat([f[1] for f, _ in terms] or [v[:0]])
        return low_rank_sums(base, change, (up, vp), self.norm)


def current(row: AdapterRow) -> Tensor:
    """``A`` and ``B`` of ``row``, flattened into one new tensor (as its snapshot holds them)."""
    return torch.cat([full(t).flatten() for t in row.raw()])


def replicas(row: AdapterRow) -> int:
    """On how many ranks a row's sums are counted: each rank measures its own rows of a weight sharded by rows."""
    weight = row.layer.get_base_layer().weight
    return copies(weight) if first_row(weight) is not None else world_size()


def _split(snapshot: Tensor, like: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The views of ``A`` and ``B`` in a row's flat snapshot."""
    a, b = like
    return snapshot[: a.numel()].view(a.shape), snapshot[a.numel() :].view(b.shape)
