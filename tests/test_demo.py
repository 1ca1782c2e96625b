"""The demo: data readers and a short end-to-end run."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from conftest import write_fashion_mnist

from lightning_rwc.demo import add_arguments, load_fashion_mnist_arrays, read_idx, resnet18_for_small_grey_images


def test_fashion_mnist_is_read_from_idx_files(tmp_path):
    written = write_fashion_mnist(tmp_path, train=6, test=3)
    arrays = load_fashion_mnist_arrays(tmp_path)
    x, y = arrays["train"]
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0] * 255, written["train"][0], atol=1e-4)
    np.testing.assert_array_equal(arrays["test"][1], written["t10k"][1])


def test_missing_fashion_mnist_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist_arrays(tmp_path)


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "x").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        read_idx(tmp_path / "x")


def test_the_cpu_budget_follows_a_cgroup_quota(monkeypatch):
    import lightning_rwc.demo as demo

    files = {"/sys/fs/cgroup/cpu.max": ["150000", "100000"]}
    monkeypatch.setattr(demo, "_read_words", lambda path: files.get(path, []))
    monkeypatch.setattr(demo.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert demo.cpu_budget() == 2  # 1.5 CPUs of time: two threads
    files = {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": ["-1"], "/sys/fs/cgroup/cpu/cpu.cfs_period_us": ["100000"]}
    assert demo.cpu_budget() == 64  # no quota: the affinity
    files = {"/sys/fs/cgroup/cpu.max": ["max", "100000"]}
    assert demo.cpu_budget() == 64


def test_adapted_resnet18_keeps_small_images_alive():
    import torch

    model = resnet18_for_small_grey_images()
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.slow
def test_demo_trains_logs_and_clusters(tmp_path, capsys):
    from lightning_rwc.demo import run_demo
    from lightning_rwc.runs import load_history

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--epochs", "3", "--limit", "256", "--every-n-steps", "2", "--out", str(tmp_path)])
    summary = run_demo(args)
    history = load_history(summary["log_dir"])  # 4 steps per epoch
    assert history.steps == [2, 4, 6, 8, 10, 12] and len(history.layers) == 21
    assert 0.0 <= summary["accuracy"] <= 1.0
    out = capsys.readouterr().out
    assert f"tensorboard --logdir {tmp_path}" in out
    assert summary["clusters"].json_path.is_file()


def test_demo_command_reports_missing_data_without_a_traceback(tmp_path, capsys):
    from lightning_rwc.cli import main

    assert main(["demo", "--data", "fashion-mnist", "--data-dir", str(tmp_path)]) == 2
    assert "lacks train-images-idx3-ubyte.gz" in capsys.readouterr().err


def test_a_demo_too_short_to_measure_twice_says_so_before_training(capsys):
    from lightning_rwc.cli import main

    assert main(["demo", "--epochs", "1", "--limit", "128"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: 1 epochs of 2 batches are 2 optimizer steps")
    assert "Raise --epochs or --limit, or lower --every-n-steps." in err
