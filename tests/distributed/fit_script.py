"""Train the tiny model with RelativeWeightChange under a distributed strategy; Lightning re-launches this script.

Usage: python fit_script.py {ddp,fsdp2,fsdp2-uneven,ddp-freeze,fsdp2-freeze,ddp-freeze-cache,ddp-optimizer,
fsdp2-optimizer} OUT_DIR

``fsdp2-uneven`` is ``fsdp2`` where, after the first epoch, rank 1 alone gets a new trainable layer: the ranks must
agree to leave it out rather than hang or fail in the all-reduce. ``ddp-freeze`` and ``fsdp2-freeze`` add a
LayerFreezer that freezes the convolution after the second epoch (the learning rate falls 100x each epoch), under
``ddp_find_unused_parameters_true`` or FSDP2; ``ddp-freeze-cache`` caches the frozen front's outputs too (each
rank its own samples). ``ddp-optimizer`` and ``fsdp2-optimizer`` measure every step with
``source="optimizer"`` (under FSDP2 from the optimizer's sharded state).

Rank zero writes OUT_DIR/history.json and OUT_DIR/weights_<step>.pt (full weights in float64 at every measurement and
at the start); every rank writes OUT_DIR/collectives_<rank>.json (how many all-reduces the tracker made, and the
warnings it gave).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_tiny_module, tiny_loader  # noqa: E402

import lightning_rwc.measure.sharding as sharding  # noqa: E402
from lightning_rwc import LayerFreezer, RelativeWeightChange  # noqa: E402

TRACKED = ["net.conv.weight", "net.head.weight"]


class FullWeights(Callback):
    """Saves the full (gathered) tracked weights at the start and at every epoch end (or step), on rank zero."""

    def __init__(self, out: Path, every_step: bool) -> None:
        self.out, self.every_step = out, every_step

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

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if self.every_step:
            self._save(trainer, pl_module)


class GrowOnRankOne(Callback):
    """After the first epoch, gives rank 1 alone a new trainable layer (left out of the optimizer and the forward)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0 and trainer.global_rank == 1:
            pl_module.extra = torch.nn.Linear(3, 3)


def main(strategy_name: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    calls = []
    original = sharding.all_reduce_sum

    def counting(partials):
        calls.append(tuple(partials.shape))
        return original(partials)

    sharding.all_reduce_sum = counting
    torch.manual_seed(0)
    module = make_tiny_module()
    freezing = "-freeze" in strategy_name
    if freezing:

        def configure_optimizers():
            optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
            return [optimizer], [torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.01)]

        module.configure_optimizers = configure_optimizers
    if strategy_name.startswith("fsdp2"):
        from lightning.pytorch.strategies import ModelParallelStrategy
        from torch.distributed.fsdp import fully_shard

        def configure_model() -> None:
            fully_shard(module.net.conv)
            fully_shard(module.net.head)
            fully_shard(module.net)

        module.configure_model = configure_model
        strategy = ModelParallelStrategy()
    else:
        strategy = "ddp_find_unused_parameters_true" if freezing else "ddp"
    every_step = strategy_name.endswith("-optimizer")
    rwc = RelativeWeightChange(every_n_steps=1, source="optimizer") if every_step else RelativeWeightChange()
    freezer = LayerFreezer(
        threshold=0.5, patience=1, warmup=1, max_fraction=1.0, cache=strategy_name.endswith("-cache")
    )
    # Monitoring an RWC key needs its value on every rank (under DDP only rank zero measures): a missing one fails.
    monitor = EarlyStopping(monitor="rwc/_all", mode="min", patience=100, check_on_train_epoch_end=True)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=3,
        callbacks=[
            FullWeights(out, every_step),
            rwc,
            monitor,
            *([GrowOnRankOne()] if strategy_name == "fsdp2-uneven" else []),
            *([freezer] if freezing else []),
        ],
        logger=CSVLogger(out, name="csv"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, tiny_loader(n=64, batch_size=8))
    rank = trainer.global_rank
    report = {
        "calls": len(calls),
        "measurements": len(rwc.history),
        "warnings": [str(w.message) for w in caught],
        "monitored": float(trainer.callback_metrics["rwc/_all"]),
        "frozen": freezer.frozen,
        "requires_grad": {name: p.requires_grad for name, p in module.named_parameters()},
        "cache": [freezer.cache.hits, freezer.cache.misses] if freezer.cache is not None else None,
    }
    (out / f"collectives_{rank}.json").write_text(json.dumps(report))
    if trainer.is_global_zero:
        rwc.history.save(out / "history.json")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
