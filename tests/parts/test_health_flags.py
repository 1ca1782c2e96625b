"""HealthFlags in a real fit: many dead layers give one warning that says how many, and the counts are logged."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from conftest import fit_kwargs
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_rwc import RelativeWeightChange
from lightning_rwc.parts import Part
from lightning_rwc.runs import load_history


class DeepStack(LightningModule):
    """150 orthogonal linear layers (the signal keeps its size); the optimizer updates only the last ``trained``."""

    def __init__(self, trained: int = 40) -> None:
        super().__init__()
        self.net = nn.Sequential(*(nn.Linear(8, 8) for _ in range(150)))
        for layer in self.net:
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.trained = trained

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.net[-self.trained :].parameters(), lr=0.1)


def test_a_deep_stack_with_over_a_hundred_dead_layers_gives_one_warning_naming_how_many(tmp_path):
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 8)), batch_size=16)
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=1)
    logger = CSVLogger(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(max_steps=6, callbacks=[rwc], logger=logger, **fit_kwargs()).fit(DeepStack(), data)
    dead = [str(w.message) for w in caught if "did not change at all" in str(w.message)]
    assert dead == [
        "110 layers did not change at all while the rest of the network did ('net.0.weight', 'net.1.weight', "
        "'net.2.weight' and 107 more): are they missing from the optimizer, or frozen without "
        "requires_grad=False?"
    ]
    history = load_history(logger.log_dir, prefix="rwc_health")
    assert history.layers == ["dead_layers", "runaway_layers"]
    assert history.curve("dead_layers").tolist() == [0.0, 110.0, 110.0, 110.0, 110.0, 110.0]  # patience 2


class SmallClassifier(LightningModule):
    """Six hidden layers and a two-class head trained with SGD and momentum: an ordinary network."""

    def __init__(self) -> None:
        super().__init__()
        blocks = [nn.Sequential(nn.Linear(32, 32), nn.ReLU()) for _ in range(6)]
        self.net = nn.Sequential(*blocks, nn.Linear(32, 2))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def test_an_ordinary_classifier_head_measured_every_step_is_not_flagged_running_away():
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(256, 32), torch.randint(0, 2, (256,))), batch_size=32)
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=1)
    flags = []
    rwc.attach(type("Flags", (Part,), {"on_measurement": lambda self, trainer, record: flags.append(record.extra)})())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*as much as the median layer")  # a runaway warning would fail the fit
        Trainer(max_epochs=5, callbacks=[rwc], logger=False, **fit_kwargs()).fit(SmallClassifier(), data)
    head = rwc.history.values[-1] / np.median(rwc.history.values, axis=0)
    assert head.max() > 3  # the head moves several times as much as the median layer...
    assert len(flags) == 40 and all(extra["rwc_health/runaway_layers"] == 0 for extra in flags)  # ...as heads do
