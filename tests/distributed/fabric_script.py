"""Train the tiny model on 2 CPU processes under DDP, in a Fabric loop with FabricRWC or in a Lightning Trainer with
RelativeWeightChange: the same model, data, seed and schedule.

Usage: python fabric_script.py {fabric,lightning} OUT_DIR

Rank zero writes OUT_DIR/history.json; the TensorBoard run is OUT_DIR/tb.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from lightning.fabric import Fabric
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_tiny_module, tiny_loader  # noqa: E402

from lightning_rwc import RelativeWeightChange  # noqa: E402
from lightning_rwc.integrations.fabric import FabricRWC  # noqa: E402

SCHEDULE = {"every_n_epochs": None, "every_n_steps": 2}
EPOCHS = 3


def shard() -> torch.utils.data.DataLoader:
    """This process's half of the tiny data set, in order: the same samples in both loops."""
    dataset = tiny_loader(n=64, batch_size=8).dataset
    rank = int(os.environ.get("LOCAL_RANK", 0))  # set by the launcher in the processes it starts
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)
    return torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler)


def with_fabric(out: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    torch.manual_seed(0)
    module = make_tiny_module()
    optimizer = module.configure_optimizers()
    model, optimizer = fabric.setup(module, optimizer)
    loader = fabric.setup_dataloaders(shard(), use_distributed_sampler=False)
    rwc = FabricRWC(fabric, model, [optimizer], out / "tb", **SCHEDULE)
    for _ in range(EPOCHS):
        for batch_idx, batch in enumerate(loader):
            optimizer.zero_grad()
            fabric.backward(model.training_step(batch, batch_idx))
            optimizer.step()
            rwc.step()
        rwc.epoch_end()
    rwc.end()
    if fabric.is_global_zero:
        rwc.history.save(out / "history.json")


def with_lightning(out: Path) -> None:
    torch.manual_seed(0)
    module = make_tiny_module()
    rwc = RelativeWeightChange(**SCHEDULE)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=EPOCHS,
        callbacks=[rwc],
        logger=TensorBoardLogger(out / "tb", name="", version="", default_hp_metric=False),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, shard())
    if trainer.is_global_zero:
        rwc.history.save(out / "history.json")


if __name__ == "__main__":
    (with_fabric if sys.argv[1] == "fabric" else with_lightning)(Path(sys.argv[2]))
