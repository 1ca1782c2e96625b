"""Shared fixtures: tiny models, a float64 reference of RWC, and a tiny logged training run."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytest
import torch
from torch import nn


def reference_rwc(previous: dict[str, torch.Tensor], current: dict[str, torch.Tensor], norm: str) -> dict[str, float]:
    """RWC written plainly in float64, one layer at a time, plus '_all' over all layers as one vector."""
    values, num_total, den_total = {}, 0.0, 0.0
    for name, p in previous.items():
        p, w = p.double().flatten(), current[name].double().flatten()
        if norm == "l1":
            num, den = (w - p).abs().sum().item(), p.abs().sum().item()
        elif norm == "l2":
            num, den = ((w - p) ** 2).sum().item(), (p**2).sum().item()
        else:
            mask = p != 0
            num, den = ((w - p).abs()[mask] / p.abs()[mask]).sum().item(), float(mask.sum())
        num_total, den_total = num_total + num, den_total + den
        values[name] = _finish(num, den, norm)
    values["_all"] = _finish(num_total, den_total, norm)
    return values


def _finish(num: float, den: float, norm: str) -> float:
    if den == 0:
        return math.nan
    return math.sqrt(num / den) if norm == "l2" else num / den


def weights(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """A float64 copy of the named parameters."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().double().clone() for name in names}


class TinyNet(nn.Module):
    """Conv -> BN -> Linear: two weight tensors, biases and BN affine parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


def make_tiny_module(lr: float = 0.1):
    """A LightningModule around TinyNet trained with SGD on random 8x8 images."""
    import lightning.pytorch as pl

    class TinyModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyNet()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    return TinyModule()


def tiny_loader(n: int = 64, batch_size: int = 8, seed: int = 0):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def fit_kwargs() -> dict:
    """Trainer options that keep tests quiet and deterministic on the CPU."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "deterministic": True,
    }
