"""Which parameters a tracker follows, and the names it gives them."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from conftest import TinyNet
from torch import nn

from lightning_rwc import WeightChangeTracker
from lightning_rwc.measure.select import compile_patterns, select_parameters, user_name


def names(model: nn.Module, *args) -> list[str]:
    return [name for name, _ in select_parameters(model, *args)]


def test_weights_selection_keeps_kernels_only_and_trainable_keeps_everything(tiny_net):
    assert names(tiny_net) == ["conv.weight", "head.weight"]
    assert names(tiny_net, "trainable") == [name for name, _ in tiny_net.named_parameters()]


def test_frozen_parameters_are_never_selected(tiny_net):
    tiny_net.conv.weight.requires_grad_(False)
    assert names(tiny_net, "trainable") == ["conv.bias", "bn.weight", "bn.bias", "head.weight", "head.bias"]


def test_a_shared_parameter_is_selected_once_under_its_first_name():
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    assert names(model) == ["0.weight"]


def test_include_and_exclude_narrow_the_selection():
    model = torchvision.models.resnet18()
    include, exclude = compile_patterns(r"^layer1\.", "include"), compile_patterns(["downsample", "conv2"], "exclude")
    assert names(model, "weights", include, exclude) == ["layer1.0.conv1.weight", "layer1.1.conv1.weight"]


@pytest.mark.parametrize(
    ("raw", "parallel", "expected"),
    [
        ("_orig_mod.net.0.weight", [], "net.0.weight"),
        ("blocks.3._checkpoint_wrapped_module.attn.weight", [], "blocks.3.attn.weight"),
        ("_fsdp_wrapped_module.layers.0._fsdp_wrapped_module.weight", [], "layers.0.weight"),
        ("module._orig_mod.fc.weight", [""], "fc.weight"),
        ("encoder.module.fc.weight", ["encoder"], "encoder.fc.weight"),
        ("module.fc.weight", [], "module.fc.weight"),  # a user's own attribute named module stays
        ("module.inner.module.w", ["", "module.inner"], "inner.w"),
    ],
)
def test_user_names_drop_exactly_the_attributes_wrappers_insert(raw, parallel, expected):
    assert user_name(raw, parallel) == expected


def test_a_data_parallel_model_is_named_like_the_model_inside():
    assert names(nn.DataParallel(TinyNet())) == ["conv.weight", "head.weight"]
    own = nn.Module()
    own.module = nn.Linear(2, 2)  # an attribute that happens to be called module
    assert names(own) == ["module.weight"]


def test_names_that_would_coincide_keep_their_raw_form():
    model = nn.Module()
    model.fc = nn.Linear(2, 2)
    model._orig_mod = nn.Module()
    model._orig_mod.fc = nn.Linear(2, 2)
    assert names(model) == ["fc.weight", "_orig_mod.fc.weight"]


def test_patterns_are_checked_and_compiled():
    assert [p.pattern for p in compile_patterns(["a", "b$"], "include")] == ["a", "b$"]
    assert compile_patterns(None, "include") == []
    with pytest.raises(ValueError, match=r"include pattern '\[' is not a valid regular expression"):
        compile_patterns("[", "include")
    with pytest.raises(ValueError, match="exclude must be a regular expression or a list of them, got 3"):
        compile_patterns([3], "exclude")


def test_the_tracker_tracks_what_select_parameters_selects(tiny_net):
    include = [re.compile("conv|bn")]
    assert WeightChangeTracker(tiny_net, "l1", "trainable", include="conv|bn").names == names(
        tiny_net, "trainable", include
    )
    assert torch.equal(dict(select_parameters(tiny_net))["head.weight"], tiny_net.head.weight)
