"""BlockFreezer in plain PyTorch: frozen means unchanged, whatever the optimizer; what is kept; batch norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_rwc import BlockFreezer, WeightChangeTracker
from lightning_rwc.decide import FreezeRule


def stack() -> nn.Module:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()) for _ in range(3)]
    return nn.Sequential(*blocks, nn.Linear(8, 2))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 2, (16,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


OPTIMIZERS = {
    "SGD with momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "AdamW with weight decay": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_a_frozen_block_stays_bit_identical_while_the_rest_trains(optimizer):
    model = stack()
    opt = OPTIMIZERS[optimizer](model.parameters())
    tracker = WeightChangeTracker(model)
    freezer = BlockFreezer(model, tracker.names)
    train(model, opt, 5)  # momentum buffers and Adam moments are full
    freezer.freeze(["0", "1"])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(("0.", "1."))}
    others = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(("2.", "3."))}
    train(model, opt, 5, seed=1)
    params = dict(model.named_parameters())
    assert len(frozen) == 8 and all(torch.equal(params[n], value) for n, value in frozen.items())
    assert all(not params[n].requires_grad and params[n].grad is None for n in frozen)
    assert all(not torch.equal(params[n], value) for n, value in others.items())


def test_batch_norms_of_frozen_blocks_stay_in_eval_mode():
    model = stack()
    freezer = BlockFreezer(model, WeightChangeTracker(model).names)
    freezer.freeze(["0"])
    model.train()  # as Lightning does at each epoch
    freezer.keep_eval()
    assert [model[i][1].training for i in range(3)] == [False, True, True]
    statistics = model[0][1].running_mean.clone()
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), 2)
    assert torch.equal(model[0][1].running_mean, statistics)


def test_batch_norms_between_blocks_belong_to_the_block_before():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)  # tracked with params="weights"? no: one dimension
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

    model = Net()
    freezer = BlockFreezer(model, WeightChangeTracker(model).names)
    assert freezer.policy.blocks == ["conv", "body", "head"]
    freezer.freeze(["conv"])
    assert [p.requires_grad for p in model.bn.parameters()] == [False, False]


def test_the_head_and_what_shares_its_parameters_are_kept():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    tracker = WeightChangeTracker(model)
    assert BlockFreezer(model, tracker.names).policy.keep == {"embed"}  # the tied head is measured as embed
    assert BlockFreezer(model, tracker.names).policy.blocks == ["embed", "body"]
    assert BlockFreezer(model, tracker.names, keep_last=False).policy.keep == set()
    plain = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    assert BlockFreezer(plain, WeightChangeTracker(plain).names).policy.keep == {"1"}


def test_suggesting_changes_nothing_and_state_round_trips():
    model = stack()
    tracker = WeightChangeTracker(model)
    freezer = BlockFreezer(
        model, tracker.names, "suggest", FreezeRule(threshold=0.9, patience=1, warmup=0, max_fraction=1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.01)  # each interval moves far less
    decided = []
    for step in range(1, 4):
        train(model, opt, 3, seed=step)
        scheduler.step()
        decided += freezer.update(step, tracker.measure())
    assert decided == ["0", "1", "2"] and set(freezer.frozen) == {"0", "1", "2"}
    assert all(p.requires_grad for p in model.parameters())
    again = BlockFreezer(model, tracker.names)
    again.load_state_dict(freezer.state_dict())  # freezing now what the suggestion would have frozen
    assert again.frozen == freezer.frozen
    assert [p.requires_grad for p in model.parameters()] == [False] * 12 + [True, True]


def test_bad_settings_are_rejected():
    model = stack()
    with pytest.raises(ValueError, match="mode must be one of"):
        BlockFreezer(model, ["0.0.weight"], mode="maybe")
    with pytest.raises(ValueError, match="threshold must be a fraction"):
        BlockFreezer(model, ["0.0.weight"], rule=FreezeRule(threshold=0))
