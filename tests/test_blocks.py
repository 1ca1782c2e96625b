"""Blocks: one definition for the charts and the freezer, on real architectures; block values from sums."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import reference_rwc, weights

from benchmarks.gpt import GPT, SIZES
from lightning_rwc import WeightChangeTracker
from lightning_rwc.blocks import block_values, find_blocks
from lightning_rwc.measure import select_parameters


def tracked(model: torch.nn.Module, params: str = "weights") -> list[str]:
    return [name for name, _ in select_parameters(model, params)]


def test_resnet18_keeps_its_stages_as_blocks():
    names = tracked(torchvision.models.resnet18())
    assert find_blocks(names).names == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert find_blocks(["model." + n for n in names]).names == find_blocks(names).names  # a shared prefix is set aside


def test_vit_b_16_splits_its_encoder_into_its_twelve_layers():
    names = tracked(torchvision.models.vit_b_16())
    blocks = find_blocks(names)
    layers = [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    assert blocks.names == ["class_token", "conv_proj", "encoder", *layers, "heads"]
    members = blocks.members(names)
    assert members["encoder"] == ["encoder.pos_embedding"]  # what the encoder holds besides its layers
    assert all(len(members[layer]) == 4 for layer in layers)


@pytest.mark.parametrize("params", ["weights", "trainable"])
def test_a_gpt_style_model_gets_one_block_per_transformer_layer(params):
    names = tracked(GPT(SIZES["cpu"]), params)
    blocks = find_blocks(names)
    layers = [f"h.{i}" for i in range(12)]
    assert blocks.names == ["wte", "wpe", *layers, *(["ln_f"] if params == "trainable" else [])]
    assert blocks.of("h.3.attn.c_attn.bias") == "h.3" and blocks.of("h.11.mlp.2.weight") == "h.11"


def test_custom_blocks_come_first_and_the_rest_follow_the_rule():
    names = tracked(GPT(SIZES["cpu"]))
    blocks = find_blocks(names, custom=[r"h\.[0-5]", "h.1[01]"])  # a regular expression and a module path
    assert blocks.names[:3] == ["wte", "wpe", r"h\.[0-5]"]
    assert blocks.of("h.5.mlp.0.weight") == r"h\.[0-5]" and blocks.of("h.10.mlp.0.weight") == "h.1[01]"
    assert blocks.of("h.6.mlp.0.weight") == "h.6"
    with pytest.raises(ValueError, match=r"block pattern '\[' is not a valid regular expression"):
        find_blocks(names, custom=["["])


def test_block_values_are_the_ratio_of_the_summed_sums_of_their_tensors():
    torch.manual_seed(0)
    model = GPT(SIZES["smoke"])
    tracker = WeightChangeTracker(model)
    before = weights(model, tracker.names)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.01 * torch.randn(p.shape))
    after = weights(model, tracker.names)
    names, sums = tracker.measure().sums()
    blocks = find_blocks(names)
    got = block_values(names, sums, blocks, "l1")
    for block, members in blocks.members(names).items():
        previous = {"all": torch.cat([before[n].flatten() for n in members])}
        current = {"all": torch.cat([after[n].flatten() for n in members])}
        assert got[block] == pytest.approx(reference_rwc(previous, current, "l1")["all"], rel=1e-6)
