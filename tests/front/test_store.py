"""The store of front outputs: keys from the bytes of the inputs, the byte budget, spilling to memory-mapped files."""

from __future__ import annotations

import torch

from lightning_rwc.front.store import ActivationStore, fingerprints


def test_keys_are_equal_exactly_when_the_inputs_are_bitwise_equal():
    x = torch.randn(4, 3, 5)
    y = x.clone()
    y[2, 1, 1] = torch.nextafter(y[2, 1, 1], torch.tensor(1.0))  # one ulp apart
    a, b = fingerprints([x], 4), fingerprints([y], 4)
    assert [a[i] == b[i] for i in range(4)] == [True, True, False, True]
    assert len(set(a)) == 4
    mask = torch.ones(4, 5, dtype=torch.long)
    assert fingerprints([x, mask], 4) != fingerprints([x, mask * 0], 4)  # every batch-first input counts
    assert fingerprints([x.double()], 4) != a  # and its dtype


def test_the_budget_is_never_exceeded_and_what_does_not_fit_is_left_out():
    store = ActivationStore(max_bytes=10 * 4 * 6)  # ten outputs of six float32
    keys = [bytes([i]) for i in range(25)]
    store.put(keys, torch.arange(25 * 6, dtype=torch.float32).view(25, 6))
    assert store.in_memory <= store.max_bytes and len(store) == 10 and store.full
    hit, values = store.get(keys[8:12])
    assert hit == [True, True, False, False]
    assert torch.equal(values, torch.arange(8 * 6, 10 * 6, dtype=torch.float32).view(2, 6))


def test_beyond_the_budget_outputs_spill_to_memory_mapped_files_removed_on_clear(tmp_path, monkeypatch):
    monkeypatch.setattr("lightning_rwc.front.store.SLAB_BYTES", 4 * 6 * 4)  # four outputs a file
    store = ActivationStore(max_bytes=2 * 4 * 6, folder=tmp_path / "spill")
    outputs = torch.randn(11, 6)
    store.put([bytes([i]) for i in range(11)], outputs)
    assert store.in_memory == 2 * 4 * 6 and store.spilled == 9 * 4 * 6 and not store.full
    assert len(list((tmp_path / "spill").iterdir())) == 3
    hit, values = store.get([bytes([i]) for i in range(11)])
    assert all(hit) and torch.equal(values, outputs)
    store.clear()
    assert list((tmp_path / "spill").iterdir()) == [] and len(store) == 0


def test_a_lower_precision_keeps_half_the_bytes_within_its_stated_error():
    store = ActivationStore(max_bytes=1 << 20, dtype=torch.float16)
    outputs = torch.randn(8, 100)
    store.put([bytes([i]) for i in range(8)], outputs)
    _, values = store.get([bytes([i]) for i in range(8)])
    assert store.in_memory == 8 * 100 * 2 and values.dtype == torch.float16
    assert ((values.float() - outputs).abs() <= outputs.abs() * 2**-11 + 2**-24).all()
