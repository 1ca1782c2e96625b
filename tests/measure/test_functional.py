"""The formula, against a plain float64 re-computation: element sums, multi-tensor sums, ratios, the public function."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import reference_rwc

from lightning_rwc import relative_weight_change
from lightning_rwc.measure.functional import EXPONENTS, element_sums, ratios, tensor_sums

NORMS = ["l1", "l2", "elementwise"]


def pair(shape=(6, 40), seed=0, dtype=torch.float32):
    """A weight before and after a change of about 1%, with a few previous values exactly zero."""
    g = torch.Generator().manual_seed(seed)
    previous = torch.randn(shape, generator=g, dtype=torch.float64)
    previous.view(-1)[::7] = 0
    current = previous * (1 + 0.01 * torch.randn(shape, generator=g, dtype=torch.float64)) + 0.001
    return previous.to(dtype), current.to(dtype)


def reference_sums(previous: torch.Tensor, current: torch.Tensor, norm: str) -> list[float]:
    p, w = previous.double(), current.double()
    if norm == "l1":
        return [(w - p).abs().sum().item(), p.abs().sum().item()]
    if norm == "l2":
        return [((w - p) ** 2).sum().item(), (p**2).sum().item()]
    mask = p != 0
    return [((w - p).abs()[mask] / p.abs()[mask]).sum().item(), float(mask.sum())]


@pytest.mark.parametrize("norm", NORMS)
def test_element_sums_of_a_whole_tensor_match_the_float64_reference(norm):
    previous, current = pair()
    assert element_sums(previous, current, norm).tolist() == pytest.approx(reference_sums(previous, current, norm))


@pytest.mark.parametrize("norm", NORMS)
def test_element_sums_along_a_dimension_into_given_buffers(norm):
    previous, current = pair()
    out, scratch = torch.empty(2, 6), torch.empty(6, 40)
    assert element_sums(previous, current, norm, 1, out=out, scratch=scratch) is out
    for row, (p, w) in enumerate(zip(previous, current, strict=True)):
        assert out[:, row].tolist() == pytest.approx(reference_sums(p, w, norm))
    assert element_sums(previous, current, norm, dim=-2).shape == (2, 40)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm", NORMS)
def test_half_precision_is_subtracted_exactly_and_summed_in_float32(dtype, norm):
    previous, current = pair(dtype=dtype)
    got = element_sums(previous, current, norm)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(reference_sums(previous, current, norm), rel=1e-5)


def test_float64_weights_are_summed_in_float64():
    previous, current = pair(dtype=torch.float64)
    assert element_sums(previous, current, "l1").dtype == torch.float64


@pytest.mark.parametrize("norm", sorted(EXPONENTS))
def test_multi_tensor_sums_are_the_element_sums_of_each_tensor(norm):
    tensors = [pair(shape, seed)[0] for seed, shape in enumerate([(3,), (4, 5), (2, 3, 4)])]
    expected = [reference_sums(torch.zeros_like(t), t, norm)[0] for t in tensors]  # sum of |t| ** p
    assert tensor_sums(tensors, norm).tolist() == pytest.approx(expected)


def test_ratios_are_nan_where_nothing_was_there_and_take_the_root_of_p_norms():
    sums = torch.tensor([[1.0, 2.0, 0.0], [4.0, 0.0, 0.0]], dtype=torch.float64)
    l1, l2 = ratios(sums, "l1").tolist(), ratios(sums, "l2").tolist()
    assert l1[0] == 0.25 and l2[0] == 0.5
    assert all(math.isnan(v) for v in (l1[1], l1[2], l2[1], l2[2]))


@pytest.mark.parametrize("norm", NORMS)
def test_relative_weight_change_of_tensors_and_lists_matches_the_reference(norm):
    pairs = [pair(shape, seed) for seed, shape in enumerate([(5, 7), (3,), (2, 2, 2)])]
    previous, current = [p for p, _ in pairs], [w for _, w in pairs]
    expected = reference_rwc(dict(enumerate(previous)), dict(enumerate(current)), norm)
    assert relative_weight_change(previous, current, norm) == pytest.approx([expected[i] for i in range(3)])
    assert relative_weight_change(previous[0], current[0], norm) == pytest.approx(expected[0])


def test_relative_weight_change_rejects_what_cannot_be_compared():
    with pytest.raises(ValueError, match=r"previous has shape \(2,\) and current \(3,\)"):
        relative_weight_change(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="sequences of tensors of the same length"):
        relative_weight_change([torch.ones(2)], [torch.ones(2), torch.ones(2)])
    with pytest.raises(ValueError, match="sequences of tensors of the same length"):
        relative_weight_change([torch.ones(2)], torch.ones(2))
    with pytest.raises(ValueError, match="norm must be one of"):
        relative_weight_change(torch.ones(2), torch.ones(2), norm="max")
    assert relative_weight_change([], []) == []
