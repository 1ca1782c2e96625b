"""FrontCache: training with the frozen front cached gives the same losses and weights as without, for every kind of
model supported; inputs seen before skip the front; what is not frozen, or not the same input, is never reused."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import tiny_bert_classifier, tiny_gpt2_classifier
from torch import nn

from lightning_rwc import BlockFreezer, WeightChangeTracker
from lightning_rwc.front import FrontCache
from lightning_rwc.warn_once import WarnOnce

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def stack() -> nn.Module:
    """Blocks with batch norm and dropout: both must behave alike with and without the cache."""
    blocks = [nn.Sequential(nn.Linear(12, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.3)) for _ in range(4)]
    return nn.Sequential(*blocks, nn.Linear(12, 3))


TOKENS, LABELS = torch.randint(1, 100, (24, 12), generator=torch.Generator().manual_seed(0)), torch.arange(24) % 2
IMAGES, CLASSES = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(24) % 10
MODELS = {  # build, inputs, targets, loss, blocks frozen
    "sequential": (stack, torch.randn(24, 12, generator=torch.Generator().manual_seed(0)), torch.arange(24) % 3, 3),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), IMAGES, CLASSES, 3),
    "vgg11_bn": (lambda: torchvision.models.vgg11_bn(num_classes=10), IMAGES, CLASSES, 4),
    "gpt2": (tiny_gpt2_classifier, TOKENS, LABELS, 3),
    "bert": (tiny_bert_classifier, TOKENS, LABELS, 3),
}


def train(kind: str, cache: FrontCache | None, steps: int = 12, freeze_at: int = 3):
    """Train with the first blocks frozen at a fixed step (the same decision in every run); losses, model, freezer."""
    build, x, y, count = MODELS[kind]
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    freezer = BlockFreezer(model, WeightChangeTracker(model).names, cache=cache)
    losses = []
    for step in range(steps):
        if step == freeze_at:
            blocks = freezer.blocks.names[:count]
            freezer.policy.frozen.update(dict.fromkeys(blocks, step))
            freezer.freeze(blocks)
        model.train()
        freezer.keep_eval()
        rows = torch.arange(step * 8, step * 8 + 8) % len(x)
        if x.dtype == torch.long:
            loss = model(input_ids=x[rows], labels=y[rows]).loss
        else:
            loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, model, freezer


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_training_with_the_cache_equals_training_without(kind):
    plain_losses, plain, _ = train(kind, None)
    cached_losses, cached, freezer = train(kind, FrontCache())
    assert freezer.cache.path is not None
    assert freezer.cache.hits == 8 * 9 - 24 and freezer.cache.misses == 24  # 9 batches after freezing, 24 samples
    assert cached_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-6)
    for (name, p), q in zip(plain.named_parameters(), cached.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


def test_frozen_modules_run_in_eval_mode_with_or_without_the_cache():
    _, model, freezer = train("sequential", None)
    model.train()
    freezer.keep_eval()
    modes = {name: module.training for name, module in model.named_modules() if name}
    assert not any(modes[f"{i}.{j}"] for i in range(3) for j in range(4))  # dropout and batch norm of frozen blocks
    assert modes["3.1"] and modes["3.3"] and modes["4"]  # the blocks still training


def test_in_eval_mode_the_models_own_forward_runs():
    _, model, freezer = train("sequential", FrontCache())
    hits, misses = freezer.cache.hits, freezer.cache.misses
    model.eval()
    x = torch.randn(5, 12)
    with torch.no_grad():
        model(x)
    assert (freezer.cache.hits, freezer.cache.misses) == (hits, misses)


def test_a_front_that_still_trains_is_not_cached_and_says_why():
    torch.manual_seed(0)
    model = stack()
    model[0][0].requires_grad_(False)  # only the first Linear: its batch norm still trains
    cache, seen = FrontCache(), []
    assert cache.attach(model, "0", WarnOnce(seen.append))
    model.train()
    x = torch.randn(4, 12)
    torch.manual_seed(2)
    got = model(x)  # the whole forward runs, and the cache lets go of the model
    torch.manual_seed(2)
    expected = type(model).forward(model, x)
    assert torch.equal(got, expected) and got.requires_grad
    assert cache.path is None and "forward" not in vars(model)
    assert len(seen) == 1 and "a module it runs trains" in seen[0]


def test_inputs_that_change_every_time_always_miss():
    _, _, freezer = train("sequential", FrontCache())
    cache = freezer.cache
    model = freezer.model
    model.train()
    freezer.keep_eval()
    before = cache.hits
    for _ in range(3):
        model(torch.randn(8, 12))  # as random augmentation makes them
    assert cache.hits == before


def test_the_budget_is_respected():
    cache = FrontCache(max_bytes=10 * 12 * 4)  # ten samples' outputs
    train("sequential", cache)
    assert cache.size <= 10 * 12 * 4 and len(cache.store) == 10 and cache.store.full


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="max_bytes must be a whole number >= 0"):
        FrontCache(max_bytes=-1)
    with pytest.raises(ValueError, match="dtype must be None or a floating-point torch.dtype"):
        FrontCache(dtype=torch.int8)


def test_a_cut_module_that_is_all_frozen_is_cached_while_the_model_trains():
    torch.manual_seed(0)
    model = nn.Sequential(stack()[:4], nn.Linear(12, 3))  # the cut module, all of it frozen, then a head
    model[0].requires_grad_(False)
    model[0].eval()
    cache = FrontCache()
    assert cache.attach(model, "0.3")
    model[1].train()
    x = torch.randn(6, 12)
    model(x)
    model(x)
    assert (cache.hits, cache.misses) == (6, 6)
