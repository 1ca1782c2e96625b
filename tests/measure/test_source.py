"""source="optimizer": each step's change read from the optimizer, against a float64 reference from copies of the
weights, for every optimizer, option and implementation; steps that did not happen; no copy of the weights."""

from __future__ import annotations

import gc
import itertools
import types
import weakref

import pytest
import torch
from conftest import reference_rwc, weights
from torch import nn

from lightning_rwc import WeightChangeTracker
from lightning_rwc.measure import source as source_module

IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
SGD_OPTIONS = [
    {"momentum": momentum, "dampening": dampening, "nesterov": nesterov, "weight_decay": decay, "maximize": maximize}
    for momentum, dampening, nesterov, decay, maximize in itertools.product(
        (0.0, 0.9), (0.0, 0.3), (False, True), (0.0, 1e-2), (False, True)
    )
    if (momentum or not (dampening or nesterov)) and not (nesterov and dampening)  # what SGD accepts
]
ADAM_OPTIONS = [
    {"amsgrad": amsgrad, "weight_decay": decay, "maximize": maximize}
    for amsgrad, decay, maximize in itertools.product((False, True), (0.0, 0.1), (False, True))
]
CASES = [
    *((torch.optim.SGD, options, impl) for options in SGD_OPTIONS for impl in IMPLEMENTATIONS),
    *(
        (kind, options, impl)
        for kind in (torch.optim.Adam, torch.optim.AdamW)
        for options in ADAM_OPTIONS
        for impl in IMPLEMENTATIONS
    ),
]
WORST: dict[str, float] = {}


class Net(nn.Module):
    """Two layers and a head used only on some steps (its gradient is None on the others)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 8))
        self.side = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, side: bool) -> torch.Tensor:
        h = self.body(x)
        return h.pow(2).mean() + (self.side(h).pow(2).mean() if side else 0)


def optimizer_of(model: Net, kind: type[torch.optim.Optimizer], options: dict, impl: str) -> torch.optim.Optimizer:
    """Two parameter groups (their own learning rate and weight decay), as training scripts often have."""
    lr = 0.2 if kind is torch.optim.SGD else 0.01
    groups = [
        {"params": model.body.parameters()},
        {"params": model.side.parameters(), "lr": lr / 2, "weight_decay": options["weight_decay"] * 3},
    ]
    return kind(groups, lr=lr, **options, **IMPLEMENTATIONS[impl])


def train_and_compare(model, optimizer, tracker, steps=5, scheduler=None, side=lambda step: step % 2 == 0):
    """Steps with the tracker measuring after each; the worst relative difference from the float64 reference."""
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for step in range(steps):
        before = weights(model, tracker.names)
        optimizer.zero_grad(set_to_none=True)
        model(torch.randn(8, 12, generator=generator), side(step)).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        expected = reference_rwc(before, weights(model, tracker.names), tracker.settings.norm)
        got = tracker.step()
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-12), (name, step)
            if value:
                worst = max(worst, abs(got[name] - value) / value)
    return worst


@pytest.mark.parametrize(("kind", "options", "impl"), CASES, ids=lambda x: getattr(x, "__name__", None) or str(x))
def test_every_layer_at_every_step_equals_the_float64_reference(kind, options, impl):
    torch.manual_seed(0)
    model = Net()
    optimizer = optimizer_of(model, kind, options, impl)
    tracker = WeightChangeTracker(model, params="trainable", source="optimizer", optimizer=optimizer)
    key = f"{kind.__name__} {impl}"
    WORST[key] = max(WORST.get(key, 0.0), train_and_compare(model, optimizer, tracker))
    assert tracker.snapshot_bytes == 0


@pytest.mark.parametrize("norm", ["l1", "l2", "elementwise"])
@pytest.mark.parametrize("kind", [torch.optim.SGD, torch.optim.AdamW])
def test_every_norm_and_pieces_smaller_than_a_weight(monkeypatch, norm, kind):
    monkeypatch.setitem(source_module.CHUNK, "cpu", 37)  # every weight cut into pieces of 37 elements
    torch.manual_seed(0)
    model = Net()
    options = {"momentum": 0.9, "nesterov": True} if kind is torch.optim.SGD else {}
    optimizer = optimizer_of(model, kind, {"weight_decay": 1e-2, **options}, "foreach")
    warnings: list[str] = []
    tracker = WeightChangeTracker(model, norm=norm, source="optimizer", optimizer=optimizer, warn=warnings.append)
    train_and_compare(model, optimizer, tracker)
    if norm == "elementwise":  # it needs every previous weight: a snapshot, said once
        assert len(warnings) == 1 and "norm='elementwise' needs each previous weight" in warnings[0]
        assert tracker.snapshot_bytes > 0
    else:
        assert warnings == [] and tracker.snapshot_bytes == 0


@pytest.mark.parametrize("kind", [torch.optim.SGD, torch.optim.Adam])
def test_schedulers_and_a_tensor_learning_rate_are_read_at_each_step(kind):
    torch.manual_seed(0)
    model = Net()
    options = {"momentum": 0.9} if kind is torch.optim.SGD else {"betas": (0.9, 0.99)}
    optimizer = kind(model.parameters(), lr=torch.tensor(0.02), fused=True, **options)
    # lr and momentum move; updates stay large enough that float32 rounding of the weights is far below 1e-5 of them
    max_lr = 1.0 if kind is torch.optim.SGD else 0.05
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=8)
    tracker = WeightChangeTracker(model, source="optimizer", optimizer=optimizer)
    train_and_compare(model, optimizer, tracker, steps=7, scheduler=scheduler)


def test_a_weight_without_a_gradient_did_not_move_and_a_zero_gradient_did():
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    tracker = WeightChangeTracker(model, source="optimizer", optimizer=optimizer)
    train_and_compare(model, optimizer, tracker, side=lambda step: step == 0)  # side: None gradients after step 0
    for param in model.parameters():  # zeros: momentum and weight decay still move every weight
        param.grad = torch.zeros_like(param)
    before = weights(model, tracker.names)
    optimizer.step()
    values = tracker.step()
    assert values["side.weight"] > 0
    assert values == pytest.approx(reference_rwc(before, weights(model, tracker.names), "l1"), rel=1e-5)


def test_no_step_no_value_and_two_steps_no_value_with_a_warning():
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    warnings: list[str] = []
    tracker = WeightChangeTracker(model, source="optimizer", optimizer=optimizer, warn=warnings.append)
    assert tracker.step() == {}  # nothing stepped yet (as while gradients accumulate)
    for _ in range(2):
        model(torch.randn(4, 12), True).backward()
        optimizer.step()
    assert tracker.step() == {}
    assert len(warnings) == 1 and "several steps" in warnings[0] and "every_n_steps=1" in warnings[0]
    train_and_compare(model, optimizer, tracker, steps=2)  # and it measures again after single steps


def test_a_step_skipped_by_a_grad_scaler_gives_no_value():
    for implementation in ({"foreach": True}, {"fused": True}):  # scaler skips the call / tells the fused kernel
        torch.manual_seed(0)
        model = Net()
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, **implementation)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        tracker = WeightChangeTracker(model, source="optimizer", optimizer=optimizer)
        for skip in (False, True, False):
            before = weights(model, tracker.names)
            optimizer.zero_grad()
            scaler.scale(model(torch.randn(8, 12), True)).backward()
            if skip:
                model.body[0].weight.grad[0, 0] = float("inf")
            scaler.step(optimizer)
            scaler.update()
            values = tracker.step()
            if skip:
                assert values == {}
                assert torch.equal(weights(model, tracker.names)["body.0.weight"], before["body.0.weight"])
            else:
                expected = reference_rwc(before, weights(model, tracker.names), "l1")
                assert values == pytest.approx(expected, rel=1e-5)


def test_two_optimizers_each_measure_their_own_tensors():
    torch.manual_seed(0)
    model = Net()
    first = torch.optim.SGD(model.body.parameters(), lr=0.1, momentum=0.9)
    second = torch.optim.Adam(model.side.parameters(), lr=0.01)
    tracker = WeightChangeTracker(model, source="optimizer", optimizer=[first, second])
    for step in range(3):
        before = weights(model, tracker.names)
        for optimizer in (first, second):
            optimizer.zero_grad()
        model(torch.randn(8, 12), True).backward()
        first.step()
        if step == 1:  # only the first has stepped: the second's tensors get no value yet
            assert set(tracker.step()) == {"body.0.weight", "body.2.weight", "_all"}
            second.step()
            assert set(tracker.step()) == {"side.weight", "_all"}
            continue
        second.step()
        expected = reference_rwc(before, weights(model, tracker.names), "l1")
        assert tracker.step() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda params: torch.optim.RMSprop(params, lr=0.01), "RMSprop is not among"),
        (lambda params: torch.optim.LBFGS(params, lr=0.1), "LBFGS is not among"),
        (lambda params: torch.optim.SGD([{"params": params, "clip": 1.0}], lr=0.1), "options this reading does not"),
    ],
)
def test_other_optimizers_fall_back_to_a_snapshot_with_one_warning(make, why):
    torch.manual_seed(0)
    model = Net()
    optimizer = make(model.parameters())
    warnings: list[str] = []
    tracker = WeightChangeTracker(model, source="optimizer", optimizer=optimizer, warn=warnings.append)
    assert len(warnings) == 1 and why in warnings[0] and "snapshot" in warnings[0]
    assert tracker.snapshot_bytes > 0
    for _ in range(2):
        before = weights(model, tracker.names)

        def closure():
            optimizer.zero_grad()
            loss = model(torch.randn(8, 12, generator=torch.Generator().manual_seed(3)), True)
            loss.backward()
            return loss

        optimizer.step(closure)
        assert tracker.step() == pytest.approx(reference_rwc(before, weights(model, tracker.names), "l1"), rel=1e-5)
    assert len(warnings) == 1


def test_bfloat16_weights_give_the_update_the_optimizer_computed():
    torch.manual_seed(0)
    model = Net().to(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker = WeightChangeTracker(model, source="optimizer", optimizer=optimizer)
    for _ in range(3):
        before = weights(model, tracker.names)
        optimizer.zero_grad()
        model(torch.randn(8, 12, dtype=torch.bfloat16), True).backward()
        optimizer.step()
        values = tracker.step()
        for name, param in model.named_parameters():
            if name in tracker.names:  # the update is lr * buffer; the weights before the step are exact in bf16
                update = 0.05 * optimizer.state[param]["momentum_buffer"].double()
                expected = update.abs().sum().item() / before[name].abs().sum().item()
                assert values[name] == pytest.approx(expected, rel=1e-2)


def held_tensor_bytes(root: object, leave_out: list[object]) -> int:
    """Bytes of the distinct tensor storages reachable from ``root``, not through the objects in ``leave_out``."""
    seen, storages, todo = {id(x) for x in leave_out}, {}, [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type | types.ModuleType | types.FunctionType):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
            continue
        todo.extend(gc.get_referents(obj))
    return sum(storages.values())


@pytest.mark.parametrize("source", ["snapshot", "optimizer"])
def test_no_copy_of_a_weight_is_held_between_steps(source):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    options = {"source": "optimizer", "optimizer": optimizer} if source == "optimizer" else {}
    tracker = WeightChangeTracker(model, **options)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 256)).pow(2).mean().backward()
        optimizer.step()
        tracker.step()
    leave_out = [model, optimizer, *model.parameters(), *model.modules()]
    held = held_tensor_bytes(tracker, leave_out)
    smallest = min(p.numel() * p.element_size() for n, p in model.named_parameters() if n in tracker.names)
    if source == "snapshot":  # the count sees the copy the snapshot keeps
        assert held >= sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n in tracker.names)
    else:
        assert held < smallest / 100


def test_close_removes_the_hooks_and_a_dropped_tracker_is_not_kept_alive():
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = WeightChangeTracker(model, source="optimizer", optimizer=optimizer)
    tracker.close()
    model(torch.randn(2, 12), True).backward()
    optimizer.step()
    assert tracker.step() == {}
    dropped = weakref.ref(WeightChangeTracker(model, source="optimizer", optimizer=optimizer))
    gc.collect()
    assert dropped() is None
    optimizer.step()  # the hook of the dropped tracker does nothing


def test_optimizer_and_source_go_together():
    model = Net()
    with pytest.raises(ValueError, match="optimizer is needed with source='optimizer'"):
        WeightChangeTracker(model, source="optimizer")
    with pytest.raises(ValueError, match="only then"):
        WeightChangeTracker(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="source must be one of"):
        WeightChangeTracker(model, source="gradients")


def test_report_the_worst_difference(capsys):
    """Prints the worst relative difference of each optimizer and implementation over the cases run above."""
    with capsys.disabled():
        for key, worst in sorted(WORST.items()):
            print(f"\nsource='optimizer' {key}: worst relative difference {worst:.2e}")
    assert all(worst < 1e-5 for worst in WORST.values())


def adam_update_reference(optimizer: torch.optim.Optimizer, param: torch.Tensor, before: torch.Tensor) -> float:
    """Sum of |the update Adam(W) computed| in float64 from its state after the step, written plainly."""
    group, state = optimizer.param_groups[0], optimizer.state[param]
    (beta1, beta2), t = group["betas"], float(state["step"])
    second = state["max_exp_avg_sq" if group["amsgrad"] else "exp_avg_sq"].double()
    m_hat = state["exp_avg"].double() / (1 - beta1**t)
    update = group["lr"] * m_hat / ((second / (1 - beta2**t)).sqrt() + group["eps"])
    if group["decoupled_weight_decay"]:
        update = update + group["lr"] * group["weight_decay"] * before
    return update.abs().sum().item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "make",
    [
        lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1, fused=True),
        lambda params: torch.optim.Adam(params, lr=0.01, amsgrad=True),  # PyTorch's default on CUDA: foreach
        lambda params: torch.optim.SGD(params, lr=0.2, momentum=0.9, nesterov=True),  # the momentum in the gradient
    ],
    ids=["adamw-fused", "adam-foreach", "sgd-nesterov-foreach"],
)
def test_on_gpu_in_float32_and_bfloat16(make, dtype):
    torch.manual_seed(0)
    model = Net().cuda().to(dtype)
    optimizer = make(model.parameters())
    if dtype == torch.bfloat16 and isinstance(optimizer, torch.optim.SGD):
        pytest.skip("bf16 is checked against Adam's update formula")
    tracker = WeightChangeTracker(model, source="optimizer", optimizer=optimizer)
    generator = torch.Generator("cuda").manual_seed(1)
    for step in range(4):
        before = weights(model, tracker.names)
        optimizer.zero_grad()
        model(torch.randn(8, 12, device="cuda", dtype=dtype, generator=generator), True).float().backward()
        optimizer.step()
        got = tracker.step()
        if dtype == torch.float32:  # the change itself
            expected = reference_rwc(before, weights(model, tracker.names), "l1")
        else:  # the update computed (rounding to bf16 lets another change through)
            params = dict(model.named_parameters())
            expected = {
                name: adam_update_reference(optimizer, params[name], before[name]) / before[name].abs().sum().item()
                for name in tracker.names
            }
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-5 if dtype == torch.float32 else 1e-4), (name, step)
