"""Every backend that runs on the CPU, against the float64 reference; the one place that chooses a backend."""

from __future__ import annotations

import pytest
import torch
from conftest import reference_rwc

from lightning_rwc.measure.backends import (
    CpuBatches,
    HostSnapshot,
    TensorLists,
    create_backend,
    snapshot_of,
)
from lightning_rwc.measure.backends import cpu as cpu_backend
from lightning_rwc.measure.backends import host as host_backend
from lightning_rwc.measure.functional import ratios

BACKENDS = {
    "cpu-batches": lambda weights, baselines, norm: CpuBatches(weights, baselines, norm),
    "multi-tensor": lambda weights, baselines, norm: TensorLists(weights, baselines, norm),
    "host-snapshot": lambda weights, baselines, norm: HostSnapshot(weights, baselines, norm, torch.device("cpu")),
}


def layers(seed: int = 0) -> list[torch.Tensor]:
    """Tensors of many sizes and layouts: one element, a large one (measured in pieces), transposed and strided."""
    g = torch.Generator().manual_seed(seed)
    large = torch.randn(300, 7, generator=g)
    return [
        torch.randn(1, generator=g),
        torch.randn(13, 5, generator=g),
        large,
        torch.randn(9, 4, generator=g).t(),
        torch.randn(6, 10, generator=g)[:, ::2],
        torch.randn(8, 3, 3, 3, generator=g).to(memory_format=torch.channels_last),
    ]


def move(tensors: list[torch.Tensor], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for t in tensors:
        t.mul_(1 + 0.01 * torch.randn(t.shape, generator=g)).add_(0.001)


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(cpu_backend, "ROW", 8)
    monkeypatch.setattr(cpu_backend, "BATCH", 64)  # tensors of 16 elements or more are measured alone, in pieces
    monkeypatch.setattr(host_backend, "PIECE", 7)  # the host snapshot moves in pieces of 7 elements


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize("norm", ["l1", "l2", "elementwise"])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_each_backend_matches_reference_and_refreshes_its_snapshots(backend, norm):
    weights = layers()
    measure = BACKENDS[backend](weights, [None] * len(weights), norm)
    for seed in (1, 2):
        before = {i: w.clone() for i, w in enumerate(weights)}
        move(weights, seed)
        expected = reference_rwc(before, dict(enumerate(weights)), norm)
        got = ratios(measure.measure(), norm).tolist()
        assert got == pytest.approx([expected[i] for i in range(len(weights))], rel=1e-5)
        assert all(torch.equal(s, w) for s, w in zip(measure.snapshots, weights, strict=True))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_backend_starts_from_the_baselines_it_is_given(backend):
    weights, baselines = [torch.full((4, 4), 2.0), torch.ones(3)], [torch.ones(4, 4), None]
    sums = BACKENDS[backend](weights, baselines, "l1").measure()
    assert sums.tolist() == [[16.0, 0.0], [16.0, 3.0]]


def test_a_baseline_laid_out_like_its_weight_is_kept_not_copied():
    weight = torch.randn(5, 3).t()
    kept = snapshot_of(weight, None)
    assert snapshot_of(weight, kept) is kept
    assert TensorLists([weight], [kept], "l1").snapshots[0] is kept
    view = torch.zeros(20)[:15].view(5, 3).t()  # laid out alike, but part of a larger storage
    copied = snapshot_of(weight, view)
    assert copied is not view and torch.equal(copied, view) and copied.stride() == weight.stride()
    assert snapshot_of(weight, kept.double()).dtype == weight.dtype


def test_the_choice_of_backend():
    weights, baselines = [torch.ones(2)], [None]
    assert type(create_backend(weights, baselines, "l1")) is CpuBatches
    assert type(create_backend(weights, baselines, "l1", kernel="foreach")) is TensorLists
    assert type(create_backend(weights, baselines, "l1", snapshot_device=torch.device("meta"))) is HostSnapshot
    with pytest.raises(RuntimeError, match="kernel='triton' cannot measure these weights: .*CUDA devices only"):
        create_backend(weights, baselines, "l1", kernel="triton")
