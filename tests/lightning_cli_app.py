"""A LightningCLI application over the tiny model, configured from YAML in the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import TinyNet, tiny_loader  # noqa: E402


class TinyModel(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.net = TinyNet()

    def training_step(self, batch, batch_idx):
        import torch

        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        import torch

        return torch.optim.SGD(self.parameters(), lr=self.lr)


class TinyData(pl.LightningDataModule):
    def train_dataloader(self):
        return tiny_loader()


if __name__ == "__main__":
    LightningCLI(TinyModel, TinyData)
