"""HealthCheck: dead and runaway layers from values."""

from __future__ import annotations

from lightning_rwc.decide import HealthCheck


def test_a_layer_still_while_the_network_moves_is_dead_after_patience_measurements():
    check = HealthCheck(patience=2)
    row = {"a": 0.01, "b": 0.0, "c": 0.02, "_all": 0.015}
    assert check.update(row) == ([], [])
    assert check.update(row) == (["b"], [])
    assert check.update(row) == ([], [])  # flagged once
    assert check.dead == {"b"}


def test_nothing_is_dead_when_nothing_moves():
    check = HealthCheck(patience=1)
    assert check.update({"a": 0.0, "b": 0.0, "_all": 0.0}) == ([], [])


def test_a_layer_far_above_the_median_runs_away_and_recovers():
    check = HealthCheck(factor=30, patience=2)
    fast = {"a": 0.01, "b": 0.012, "c": 0.011, "d": 0.5, "_all": 0.02}  # 0.5 is over 30x the median 0.0115
    assert check.update(fast) == ([], [])
    assert check.update(fast) == ([], ["d"])
    assert check.update({**fast, "d": 0.02}) == ([], []) and check.runaway == set()


def test_a_head_ten_times_the_median_is_not_flagged_by_default():
    check = HealthCheck(patience=1)
    assert check.update({"a": 0.01, "b": 0.01, "c": 0.01, "fc": 0.13, "_all": 0.02}) == ([], [])
