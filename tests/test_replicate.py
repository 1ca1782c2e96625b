"""The replication study in a smoke setting: two epochs on a small subset of digits."""

from __future__ import annotations

import pytest
import torch

from benchmarks.replicate import block_means, build, main


@pytest.mark.parametrize("name", ["resnet18", "vgg_bn", "alexnet"])
def test_adapted_models_take_28x28_grey_images(name):
    assert build(name)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_block_means_average_consecutive_layers():
    import numpy as np

    values = np.arange(8, dtype=float).reshape(8, 1)
    assert block_means(values).ravel().tolist() == [0.5, 2.5, 4.5, 6.5]


@pytest.mark.slow
def test_smoke_run_writes_a_report_answering_the_findings(tmp_path):
    out = tmp_path / "rep"
    report = main(
        ["--datasets", "digits", "--epochs", "2", "--subset", "128", "--test-subset", "64", "--out", str(out)]
    )
    text = report.read_text()
    for model in ("resnet18", "vgg_bn", "alexnet"):
        for finding in ("1.", "2.", "3."):
            assert f"{finding} {model} on digits" in text
    assert text.count("**held**") + text.count("**did not hold**") == 9
    assert sorted(p.name for p in out.glob("*.png")) == [
        f"blocks-{m}-digits.png" for m in ("alexnet", "resnet18", "vgg_bn")
    ]
