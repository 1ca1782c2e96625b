"""LayerFreezer in real Trainer.fit runs: it reuses the measurements, freezes for good, suggests without changing
anything, resumes exactly; and the health flags of RelativeWeightChange on planted faults."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import fit_kwargs, make_lora_module, token_loader
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_rwc import LayerFreezer, RelativeWeightChange

FAST = {"threshold": 0.5, "patience": 1, "warmup": 1, "max_fraction": 1.0}  # decides at the second measurement


class Stack(pl.LightningModule):
    """Three Linear-BatchNorm blocks and a head; SGD whose learning rate falls 100x each epoch, so every block's RWC
    falls far below its first value whatever the trajectory."""

    def __init__(self, lrs: dict[str, float] | None = None, left_out: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        blocks = [nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()) for _ in range(3)]
        self.net = nn.Sequential(*blocks, nn.Linear(8, 2))
        self.lrs, self.left_out = lrs or {}, left_out

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        groups = [
            {"params": list(module.parameters()), "lr": self.lrs.get(name, 0.05)}
            for name, module in self.net.named_children()
            if name != self.left_out and list(module.parameters())
        ]
        optimizer = torch.optim.SGD(groups, momentum=0.9)
        return [optimizer], [torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.01)]


def loader(n: int = 64):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 2, (n,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=8)


class Snapshots(Callback):
    """The model's parameters after every optimizer step."""

    def __init__(self):
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.by_step[trainer.global_step] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def fit(callbacks, epochs=4, ckpt_path=None, tmp_path=None, module=None, **kwargs):
    options = {**fit_kwargs(), "enable_checkpointing": tmp_path is not None, **kwargs}
    logger = CSVLogger(tmp_path) if tmp_path is not None else False
    trainer = Trainer(max_epochs=epochs, callbacks=callbacks, logger=logger, default_root_dir=tmp_path, **options)
    module = module or Stack()
    trainer.fit(module, loader(), ckpt_path=ckpt_path)
    return trainer, module


def test_frozen_blocks_stop_for_good_from_their_decision_on_and_their_curves_end(tmp_path):
    rwc, freezer, snapshots = RelativeWeightChange(), LayerFreezer(**FAST), Snapshots()
    trainer, module = fit([rwc, freezer, snapshots], tmp_path=tmp_path)
    assert freezer.frozen == {"0": 16, "1": 16, "2": 16}  # decided at the second epoch's measurement; head kept
    for name, param in module.named_parameters():
        frozen = not name.startswith("net.3.")
        assert param.requires_grad is not frozen
        later = [snapshots.by_step[step][name] for step in range(16, 33)]
        assert all(torch.equal(later[0], value) for value in later) is frozen, name
    assert [module.net[i][1].training for i in range(3)] == [False] * 3
    history = rwc.history
    assert [layer for layer in history.layers] == ["net.0.0.weight", "net.1.0.weight", "net.2.0.weight", "net.3.weight"]
    assert all(math.isnan(v) for v in history.values[0, 2:]) and not math.isnan(history.values[3, 3])
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    counts = {int(r["step"]): float(r["rwc_freeze/frozen_blocks"]) for r in rows if r.get("rwc_freeze/frozen_blocks")}
    assert counts == {8: 0.0, 16: 3.0, 24: 3.0, 32: 3.0}
    assert [int(r["step"]) for r in rows if r.get("rwc_freeze/1")] == [16]


def test_settled_blocks_of_a_lora_fine_tuning_freeze_their_adapters():
    pytest.importorskip("peft")
    rwc, freezer = RelativeWeightChange(), LayerFreezer(**FAST)
    trainer = Trainer(max_epochs=3, callbacks=[rwc, freezer], logger=False, **fit_kwargs())
    module = make_lora_module()
    trainer.fit(module, token_loader())
    assert freezer.frozen == {"0": 16, "1": 16, "2": 16}  # every block but the last, at the second measurement
    assert rwc.history.layers[0] == "model.transformer.h.0.attn.c_attn.weight"
    for name, param in module.named_parameters():
        if "lora_" in name:
            assert param.requires_grad is name.startswith("model.base_model.model.transformer.h.3."), name
    last = rwc.history.values[:, -1]  # (layers, measurements): the frozen rows have no value any more
    assert all(map(math.isnan, last[:9])) and not any(map(math.isnan, last[9:]))


def test_suggesting_changes_nothing_in_the_run():
    baseline = fit([RelativeWeightChange()])[1]
    suggest = LayerFreezer(mode="suggest", **FAST)
    _, module = fit([RelativeWeightChange(), suggest])
    assert suggest.frozen == {"0": 16, "1": 16, "2": 16}
    assert all(p.requires_grad for p in module.parameters())
    for a, b in zip(baseline.parameters(), module.parameters(), strict=True):
        assert torch.equal(a, b)


def test_without_a_relative_weight_change_the_freezer_adds_one():
    freezer = LayerFreezer(**FAST)
    trainer, _ = fit([freezer])
    added = [callback for callback in trainer.callbacks if isinstance(callback, RelativeWeightChange)]
    assert len(added) == 1 and added[0].history.steps == [8, 16, 24, 32]
    assert set(freezer.frozen) == {"0", "1", "2"}


def test_a_resumed_run_is_identical_to_an_uninterrupted_one(tmp_path):
    def run(epochs, ckpt_path=None):
        rwc, freezer = RelativeWeightChange(every_n_epochs=None, every_n_steps=4), LayerFreezer(**FAST)
        trainer, module = fit([rwc, freezer], epochs=epochs, ckpt_path=ckpt_path, tmp_path=tmp_path)
        return trainer, module, rwc, freezer

    _, straight, rwc_straight, freezer_straight = run(4)
    first, *_ = run(1)  # the checkpoint of epoch 1 (step 8), before any decision
    _, resumed, rwc_resumed, freezer_resumed = run(4, ckpt_path=first.checkpoint_callback.best_model_path)
    assert freezer_resumed.frozen == freezer_straight.frozen and freezer_straight.frozen
    assert rwc_resumed.history.steps == rwc_straight.history.steps
    torch.testing.assert_close(rwc_resumed.history.values, rwc_straight.history.values, rtol=0, atol=0, equal_nan=True)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b) and a.requires_grad == b.requires_grad


def test_resuming_after_a_decision_freezes_the_same_blocks_before_training_goes_on(tmp_path):
    first, _ = fit([RelativeWeightChange(), LayerFreezer(**FAST)], epochs=2, tmp_path=tmp_path)
    freezer = LayerFreezer(**FAST)
    checkpoint = first.checkpoint_callback.best_model_path
    _, module = fit([RelativeWeightChange(), freezer], epochs=3, ckpt_path=checkpoint, tmp_path=tmp_path)
    assert freezer.frozen == {"0": 16, "1": 16, "2": 16}
    assert [p.requires_grad for p in module.parameters()] == [False] * 12 + [True, True]


def test_a_layer_left_out_of_the_optimizer_is_flagged_dead(tmp_path):
    rwc = RelativeWeightChange()
    with pytest.warns(UserWarning, match=r"Layer 'net.1.0.weight' did not change at all .* missing from the optimizer"):
        trainer, _ = fit([rwc], epochs=3, tmp_path=tmp_path, module=Stack(left_out="1"))
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as handle:
        dead = [float(r["rwc_health/dead_layers"]) for r in csv.DictReader(handle) if r.get("rwc_health/dead_layers")]
    assert dead == [0.0, 1.0, 1.0]  # flagged at the second measurement in a row


def test_a_layer_with_a_hundred_times_the_learning_rate_is_flagged_running_away(tmp_path):
    class Steady(Stack):
        def configure_optimizers(self):  # plain SGD, the same rate all along: RWC follows the rate
            groups = [
                {"params": list(m.parameters()), "lr": self.lrs.get(n, 1e-3)}
                for n, m in self.net.named_children()
                if list(m.parameters())
            ]
            return torch.optim.SGD(groups)

    with pytest.warns(UserWarning, match=r"Layer 'net.1.0.weight' changes over 30x as much as the median layer"):
        trainer, _ = fit([RelativeWeightChange()], epochs=3, tmp_path=tmp_path, module=Steady(lrs={"1": 0.1}))
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("rwc_health/runaway_layers")]
    assert [float(r["rwc_health/runaway_layers"]) for r in rows] == [0.0, 1.0, 1.0]


def test_freezing_under_ddp_needs_find_unused_parameters(monkeypatch):
    from types import SimpleNamespace

    import torch.distributed as dist
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
        trainer = SimpleNamespace(strategy=SimpleNamespace(model=model))
        with pytest.raises(MisconfigurationException, match="ddp_find_unused_parameters_true"):
            LayerFreezer().on_train_start(trainer, None)
    finally:
        dist.destroy_process_group()


def test_with_the_cache_the_run_equals_the_run_without_and_logs_its_hit_rate(tmp_path):
    _, plain = fit([RelativeWeightChange(), LayerFreezer(**FAST)])
    freezer = LayerFreezer(**FAST, cache=True)
    trainer, cached = fit([RelativeWeightChange(), freezer], tmp_path=tmp_path)
    assert freezer.frozen == {"0": 16, "1": 16, "2": 16}
    for (name, a), b in zip(plain.named_parameters(), cached.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert "forward" not in vars(cached.net)  # the model's own forward once training is over
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rates = {int(r["step"]): float(r["rwc_freeze/cache_hit_rate"]) for r in rows if r.get("rwc_freeze/cache_hit_rate")}
    assert rates == {24: 0.0, 32: 1.0}  # the epoch after the decision computes every sample once; then all are reused
    stored = {int(r["step"]): float(r["rwc_freeze/cache_bytes"]) for r in rows if r.get("rwc_freeze/cache_bytes")}
    assert stored[32] == 64 * 8 * 4  # 64 samples, the front's output of 8 float32 each


def test_a_resumed_run_with_the_cache_rebuilds_it_and_equals_an_uninterrupted_one(tmp_path):
    def run(epochs, ckpt_path=None):
        freezer = LayerFreezer(**FAST, cache=True)
        trainer, module = fit([RelativeWeightChange(), freezer], epochs=epochs, ckpt_path=ckpt_path, tmp_path=tmp_path)
        return trainer, module, freezer

    _, straight, _ = run(4)
    first, _, _ = run(3)  # after the decision: the resumed run freezes again and starts an empty cache
    _, resumed, freezer = run(4, ckpt_path=first.checkpoint_callback.best_model_path)
    assert freezer.cache.misses == 64 and freezer.cache.hits == 0  # one epoch after resuming: every sample computed
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_inputs_that_change_every_epoch_warn_that_the_cache_does_not_pay():
    class Noise(torch.utils.data.Dataset):  # new inputs at every access, as random augmentation makes them
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return torch.randn(8), i % 2

    freezer = LayerFreezer(**FAST, cache=True)
    trainer = Trainer(max_epochs=4, callbacks=[RelativeWeightChange(), freezer], logger=False, **fit_kwargs())
    with pytest.warns(UserWarning, match=r"only 0% of the samples of epoch 3 were found in the cache: the inputs"):
        trainer.fit(Stack(), torch.utils.data.DataLoader(Noise(), batch_size=8))


def test_the_cache_needs_a_frozen_front_in_eval_mode():
    with pytest.raises(ValueError, match="cache needs mode='freeze' and eval_frozen=True"):
        LayerFreezer(mode="suggest", cache=True)
    with pytest.raises(ValueError, match="cache must be True, False or a FrontCache"):
        LayerFreezer(cache="yes")
