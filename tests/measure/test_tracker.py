"""WeightChangeTracker: values against a plain float64 re-computation, the lifecycle of baselines, edge cases."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torchvision
from conftest import reference_rwc, weights
from torch import nn

import lightning_rwc.measure.tracker as tracker_module
from lightning_rwc import WeightChangeTracker
from lightning_rwc.measure.backends import cpu as cpu_backend
from lightning_rwc.measure.backends import fused
from lightning_rwc.measure.backends.base import memory_order

MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "vgg11_bn": lambda: torchvision.models.vgg11_bn(num_classes=10),
}


def perturb(model: nn.Module, seed: int, scale: float) -> None:
    """Move every weight by a known random amount: w <- w * (1 + scale * u) + scale * v."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=g)).add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("norm", ["l1", "l2", "elementwise"])
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_norm_matches_float64_reference_over_two_steps(arch, norm):
    torch.manual_seed(0)
    model = MODELS[arch]()
    tracker = WeightChangeTracker(model, norm=norm)
    for seed, scale in ((1, 0.01), (2, 0.003)):
        before = weights(model, tracker.names)
        perturb(model, seed, scale)
        expected = reference_rwc(before, weights(model, tracker.names), norm)
        got = tracker.step()
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-4), name


def test_all_is_the_ratio_over_all_weights_as_one_vector_not_a_sum_of_ratios():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(10.0)
    tracker = WeightChangeTracker(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # |dW| = 4, |W| = 4
    values = tracker.step()
    assert values["0.weight"] == pytest.approx(1.0)
    assert values["1.weight"] == 0.0
    assert values["_all"] == pytest.approx(4 / 44)


def test_tied_weights_are_measured_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.embed.weight

    model = Tied()
    tracker = WeightChangeTracker(model)
    assert tracker.names == ["embed.weight"]
    before = weights(model, tracker.names)
    with torch.no_grad():
        model.out.weight.mul_(1.25)
    expected = reference_rwc(before, weights(model, tracker.names), "l1")
    assert tracker.step() == pytest.approx(expected)


def test_nothing_to_track_names_the_filters(tiny_net):
    with pytest.raises(ValueError, match=r"include='nomatch'.*Loosen"):
        WeightChangeTracker(tiny_net, include="nomatch")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "l3"}, "norm must be one of"),
        ({"params": "all"}, "params must be one of"),
        ({"include": "("}, "not a valid regular expression"),
        ({"exclude": [3]}, "exclude must be a regular expression"),
    ],
)
def test_bad_arguments_are_rejected_with_the_bad_value(tiny_net, kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeightChangeTracker(tiny_net, **kwargs)


def test_something_other_than_a_module_is_rejected_with_its_type():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        WeightChangeTracker("resnet18")


def test_zero_previous_weights_give_nan_and_one_warning_naming_the_layer(tiny_net):
    with torch.no_grad():
        tiny_net.conv.weight.zero_()
    tracker = WeightChangeTracker(tiny_net)
    with torch.no_grad():
        tiny_net.conv.weight.fill_(0.5)
    with pytest.warns(RuntimeWarning, match="'conv.weight' is nan"):
        values = tracker.step()
    assert math.isnan(values["conv.weight"])
    assert values["head.weight"] == 0.0
    assert math.isfinite(values["_all"])
    with torch.no_grad():
        tiny_net.conv.weight.zero_()
    # Previous weights are 0.5 now: a finite value; set them to zero again and the layer warns no more.
    tracker.step()
    with torch.no_grad():
        tiny_net.conv.weight.fill_(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(tracker.step()["conv.weight"])


def test_nan_weights_give_nan_for_that_layer_and_a_warning(tiny_net):
    tracker = WeightChangeTracker(tiny_net)
    with torch.no_grad():
        tiny_net.head.weight[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="'head.weight' is nan"):
        values = tracker.step()
    assert math.isnan(values["head.weight"])
    assert values["conv.weight"] == 0.0


def test_inf_weights_give_inf(tiny_net):
    tracker = WeightChangeTracker(tiny_net)
    with torch.no_grad():
        tiny_net.head.weight[0, 0] = float("inf")
    with pytest.warns(RuntimeWarning, match="'head.weight' is inf"):
        assert tracker.step()["head.weight"] == math.inf


def test_elementwise_leaves_out_elements_whose_previous_value_is_zero():
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 2.0]]))
    tracker = WeightChangeTracker(layer, norm="elementwise")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[5.0, 3.0]]))
    assert tracker.step()["weight"] == pytest.approx(0.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_half_precision_weights_keep_small_differences(dtype, norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512)).to(dtype)
    tracker = WeightChangeTracker(model, norm=norm)
    before = weights(model, tracker.names)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p * 2**-7 * torch.randint(-1, 2, p.shape, dtype=dtype))  # one ulp-sized step up or down
    expected = reference_rwc(before, weights(model, tracker.names), norm)
    got = tracker.step()
    assert expected["0.weight"] > 0.001
    for name in expected:
        assert got[name] == pytest.approx(expected[name], rel=1e-3)


def test_one_device_to_host_transfer_per_measurement(monkeypatch):
    calls = []
    original = tracker_module.to_host

    def counting(partials):
        calls.append(partials.shape)
        return original(partials)

    monkeypatch.setattr(tracker_module, "to_host", counting)
    model = torchvision.models.resnet18()
    tracker = WeightChangeTracker(model)
    perturb(model, 0, 0.01)
    tracker.step()
    tracker.step()
    assert calls == [(2, len(tracker.names))] * 2


def test_no_per_layer_item_calls(monkeypatch):
    model = torchvision.models.resnet18()
    tracker = WeightChangeTracker(model)

    def forbidden(*args, **kwargs):
        raise AssertionError("a per-value .item() forces a sync per layer")

    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    assert len(tracker.step()) == len(tracker.names) + 1


def test_snapshot_is_one_copy_refreshed_in_place(tiny_net):
    tracker = WeightChangeTracker(tiny_net)
    tracked = dict(tiny_net.named_parameters())
    weight_bytes = sum(tracked[n].numel() * 4 for n in tracker.names)
    row_fill = len(tracker.names) * (cpu_backend.ROW - 1) * 4
    assert weight_bytes <= tracker.snapshot_bytes <= weight_bytes + row_fill
    pointers = [snapshot.data_ptr() for snapshot in tracker._groups.snapshots().values()]
    perturb(tiny_net, 0, 0.1)
    tracker.step()
    assert [snapshot.data_ptr() for snapshot in tracker._groups.snapshots().values()] == pointers
    assert tracker.step() == {name: 0.0 for name in [*tracker.names, "_all"]}


@pytest.mark.parametrize("norm", ["l1", "l2", "elementwise"])
def test_layers_split_across_many_batches_and_partial_rows_match_reference(monkeypatch, norm):
    monkeypatch.setattr(cpu_backend, "ROW", 8)
    monkeypatch.setattr(cpu_backend, "BATCH", 40)  # 5 rows; layers of 10 elements or more are measured alone
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(3 + i % 7, 2 + i % 5) for i in range(40)], nn.Linear(50, 30))
    tracker = WeightChangeTracker(model, norm=norm, params="trainable")
    for seed in (1, 2):
        before = weights(model, tracker.names)
        perturb(model, seed, 0.01)
        expected = reference_rwc(before, weights(model, tracker.names), norm)
        assert tracker.step() == pytest.approx(expected, rel=1e-5)


def test_weights_in_any_memory_layout_match_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)).to(memory_format=torch.channels_last)
    model.transposed = nn.Parameter(torch.randn(6, 5).t())
    model.strided = nn.Parameter(torch.randn(6, 10)[:, ::2])
    assert not model.transposed.is_contiguous() and memory_order(model.strided) is None
    tracker = WeightChangeTracker(model)
    for seed in (1, 2):
        before = weights(model, tracker.names)
        perturb(model, seed, 0.01)
        assert tracker.step() == pytest.approx(reference_rwc(before, weights(model, tracker.names), "l1"))


def test_replaced_weight_storage_keeps_the_baseline(tiny_net):
    tracker = WeightChangeTracker(tiny_net)
    before = weights(tiny_net, tracker.names)
    with torch.no_grad():
        tiny_net.head.weight.data = tiny_net.head.weight.data.mul(1.5)
    tiny_net.double()
    assert tracker.step() == pytest.approx(reference_rwc(before, weights(tiny_net, tracker.names), "l1"))
    before = weights(tiny_net, tracker.names)
    perturb(tiny_net, 0, 0.01)
    assert tracker.step() == pytest.approx(reference_rwc(before, weights(tiny_net, tracker.names), "l1"))


@pytest.mark.parametrize("norm", ["l1", "l2", "elementwise"])
def test_snapshot_in_host_memory_gives_the_same_values(norm):
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    default = WeightChangeTracker(model, norm=norm)
    on_host = WeightChangeTracker(model, norm=norm, snapshot_device="cpu")
    for seed in (1, 2):
        perturb(model, seed, 0.01)
        assert on_host.step() == pytest.approx(default.step(), rel=1e-6)


def test_parameters_that_appear_or_disappear_start_and_end_their_curves(tiny_net):
    tracker = WeightChangeTracker(tiny_net)
    tiny_net.extra = nn.Linear(3, 3)
    perturb(tiny_net, 0, 0.1)
    first = tracker.step()
    assert "extra.weight" not in first and "head.weight" in first
    perturb(tiny_net, 1, 0.1)
    assert "extra.weight" in tracker.step()
    del tiny_net.head
    assert set(tracker.step()) == {"conv.weight", "extra.weight", "_all"}


def test_replaced_frozen_or_unfrozen_parameters_restart_their_curves(tiny_net):
    tracker = WeightChangeTracker(tiny_net)
    tiny_net.head.weight = nn.Parameter(tiny_net.head.weight.detach() * 2)  # same name, new parameter
    tiny_net.conv.weight.requires_grad_(False)
    perturb(tiny_net, 0, 0.1)
    assert tracker.step() == {}  # conv is no longer tracked, head has only its new baseline
    tiny_net.conv.weight.requires_grad_(True)
    before = weights(tiny_net, ["head.weight"])
    perturb(tiny_net, 1, 0.1)
    got = tracker.step()
    assert set(got) == {"head.weight", "_all"}
    assert got["head.weight"] == pytest.approx(
        reference_rwc(before, weights(tiny_net, ["head.weight"]), "l1")["head.weight"]
    )
    assert set(tracker.step()) == {"conv.weight", "head.weight", "_all"}


def test_names_and_filters_are_resolved_again_only_when_the_model_changes(tiny_net, monkeypatch):
    calls = []
    original = tracker_module.select_parameters
    monkeypatch.setattr(tracker_module, "select_parameters", lambda *args: calls.append(1) or original(*args))
    tracker = WeightChangeTracker(tiny_net)
    tracker.step()
    tracker.step()
    assert len(calls) == 1
    tiny_net.renamed = tiny_net.head  # the same parameter under a second name: still measured under its first
    tracker.step()
    del tiny_net.head
    assert set(tracker.step()) == {"conv.weight", "_all"}  # now under its new name, with a new baseline
    assert set(tracker.step()) == {"conv.weight", "renamed.weight", "_all"}
    assert len(calls) == 3


def test_a_module_that_contains_itself_is_walked_once(tiny_net):
    tiny_net.conv.add_module("loop", tiny_net)
    tracker = WeightChangeTracker(tiny_net)
    perturb(tiny_net, 0, 0.1)
    assert set(tracker.step()) == {"conv.weight", "head.weight", "_all"}


def test_a_model_left_without_parameters_gives_no_values_until_new_ones_settle(tiny_net):
    tracker = WeightChangeTracker(tiny_net, params="trainable")
    for p in tiny_net.parameters():
        p.requires_grad_(False)
    assert tracker.step() == {}
    assert tracker.step() == {}
    tiny_net.head.weight.requires_grad_(True)
    assert tracker.step() == {}
    assert set(tracker.step()) == {"head.weight", "_all"}


def test_reset_makes_the_current_weights_the_baseline(tiny_net):
    tracker = WeightChangeTracker(tiny_net)
    perturb(tiny_net, 0, 0.1)
    tracker.reset()
    assert tracker.step()["_all"] == 0.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("snapshot_device", [None, "cpu"])
def test_on_gpu_matches_reference_without_per_layer_syncs(snapshot_device):
    torch.manual_seed(0)
    model = torchvision.models.resnet50().cuda()
    tracker = WeightChangeTracker(model, snapshot_device=snapshot_device)
    before = weights(model, tracker.names)
    perturb_gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, device="cuda", generator=perturb_gen))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = tracker.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]
    expected = reference_rwc(before, weights(model, tracker.names), "l1")
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-4), name


def perturb_on_gpu(model: nn.Module, seed: int) -> None:
    """Scale every weight by 1 + 1% noise (a change smaller than the weight: exact in half precision too)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.01 * torch.randn(p.shape, device="cuda", generator=g, dtype=p.dtype))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("norm", ["l1", "l2", "elementwise"])
def test_on_gpu_the_fused_kernel_matches_reference_and_the_multi_tensor_kernels(norm, dtype):
    pytest.importorskip("triton")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().to("cuda", dtype)
    fast = WeightChangeTracker(model, norm=norm, kernel="triton")
    multi_tensor = WeightChangeTracker(model, norm=norm, kernel="foreach")
    assert [type(group.backend).__name__ for group in fast._groups] == ["FusedKernel"]
    assert [type(group.backend).__name__ for group in multi_tensor._groups] == ["TensorLists"]
    for seed in (1, 2, 3):  # launched and recorded into a CUDA graph, then the graph replayed twice
        before = weights(model, fast.names)
        perturb_on_gpu(model, seed)
        expected = reference_rwc(before, weights(model, fast.names), norm)
        got = fast.step()
        assert got == pytest.approx(expected, rel=1e-4)
        assert got == pytest.approx(multi_tensor.step(), rel=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_gpu_a_kernel_that_cannot_run_is_reported_once_and_replaced(monkeypatch):
    monkeypatch.setattr(fused, "problem", lambda device, dtype, norm: "RuntimeError: no C compiler found")
    model = torchvision.models.resnet18().cuda()
    with pytest.warns(RuntimeWarning, match="multi-tensor kernels.*no C compiler found"):
        tracker = WeightChangeTracker(model)
    assert [type(group.backend).__name__ for group in tracker._groups._groups] == ["TensorLists"]
    with pytest.raises(RuntimeError, match="kernel='triton' cannot measure.*no C compiler found"):
        WeightChangeTracker(model, kernel="triton")
    with torch.no_grad():
        model.fc.weight.data = model.fc.weight.data.clone()  # new storage: the backends are built again
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same tracker does not warn twice
        tracker.step()
    before = weights(model, tracker.names)
    perturb_on_gpu(model, 1)
    assert tracker.step() == pytest.approx(reference_rwc(before, weights(model, tracker.names), "l1"), rel=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_gpu_weights_moved_to_new_storage_are_read_from_there():
    pytest.importorskip("triton")
    model = torchvision.models.resnet18().cuda()
    tracker = WeightChangeTracker(model)
    perturb_on_gpu(model, 1)
    tracker.step()
    tracker.step()  # the recorded graph reads the old storage
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    before = weights(model, tracker.names)
    perturb_on_gpu(model, 2)
    assert tracker.step() == pytest.approx(reference_rwc(before, weights(model, tracker.names), "l1"), rel=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_gpu_a_graph_that_cannot_be_recorded_is_reported_once_and_the_kernel_launched_directly(monkeypatch):
    pytest.importorskip("triton")

    def refuse(self, *args, **kwargs):
        raise RuntimeError("capture refused")

    monkeypatch.setattr(torch.cuda.CUDAGraph, "capture_begin", refuse)
    model = torchvision.models.resnet18().cuda()
    tracker = WeightChangeTracker(model)
    with pytest.warns(RuntimeWarning, match="without a CUDA graph.*capture refused"):
        tracker.step()
    for seed in (1, 2):
        before = weights(model, tracker.names)
        perturb_on_gpu(model, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = tracker.step()
        assert got == pytest.approx(reference_rwc(before, weights(model, tracker.names), "l1"), rel=1e-4)


def test_a_weight_given_another_shape_restarts_its_curve(tiny_net):
    tracker = WeightChangeTracker(tiny_net)
    with torch.no_grad():
        tiny_net.head.weight.data = torch.randn(5, tiny_net.head.weight.shape[1])  # a wider layer, same parameter
    perturb(tiny_net, 0, 0.1)
    assert set(tracker.step()) == {"conv.weight", "_all"}  # head has only its new baseline
    before = weights(tiny_net, tracker.names)
    perturb(tiny_net, 1, 0.1)
    assert tracker.step() == pytest.approx(reference_rwc(before, weights(tiny_net, tracker.names), "l1"))
    with torch.no_grad():
        tiny_net.head.weight.data = torch.randn(5)  # one dimension: no longer a weight for params="weights"
    assert set(tracker.step()) == {"conv.weight", "_all"}
    assert tracker.names == ["conv.weight"]


@pytest.mark.parametrize("norm", ["l1", "l2", "elementwise"])
def test_multi_tensor_kernels_on_the_cpu_match_reference(norm):
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    tracker = WeightChangeTracker(model, norm=norm, kernel="foreach")
    assert [type(group.backend).__name__ for group in tracker._groups._groups] == ["TensorLists"]
    before = weights(model, tracker.names)
    perturb(model, 1, 0.01)
    # rel=1e-4 as on the GPU: PyTorch's CPU norm kernels sum 2.4 M elements in float32 (error about 2e-5 here)
    assert tracker.step() == pytest.approx(reference_rwc(before, weights(model, tracker.names), norm), rel=1e-4)


def test_kernel_triton_without_cuda_says_why_it_cannot_run(tiny_net):
    with pytest.raises(RuntimeError, match="kernel='triton' cannot measure these weights: .*CUDA devices only"):
        WeightChangeTracker(tiny_net, kernel="triton")
    with pytest.raises(ValueError, match="kernel must be one of"):
        WeightChangeTracker(tiny_net, kernel="cuda")


def test_warnings_go_to_the_given_callable_once_per_layer_and_nowhere_else(tiny_net):
    messages = []
    tracker = WeightChangeTracker(tiny_net, warn=messages.append)
    with torch.no_grad():
        tiny_net.head.weight[0, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.step()
        tracker.step()
    assert caught == []
    assert messages == ["RWC of 'head.weight' is nan: its weights contain NaN or inf."]


def test_a_second_tracker_warns_again_nothing_is_remembered_for_the_process(tiny_net):
    with torch.no_grad():
        tiny_net.head.weight[0, 0] = float("nan")
    for _ in range(2):
        tracker = WeightChangeTracker(tiny_net)
        with pytest.warns(RuntimeWarning, match="'head.weight' is nan"):
            tracker.step()


def test_the_default_warning_points_at_the_callers_line(tiny_net):
    tracker = WeightChangeTracker(tiny_net)
    with torch.no_grad():
        tiny_net.head.weight[0, 0] = float("inf")
    with pytest.warns(RuntimeWarning) as caught:
        tracker.step()
    assert {w.filename for w in caught} == {__file__}


class Checkpointed(nn.Module):
    """A model whose middle layer is wrapped for activation checkpointing, as FSDP users do."""

    def __init__(self, wrap: bool) -> None:
        super().__init__()
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        torch.manual_seed(0)
        self.first, self.middle, self.last = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        if wrap:
            self.middle = checkpoint_wrapper(self.middle)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda: torch.compile(Checkpointed(False)), id="torch.compile"),
        pytest.param(lambda: Checkpointed(True), id="activation checkpointing"),
        pytest.param(lambda: nn.DataParallel(Checkpointed(False)), id="DataParallel"),
        pytest.param(lambda: torch.compile(nn.DataParallel(Checkpointed(True))), id="all three"),
    ],
)
def test_wrapped_models_give_the_same_names_and_values_as_the_plain_one(wrap):
    plain, wrapped = Checkpointed(False), wrap()
    raw = [name for name, _ in wrapped.named_parameters()]
    assert any(("_orig_mod" in n or "_checkpoint" in n or n.startswith("module.")) for n in raw)
    trackers = [WeightChangeTracker(plain, include=r"^(first|middle)\."), WeightChangeTracker(wrapped, include="mid")]
    assert trackers[0].names == ["first.weight", "middle.weight"]
    assert trackers[1].names == ["middle.weight"]  # filters see the names without the wrappers' attributes
    for model in (plain, wrapped):
        perturb(model, 1, 0.01)
    values = [tracker.step() for tracker in trackers]
    assert values[1]["middle.weight"] == values[0]["middle.weight"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("snapshot_device", [None, "cpu"])
def test_on_gpu_a_measurement_leaves_the_host_free_until_its_values_are_read(snapshot_device, monkeypatch):
    from lightning_rwc.measure.backends import host

    monkeypatch.setattr(host, "CHUNK", 1 << 16)  # ResNet-18's larger layers move in several pieces
    model = torchvision.models.resnet18().cuda()
    tracker = WeightChangeTracker(model, snapshot_device=snapshot_device)
    for seed in (1, 2):  # warm-up: compilation, the CUDA graph, pinned host buffers
        perturb_on_gpu(model, seed)
        tracker.step()
    before = weights(model, tracker.names)
    perturb_on_gpu(model, 3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any call that makes the host wait for the device raises
    try:
        pending = tracker.measure()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = reference_rwc(before, weights(model, tracker.names), "l1")
    assert pending.values() == pytest.approx(expected, rel=1e-4)


def test_many_layers_without_a_value_give_one_warning_with_how_many_and_a_few_names():
    model = nn.Sequential(*(nn.Linear(4, 4) for _ in range(12)))
    with torch.no_grad():
        for layer in model[:10]:
            layer.weight.zero_()
    messages = []
    WeightChangeTracker(model, warn=messages.append).step()
    assert messages == [
        "RWC of 10 layers is nan: their previous weights are all zero ('0.weight', '1.weight', '2.weight' and 7 more)."
    ]


@pytest.mark.parametrize(
    "norm, stated",  # as the README and the reading guide state them, for PyTorch's default initialisation
    [("l1", lambda lr, fan_in: 2 * lr * math.sqrt(fan_in)), ("l2", lambda lr, fan_in: lr * math.sqrt(3 * fan_in))],
)
@pytest.mark.parametrize("fan_in", [32, 256, 1024])
def test_adams_first_step_gives_the_rwc_the_docs_state_for_each_norm(norm, stated, fan_in):
    torch.manual_seed(fan_in)
    layer, lr = nn.Linear(fan_in, 256), 1e-3
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    tracker = WeightChangeTracker(layer, norm=norm)
    layer(torch.randn(64, fan_in)).square().mean().backward()
    optimizer.step()
    measured = tracker.step()["weight"]
    before = layer.weight.detach().double() + lr * torch.sign(layer.weight.grad.double())  # every weight moved by lr
    order = 1 if norm == "l1" else 2
    reference = (lr * layer.weight.numel() ** (1 / order)) / torch.linalg.vector_norm(before, order).item()
    assert measured == pytest.approx(reference, rel=1e-3)
    assert measured == pytest.approx(stated(lr, fan_in), rel=0.05)  # the formula, up to the spread of the init
