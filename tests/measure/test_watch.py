"""The parameter watch notices every public way of changing a model's parameters, and walks the tree only then."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightning_rwc.measure.watch as watch_module
from lightning_rwc.measure.watch import ParameterWatch, module_layout


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 2)]))


def add_submodule(m):
    m.extra = nn.Linear(2, 2)


def delete_submodule(m):
    del m[1][1]


def insert_into_list(m):
    m[1].insert(0, nn.Linear(4, 4))  # moves entries of the registry without registering them


def set_submodule_to_none(m):
    m[1][0] = None


def rename_submodule(m):
    m.renamed = m[0]
    del m[0]


def replace_parameter(m):
    m[0].weight = nn.Parameter(m[0].weight.detach().clone())


def delete_parameter(m):
    del m[0].bias


def set_parameter_to_none(m):
    m[0].bias = None  # registers None: no registration hook runs


def freeze(m):
    m[1][0].weight.requires_grad_(False)


def share_a_module(m):
    m[1].append(m[0])


def replace_submodule(m):
    m[1][1] = nn.Linear(4, 2)  # the same key, the same number of children


def rename_last_parameter(m):
    m[0].renamed = m[0].bias  # the same objects in the same order, under another name
    del m[0].bias


CHANGES = [
    add_submodule,
    delete_submodule,
    insert_into_list,
    set_submodule_to_none,
    rename_submodule,
    replace_parameter,
    delete_parameter,
    set_parameter_to_none,
    freeze,
    share_a_module,
    replace_submodule,
    rename_last_parameter,
]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
def test_every_change_of_the_layout_is_noticed_once(change):
    m = model()
    watch = ParameterWatch(m)
    assert watch.changed()
    assert not watch.changed()
    before = module_layout(m)
    change(m)
    assert module_layout(m) != before  # the change is one that matters
    assert watch.changed()
    assert not watch.changed()


def test_the_tree_is_walked_only_after_a_change_seen_at_a_glance(monkeypatch):
    m = model()
    walks = []
    original = watch_module.walk
    monkeypatch.setattr(watch_module, "walk", lambda model: walks.append(1) or original(model))
    watch = ParameterWatch(m)
    watch.changed()
    for _ in range(3):
        assert not watch.changed()
    assert len(walks) == 1
    other = nn.Sequential(nn.Linear(2, 2))  # modules built and changed elsewhere in the process are not looked at
    other.extra = nn.Linear(2, 2)
    assert not watch.changed()
    assert len(walks) == 1
    freeze(m)
    assert watch.changed()
    assert len(walks) == 2


def test_forget_makes_the_next_call_walk_and_see_a_new_number_of_dimensions():
    m = model()
    watch = ParameterWatch(m)
    watch.changed()
    with torch.no_grad():
        m[0].weight.data = torch.zeros(12)  # invisible at a glance: same parameter object
    assert not watch.changed()
    watch.forget()
    assert watch.changed()


def test_a_module_that_contains_itself_is_walked_once():
    m = model()
    m[1].append(m)
    assert len(watch_module.walk(m)) == 5  # the Sequential, its Linear, the ModuleList and its two Linears
    watch = ParameterWatch(m)
    assert watch.changed() and not watch.changed()
