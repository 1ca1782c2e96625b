"""The replication study in a smoke setting: two epochs on a small subset of digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.replicate import LEARNED, block_means, build, findings, main


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
    answered = 0
    for model in ("resnet18", "vgg_bn", "alexnet"):  # two epochs on 128 images: some may not learn
        left_out = f"{model} on digits: **left out**" in text
        assert left_out != all(f"{finding} {model} on digits" in text for finding in ("1.", "2.", "3."))
        answered += 0 if left_out else 3
    assert text.count("**held**") + text.count("**did not hold**") == answered
    assert sorted(p.name for p in out.glob("*.png")) == [
        f"blocks-{m}-digits.png" for m in ("alexnet", "resnet18", "vgg_bn")
    ]


def test_runs_that_did_not_learn_are_flagged_and_left_out_and_deeper_blocks_compare_the_data_sets():
    from lightning_rwc.history import RWCHistory

    layers = [f"features.{i}.weight" for i in range(8)] + ["classifier.weight"]
    depth = np.arange(9)[:, None]

    def run(accuracy: float, deeper: float) -> list[dict]:  # RWC falling over 4 epochs, scaled per layer by depth
        values = 0.01 * (1 + deeper * depth) / np.arange(1, 5)
        history = RWCHistory.from_arrays(layers, [10, 20, 30, 40], values, total=values.mean(axis=0))
        return [{"history": history, "accuracy": accuracy}]

    runs = {
        ("vgg_bn", "digits"): run(0.95, deeper=0.0),
        ("vgg_bn", "fashion-mnist"): run(0.85, deeper=0.5),  # the harder task: more change in the deeper layers
        ("alexnet", "digits"): run(LEARNED - 0.01, deeper=0.0),
    }
    lines = findings(runs)
    assert [line for line in lines if "alexnet" in line] == [
        f"alexnet on digits: **left out**: test accuracy {LEARNED - 0.01:.3f}, below twice chance (0.20): it did "
        "not learn, so its weight changes say nothing of learning"
    ]
    (deeper,) = [line for line in lines if "deeper layers" in line]
    blocks = [(1 + 0.5 * g.mean()) for g in np.array_split(np.arange(8), 4)]  # fashion over digits, per block
    assert "**held**" in deeper and ", ".join(f"{b:.2f}x" for b in blocks) in deeper


def test_findings_of_an_earlier_report_are_written_again_from_its_histories(tmp_path):
    from lightning_rwc.files import write_json
    from lightning_rwc.history import RWCHistory

    values = 0.01 / np.arange(1, 5) * np.ones((5, 1))
    history = RWCHistory.from_arrays([f"features.{i}.weight" for i in range(5)], [1, 2, 3, 4], values, total=values[0])
    write_json(
        tmp_path / "histories.json", {"vgg_bn/digits": [history.as_json()], "alexnet/digits": [history.as_json()]}
    )
    table = "| vgg_bn | digits | 0.950 |  | 0.1 |\n| alexnet | digits | 0.100 |  | 0.0 |\n"
    (tmp_path / "report.md").write_text(f"# R\n\n## Findings\n\n- old\n\n## Test accuracy\n\n{table}")
    text = main(["--findings-of", str(tmp_path)]).read_text()
    assert "- old" not in text and "1. vgg_bn on digits: RWC falls over training: **held**" in text
    assert "alexnet on digits: **left out**: test accuracy 0.100" in text and "1. alexnet" not in text
    assert "| alexnet | digits | 0.100 (did not learn) |" in text and "| vgg_bn | digits | 0.950 |" in text


def test_findings_of_a_folder_without_a_report_says_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="has no report.md or histories.json"):
        main(["--findings-of", str(tmp_path)])
