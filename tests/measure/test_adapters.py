"""LoRA adapters (PEFT) measured by the change of each adapted layer's effective weight, against a float64
reference that materialises the weight each layer's forward uses (``conftest.effective_weights``)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import adapter_delta, effective_weights, reference_rwc
from torch import nn

from lightning_rwc import WeightChangeTracker
from lightning_rwc.measure import NORMS
from lightning_rwc.measure.functional import element_sums, low_rank_sums, ratios

peft = pytest.importorskip("peft")
pytorch_utils = pytest.importorskip("transformers.pytorch_utils")


class Net(nn.Module):
    """Two layers of one kind: ``nn.Linear``, or GPT-2's ``Conv1D`` (weights stored as ``(in, out)``)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind == "linear":
            self.up, self.down = nn.Linear(6, 9), nn.Linear(9, 5)
        else:
            self.up, self.down = pytorch_utils.Conv1D(9, 6), pytorch_utils.Conv1D(5, 9)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.down(torch.relu(self.up(x))))


def adapted(kind: str = "linear", seed: int = 0, **config) -> nn.Module:
    """``Net`` in float64 with LoRA on ``up`` and ``down``, factors random (so that the first change is not zero)."""
    torch.manual_seed(seed)
    config = {"r": 2, "lora_alpha": 4, "target_modules": ["up", "down"], "init_lora_weights": False} | config
    config.setdefault("fan_in_fan_out", kind == "conv1d")
    return peft.get_peft_model(Net(kind).double(), peft.LoraConfig(**config))


def move(model: nn.Module, seed: int, scale: float = 0.05) -> None:
    """Add noise to every trainable parameter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def row(module_name: str) -> str:
    """The row of a LoRA layer: its weight's name without PEFT's ``base_model.model.``."""
    return module_name.removeprefix("base_model.model.") + ".weight"


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_an_adapted_layer_is_one_row_whose_value_is_the_change_of_its_effective_weight(kind, norm):
    model = adapted(kind)
    tracker = WeightChangeTracker(model, norm=norm)
    assert tracker.names == ["up.weight", "down.weight"]  # the head is frozen by PEFT; no lora_A / lora_B rows
    for seed in (1, 2):
        before = effective_weights(model)
        move(model, seed)
        values = tracker.step()
        expected = reference_rwc(before, effective_weights(model), norm)
        for name, value in expected.items():
            assert values[row(name) if name != "_all" else name] == pytest.approx(value, rel=1e-9), name


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merging_between_measurements_leaves_the_value_as_the_forward_sees_it(kind, norm):
    model = adapted(kind)
    tracker = WeightChangeTracker(model, norm=norm)
    before = effective_weights(model)
    move(model, 1)
    model.merge_adapter()  # the stored weight now holds the adapters; the forward no longer adds them
    values = tracker.step()
    expected = reference_rwc(before, effective_weights(model), norm)
    assert values["up.weight"] == pytest.approx(expected["base_model.model.up"], rel=1e-9)
    assert tracker.step()["up.weight"] == pytest.approx(0.0, abs=1e-12)  # merged and unchanged
    model.unmerge_adapter()
    assert tracker.step()["up.weight"] == pytest.approx(0.0, abs=1e-7)  # unmerging does not change the weight


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_two_adapters_each_get_a_row_of_their_own_change_against_the_whole_effective_weight(kind, norm):
    model = adapted(kind)
    second = peft.LoraConfig(r=3, target_modules=["up"], init_lora_weights=False, fan_in_fan_out=kind == "conv1d")
    model.add_adapter("second", second)
    model.base_model.set_adapter(["default", "second"])
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    model.double()
    tracker = WeightChangeTracker(model, norm=norm)
    assert tracker.names == ["up.default.weight", "up.second.weight", "down.default.weight"]
    layer = model.base_model.model.up
    before = effective_weights(model)["base_model.model.up"]
    deltas = {a: layer.scaling[a] * adapter_delta(layer, a) for a in ("default", "second")}
    move(model, 1)
    values = tracker.step()
    for adapter in ("default", "second"):  # this adapter's change, against the whole effective weight before
        change = layer.scaling[adapter] * adapter_delta(layer, adapter) - deltas[adapter]
        expected = reference_rwc({"up": before}, {"up": before + change}, norm)["up"]
        assert values[f"up.{adapter}.weight"] == pytest.approx(expected, rel=1e-9)


def test_a_zero_starting_factor_gives_finite_values_from_the_first_measurement_without_a_warning():
    model = adapted(init_lora_weights=True)  # lora_B starts at zero, as PEFT initialises it
    tracker = WeightChangeTracker(model)
    move(model, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = tracker.step()
    assert all(math.isfinite(v) and v > 0 for v in values.values())


def test_the_raw_factors_are_kept_on_request_and_named_without_the_wrappers():
    tracker = WeightChangeTracker(adapted(), adapters="factors")
    assert tracker.names == [
        "up.lora_A.default.weight",
        "up.lora_B.default.weight",
        "down.lora_A.default.weight",
        "down.lora_B.default.weight",
    ]


def test_a_fully_trained_layer_beside_the_adapters_keeps_its_own_row():
    model = adapted(modules_to_save=["head"])
    tracker = WeightChangeTracker(model)
    assert tracker.names == ["up.weight", "down.weight", "head.weight"]


def test_adapters_that_cannot_be_measured_by_their_effective_weight_keep_their_factors_with_one_warning():
    model = adapted(use_dora=True)
    with pytest.warns(RuntimeWarning, match="2 adapted layers are measured by their raw LoRA factors") as caught:
        tracker = WeightChangeTracker(model)
    assert sum("raw LoRA factors" in str(w.message) for w in caught) == 1
    assert "up.lora_A.default.weight" in tracker.names and "up.weight" not in tracker.names


def test_freezing_an_adapter_removes_its_row_and_its_baseline_survives_a_checkpoint():
    model = adapted()
    tracker = WeightChangeTracker(model)
    move(model, 1)
    state = tracker.state_dict()
    restored = WeightChangeTracker(model)
    restored.load_state_dict(state)
    move(model, 2)
    assert restored.step() == pytest.approx(tracker.step(), rel=1e-12)
    for param in model.base_model.model.up.parameters():
        param.requires_grad_(False)
    tracker.step()
    assert tracker.names == ["down.weight"]


@pytest.mark.parametrize("norm", NORMS)
def test_low_rank_sums_equal_the_sums_of_the_materialised_weights_in_small_pieces(norm):
    generator = torch.Generator().manual_seed(0)
    base, u, v, up, vp = (
        torch.randn(*s, generator=generator, dtype=torch.float64) for s in [(7, 5), (7, 3), (3, 5), (7, 2), (2, 5)]
    )
    previous = base + up @ vp
    expected = element_sums(previous, previous + u @ v, norm)
    for chunk in (1, 10, 1000):  # a row at a time, two rows, everything
        got = low_rank_sums(base, (u, v), (up, vp), norm, chunk=chunk)
        assert ratios(got[:, None], norm).item() == pytest.approx(ratios(expected[:, None], norm).item(), rel=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_gpu_the_effective_measure_matches_the_float64_reference(dtype):
    model = adapted("conv1d").to("cuda", dtype)
    tracker = WeightChangeTracker(model, norm="l1")
    before = effective_weights(model)
    move(model, 1, scale=0.2)
    values = tracker.step()
    expected = reference_rwc(before, effective_weights(model), "l1")
    for name, value in expected.items():
        assert values[row(name) if name != "_all" else name] == pytest.approx(value, rel=1e-4), name


class Other(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.conv = nn.Embedding(10, 6), nn.Conv2d(3, 4, 3)


@pytest.mark.parametrize("norm", NORMS)
def test_embeddings_and_convolutions_are_measured_by_their_effective_weights_too(norm):
    torch.manual_seed(0)
    config = peft.LoraConfig(r=2, target_modules=["emb", "conv"], init_lora_weights=False)
    model = peft.get_peft_model(Other().double(), config)
    tracker = WeightChangeTracker(model, norm=norm)
    assert tracker.names == ["emb.weight", "conv.weight"]
    before = effective_weights(model)
    move(model, 1)
    values = tracker.step()
    for name, value in reference_rwc(before, effective_weights(model), norm).items():
        assert values[row(name) if name != "_all" else name] == pytest.approx(value, rel=1e-9), name


def test_a_quantized_base_weight_keeps_the_raw_factors_with_a_warning_that_says_so():
    model = adapted()
    model.base_model.model.up.base_layer.weight = nn.Parameter(torch.zeros(9, 6, dtype=torch.int8), False)
    with pytest.warns(RuntimeWarning, match="'up.weight' is measured by its raw LoRA factors.*quantized"):
        tracker = WeightChangeTracker(model)
    assert tracker.names == ["up.lora_A.default.weight", "up.lora_B.default.weight", "down.weight"]


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_rows_measured_from_the_factors_updates_without_a_snapshot(kind, optimizer):
    model = adapted(kind).float()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(trainable, lr=0.1, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(trainable, lr=0.02, weight_decay=0.1)
    tracker = WeightChangeTracker(model, source="optimizer", optimizer=opt)
    assert tracker.snapshot_bytes == 0
    for step in range(3):
        before = {row(n): w for n, w in effective_weights(model).items()}
        opt.zero_grad()
        model(torch.randn(4, 6, generator=torch.Generator().manual_seed(step))).pow(2).mean().backward()
        opt.step()
        after = {row(n): w for n, w in effective_weights(model).items()}
        values = tracker.step()
        expected = reference_rwc(before, after, "l1")
        for name in ("up.weight", "down.weight"):
            assert values[name] == pytest.approx(expected[name], rel=1e-5), name
