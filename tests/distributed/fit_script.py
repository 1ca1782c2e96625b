"""Train the tiny model with RelativeWeightChange under a distributed strategy; Lightning re-launches this script.

Usage: python fit_script.py {ddp,fsdp2} OUT_DIR

Rank zero writes OUT_DIR/history.json and OUT_DIR/weights_<step>.pt (full weights in float64 at every measurement and
at the start); every rank writes OUT_DIR/collectives_<rank>.json (how many all-reduces the tracker made).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_tiny_module, tiny_loader  # noqa: E402

import lightning_rwc.tracker as tracker_module  # noqa: E402
from lightning_rwc import RelativeWeightChange  # noqa: E402

TRACKED = ["net.conv.weight", "net.head.weight"]


class FullWeights(Callback):
    """Saves the full (gathered) tracked weights at the start and at every epoch end, on rank zero."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def _save(self, trainer, pl_module) -> None:
        params = dict(pl_module.named_parameters())
        full = {}
        for name in TRACKED:
            p = params[name]
            value = p.full_tensor() if hasattr(p, "full_tensor") else p
            full[name] = value.detach().double().cpu().clone()
        if trainer.is_global_zero:
            torch.save(full, self.out / f"weights_{trainer.global_step}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)


def main(strategy_name: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    calls = []
    original = tracker_module.all_reduce_sum

    def counting(partials):
        calls.append(tuple(partials.shape))
        return original(partials)

    tracker_module.all_reduce_sum = counting
    torch.manual_seed(0)
    module = make_tiny_module()
    if strategy_name == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy
        from torch.distributed.fsdp import fully_shard

        def configure_model() -> None:
            fully_shard(module.net.conv)
            fully_shard(module.net.head)
            fully_shard(module.net)

        module.configure_model = configure_model
        strategy = ModelParallelStrategy()
    else:
        strategy = "ddp"
    rwc = RelativeWeightChange()
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=3,
        callbacks=[FullWeights(out), rwc],
        logger=CSVLogger(out, name="csv"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, tiny_loader(n=64, batch_size=8))
    rank = trainer.global_rank
    (out / f"collectives_{rank}.json").write_text(json.dumps({"calls": len(calls), "measurements": len(rwc.history)}))
    if trainer.is_global_zero:
        rwc.history.save(out / "history.json")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
