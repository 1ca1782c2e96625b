"""FreezePolicy: plain values in, blocks to freeze out."""

from __future__ import annotations

import math

import pytest

from lightning_rwc.decide import FreezePolicy, FreezeRule

BLOCKS = ["a", "b", "c", "head"]


def feed(policy: FreezePolicy, rows: list[dict[str, float]]) -> list[list[str]]:
    return [policy.update(10 * (i + 1), row) for i, row in enumerate(rows)]


def test_a_block_settles_below_a_fraction_of_its_own_peak_for_patience_measurements():
    policy = FreezePolicy(BLOCKS, FreezeRule(threshold=0.2, patience=2, warmup=1, max_fraction=1), keep={"head"})
    rows = [{"a": 1.0}, {"a": 0.5}, {"a": 0.15}, {"a": 0.19}]  # peak 1.0: settled at the 3rd and the 4th
    assert feed(policy, rows) == [[], [], [], ["a"]]
    assert policy.frozen == {"a": 40}


def test_a_value_above_the_threshold_starts_the_count_again():
    policy = FreezePolicy(["a", "head"], FreezeRule(threshold=0.2, patience=2, warmup=0, max_fraction=1), keep={"head"})
    assert feed(policy, [{"a": 1.0}, {"a": 0.1}, {"a": 0.3}, {"a": 0.1}, {"a": 0.1}]) == [[], [], [], [], ["a"]]


def test_no_decision_during_warmup():
    policy = FreezePolicy(["a", "head"], FreezeRule(threshold=0.5, patience=1, warmup=3, max_fraction=1), keep={"head"})
    assert feed(policy, [{"a": 1.0}, {"a": 0.1}, {"a": 0.1}, {"a": 0.1}]) == [[], [], [], ["a"]]


def test_front_order_freezes_a_block_only_with_every_block_before_it():
    policy = FreezePolicy(BLOCKS, FreezeRule(threshold=0.5, patience=1, warmup=0, max_fraction=1), keep={"head"})
    peak = {"a": 1.0, "b": 1.0, "c": 1.0, "head": 1.0}
    rows = [peak, {"a": 1.0, "b": 0.1, "c": 0.1}, {"a": 0.1, "b": 0.1, "c": 1.0}, {"c": 0.1}]
    assert feed(policy, rows) == [[], [], ["a", "b"], ["c"]]  # b and c waited for a; c then settled again


def test_any_order_freezes_each_settled_block_by_itself():
    rule = FreezeRule(threshold=0.5, patience=1, warmup=0, max_fraction=1, order="any")
    policy = FreezePolicy(BLOCKS, rule, keep={"head"})
    assert feed(policy, [{b: 1.0 for b in BLOCKS}, {"a": 1.0, "b": 0.1, "c": 0.1}]) == [[], ["b", "c"]]


def test_kept_blocks_are_never_frozen_and_the_cap_holds():
    policy = FreezePolicy(BLOCKS, FreezeRule(threshold=0.5, patience=1, warmup=0, max_fraction=0.5), keep={"head"})
    assert policy.limit == 1  # half of the three freezable blocks
    assert feed(policy, [{b: 1.0 for b in BLOCKS}, {b: 0.01 for b in BLOCKS}]) == [[], ["a"]]
    assert feed(policy, [{b: 0.01 for b in BLOCKS}]) == [[]]


def test_missing_and_non_finite_values_are_no_evidence():
    policy = FreezePolicy(["a", "head"], FreezeRule(threshold=0.5, patience=2, warmup=0, max_fraction=1), keep={"head"})
    assert feed(policy, [{"a": 1.0}, {"a": math.nan}, {}, {"a": 0.1}, {"a": math.inf}, {"a": 0.1}]) == [[]] * 5 + [
        ["a"]
    ]


def test_state_round_trip_continues_exactly():
    rows = [{b: v for b in BLOCKS} for v in (1.0, 0.9, 0.3, 0.2, 0.1, 0.05)]
    straight = FreezePolicy(BLOCKS, FreezeRule(threshold=0.25, patience=2, warmup=1), keep={"head"})
    expected = feed(straight, rows)
    first = FreezePolicy(BLOCKS, FreezeRule(threshold=0.25, patience=2, warmup=1), keep={"head"})
    feed(first, rows[:3])
    second = FreezePolicy(BLOCKS, FreezeRule(threshold=0.25, patience=2, warmup=1), keep={"head"})
    second.load_state_dict(first.state_dict())
    assert [second.update(10 * (i + 4), row) for i, row in enumerate(rows[3:])] == expected[3:]
    assert second.frozen == straight.frozen


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 1.5}, "threshold must be a fraction"),
        ({"patience": -1}, "patience must be a whole number"),
        ({"warmup": 1.5}, "warmup must be a whole number"),
        ({"max_fraction": 2}, "max_fraction must be a fraction in"),
        ({"order": "back"}, "order must be one of"),
    ],
)
def test_bad_settings_are_rejected_with_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FreezePolicy(BLOCKS, FreezeRule(**kwargs))
