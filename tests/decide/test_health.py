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
    fast = {"a": 0.01, "d": 0.5, "b": 0.012, "c": 0.011, "_all": 0.02}  # 0.5 is over 30x the median 0.0115
    assert check.update(fast) == ([], [])
    assert check.update(fast) == ([], ["d"])
    assert check.update({**fast, "d": 0.02}) == ([], []) and check.runaway == set()


def test_a_head_ten_times_the_median_is_not_flagged_by_default():
    check = HealthCheck(patience=1)
    assert check.update({"a": 0.01, "b": 0.01, "c": 0.01, "fc": 0.13, "_all": 0.02}) == ([], [])


def test_the_last_layer_runs_away_only_beyond_head_factor():
    check = HealthCheck(patience=1)
    assert check.update({"a": 0.01, "b": 0.01, "c": 0.01, "fc": 0.5, "_all": 0.02}) == ([], [])  # 50x: a head
    assert check.update({"a": 0.01, "b": 0.01, "c": 0.01, "fc": 3.5, "_all": 0.02}) == ([], ["fc"])  # 350x


def test_first_flags_of_a_whole_table_agree_with_the_check_measurement_by_measurement():
    import numpy as np

    from lightning_rwc.decide.health import first_flags

    rng = np.random.default_rng(0)
    for _ in range(20):
        values = rng.lognormal(-5, 1, (12, 15))
        values[rng.random(values.shape) < 0.15] = 0.0  # layers that stand still at times
        values[rng.random(values.shape) < 0.1] *= 100  # and run away at times
        values[rng.random(values.shape) < 0.05] = np.nan
        total = np.where(rng.random(15) < 0.1, 0.0, 0.01)
        check, first = HealthCheck(), {"dead": [-1] * 12, "runaway": [-1] * 12}
        names = [f"l{i}" for i in range(12)]
        for j in range(15):
            dead, runaway = check.update(dict(zip(names, values[:, j].tolist(), strict=True)) | {"_all": total[j]})
            for kind, newly in (("dead", dead), ("runaway", runaway)):
                for name in newly:
                    i = names.index(name)
                    first[kind][i] = j if first[kind][i] < 0 else first[kind][i]
        assert {kind: flags.tolist() for kind, flags in first_flags(values, total).items()} == first


def test_dead_layers_are_left_out_of_the_median_of_the_runaway_test():
    import numpy as np

    from lightning_rwc.decide.health import first_flags

    moving = np.geomspace(1e-3, 1e-2, 60)
    layers = {f"dead{i}": 0.0 for i in range(40)} | {f"l{i}": v for i, v in enumerate(moving)}
    layers |= {"fast": 0.06, "head": 0.01, "_all": 0.01}
    of_moving = float(np.median([v for k, v in layers.items() if k != "_all" and v > 0]))  # 3.4e-3: 18x
    with_zeros = float(np.median([v for k, v in layers.items() if k != "_all"]))  # 1.5e-3: 40x, past 30
    assert 30 * of_moving > 0.06 and 30 * with_zeros < 0.06
    check = HealthCheck(patience=1)
    dead, runaway = check.update(layers)
    assert dead == [f"dead{i}" for i in range(40)] and runaway == []
    table = np.array([[v, v] for k, v in layers.items() if k != "_all"])
    flags = first_flags(table, np.full(2, 0.01), patience=1)
    assert (flags["dead"][:40] == 0).all() and (flags["runaway"] == -1).all()
    layers["fast"] = 31 * of_moving  # beyond 30x the median of the layers that moved: flagged
    assert check.update(layers) == ([], ["fast"])
