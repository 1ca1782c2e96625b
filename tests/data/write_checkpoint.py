"""Write ``rwc-checkpoint-v2.ckpt``: a checkpoint of a short fit, saved between two measurements.

The committed file was written by lightning-rwc 0.1.0 as released before the callback was split into parts (state
version 2). It holds the callback's history, the baseline snapshot (saved between two measurements) and the state of
a suggesting ``LayerFreezer``. Run from the repository root: ``python tests/data/write_checkpoint.py``.
"""

from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_rwc import LayerFreezer, RelativeWeightChange
from tests.conftest import fit_kwargs, make_tiny_module, tiny_loader

HERE = Path(__file__).parent
NAME = "rwc-checkpoint-v2"

if __name__ == "__main__":
    torch.manual_seed(0)
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=3)
    freezer = LayerFreezer(mode="suggest", warmup=0, patience=1)
    saver = ModelCheckpoint(
        dirpath=HERE, filename=NAME, every_n_train_steps=10, save_top_k=1, enable_version_counter=False
    )
    trainer = Trainer(
        max_steps=10,
        callbacks=[rwc, freezer, saver],
        logger=False,
        **{**fit_kwargs(), "enable_checkpointing": True},
    )
    trainer.fit(make_tiny_module(), tiny_loader())
    path = HERE / f"{NAME}.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    for key in [key for key in checkpoint["callbacks"] if key.startswith("ModelCheckpoint")]:
        del checkpoint["callbacks"][key]  # it names the directory it was written in
    torch.save(checkpoint, path)
    print(f"steps {rwc.history.steps}, frozen {freezer.frozen}")
