"""The depth study runs end to end in its quick form and writes its tables, summary and figures."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.depth_study import BASE, SETTINGS, main


def test_the_predicted_equilibrium_is_the_one_of_the_literature():
    # Spherical motion dynamics (SGD with momentum) and rotational equilibrium (AdamW), written out plainly.
    assert BASE.predicted_step_rwc() == pytest.approx(math.sqrt(2 * 0.05 * 5e-4 / 1.9))
    adamw = next(s for s in SETTINGS if s.optimizer == "adamw")
    assert adamw.predicted_step_rwc() == pytest.approx(math.sqrt(2 * 1e-3 * 0.05))
    assert [s.predicted_step_rwc() for s in SETTINGS if not s.batchnorm or s.weight_decay == 0] == [None] * 3


@pytest.mark.slow
def test_quick_run_writes_the_report_the_summary_and_the_figures(tmp_path):
    report = main(["--quick", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["setting"]["name"] for s in summary] == [s.name for s in SETTINGS[:2]]
    for setting in summary:
        assert len(setting["l1"]["spearman_per_epoch_mean"]) == 2
        assert all(-1 <= rho <= 1 for norm in ("l1", "l2", "elementwise") for rho in setting[norm]["spearman_overall"])
        assert len(setting["last_epoch_step_l2"]) == len(setting["layers"]) == 7  # six convolutions and the head
    assert "| no batch norm |" in report.read_text()
    for figure in ("spearman_per_epoch.png", "step_rwc_vs_depth.png", "first_step_vs_depth.png", "weight_norms.png"):
        assert (tmp_path / figure).stat().st_size > 10_000


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_each_factor_changes_only_what_it_names_in_both_networks(arch):
    from dataclasses import replace

    from torch import nn

    from benchmarks.depth_study import ARCHITECTURES

    def shape(setting):
        model = ARCHITECTURES[arch](setting)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        strided = any(c.stride != (1, 1) for c in convs) or any(isinstance(m, nn.MaxPool2d) for m in model.modules())
        batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        return batchnorms, strided, sorted({c.out_channels for c in convs})

    assert shape(BASE) == (
        len([m for m in ARCHITECTURES[arch](BASE).modules() if isinstance(m, nn.Conv2d)]),
        True,
        [16, 32, 64],
    )
    assert (
        shape(replace(BASE, batchnorm=False))[1:] == (True, [16, 32, 64])
        and shape(replace(BASE, batchnorm=False))[0] == 0
    )
    assert shape(replace(BASE, downsample=False))[1] is False
    assert shape(replace(BASE, width=32))[2] == [32]
