"""WarnOnce: each key once, to the owner's emitter; the default warning points at the user's code."""

from __future__ import annotations

import warnings

import pytest

from lightning_rwc.warn_once import WarnOnce, runtime_warning


def test_each_key_is_given_once_per_owner():
    first, second = [], []
    warn_first, warn_second = WarnOnce(first.append), WarnOnce(second.append)
    for _ in range(3):
        warn_first(("layer", "nan"), "layer is nan")
        warn_second(("layer", "nan"), "layer is nan")
    warn_first(("layer", "zero"), "layer is zero")
    assert first == ["layer is nan", "layer is zero"]
    assert second == ["layer is nan"]


def test_the_default_is_a_runtime_warning_from_the_first_frame_outside_the_package():
    with pytest.warns(RuntimeWarning, match="careful") as caught:
        WarnOnce()("key", "careful")
    assert caught[0].filename == __file__
    with warnings.catch_warnings(record=True) as direct:
        warnings.simplefilter("always")
        runtime_warning("direct")
    assert direct[0].filename == __file__ and direct[0].category is RuntimeWarning
