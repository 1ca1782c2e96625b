"""The benchmarks run end to end in a tiny setting, so they cannot rot (no timing is asserted)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


def smoke_report(module: str, tmp_path: Path, *options: str) -> str:
    """Run ``python -m benchmarks.<module> --smoke`` and return the Markdown report it writes."""
    out = tmp_path / f"{module}.md"
    command = [sys.executable, "-m", f"benchmarks.{module}", "--smoke", *options, "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return out.read_text()


@pytest.mark.slow
def test_benchmark_smoke_run_writes_every_table(tmp_path):
    report = smoke_report("run", tmp_path, "--profile")
    for heading in (
        "bandwidth bound",
        "Where one measurement",
        "Snapshot memory",
        "Overhead in Trainer.fit",
        "Clustering",
        "Logging one measurement to TensorBoard",
        "Monitoring every step in Trainer.fit",
        "Long runs: reading every measurement back",
    ):
        assert heading in report
    assert "Self CPU" in report  # the profiler's own table
    assert "| resnet18 |" in report and "| 1000 | hdbscan |" in report
    assert "| callback every step, TensorBoard |" in report and "| one event (write_scalars) |" in report
    assert "| values file | 20000 |" in report


@pytest.mark.slow
def test_parts_benchmark_smoke_run_writes_every_table(tmp_path):
    report = smoke_report("parts", tmp_path)
    assert "| RelativeWeightChange() (default parts) |" in report
    assert "| 1000 | Loggers (TensorBoard, one event) |" in report
    assert "| encoded summary, google-crc32c (C) |" in report


@pytest.mark.slow
def test_dashboard_benchmark_smoke_run_writes_its_table(tmp_path):
    report = smoke_report("dashboard", tmp_path)
    assert "| 1000 |" in report and "warm answer s" in report


@pytest.mark.slow
def test_adapters_benchmark_smoke_run_writes_its_table(tmp_path):
    pytest.importorskip("peft")
    report = smoke_report("adapters", tmp_path)
    assert "| l1 | 8 |" in report and "| l2 | 8 |" in report  # 2 blocks x (c_attn, attn c_proj, c_fc, mlp c_proj)
    assert "materialised (ms)" in report


@pytest.mark.slow
def test_intervals_benchmark_smoke_run_writes_its_table(tmp_path):
    report = smoke_report("intervals", tmp_path)
    assert "| SGD, lr 0.02, momentum 0.9 (the demo's) | 2 |" in report and "later / one step" in report


@pytest.mark.slow
def test_optimizer_source_benchmark_smoke_run_writes_its_table(tmp_path):
    report = smoke_report("optimizer_source", tmp_path)
    for contender in ("| none |", "| snapshot |", "| optimizer |", "| copy |"):
        assert contender in report
    assert "measurement / copy" in report and "bytes held" in report


@pytest.mark.slow
def test_trainer_callback_benchmark_smoke_run_writes_its_table(tmp_path):
    pytest.importorskip("transformers")
    report = smoke_report("trainer_callback", tmp_path)
    for contender in ("| none |", "| bare tracker |", "| callback |"):
        assert contender in report
    assert "ms per step" in report and "extra ms / bare tracker's" in report


@pytest.mark.slow
def test_freezing_benchmark_smoke_run_reports_every_setting_and_contender(tmp_path):
    pytest.importorskip("transformers")
    write_fashion_mnist(tmp_path, train=400, test=200)
    out = tmp_path / "freezing"
    settings = ["fine-tuning", "fine-tuning (BERT)", "fine-tuning (BERT, Fashion-MNIST)", "from scratch"]
    options = ["--smoke", "--data-dir", str(tmp_path), "--threshold", "0.6", "--warmup", "3", "--out", str(out)]
    command = [sys.executable, "-m", "benchmarks.freezing", *options, "--settings", *settings]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    report = (out / "report.md").read_text()
    assert f"Command: `python -m benchmarks.freezing {shlex.join(command[3:])}`" in report
    for setting in settings:
        section = report.split(f"## {setting}\n")[1].split("\n## ")[0]
        for contender in ("none", "FreezeOut", "AutoFreeze", "LayerFreezer", "LayerFreezer+cache"):
            assert f"| {contender} |" in section and f"- {contender}: " in section
    assert (out / "accuracy-vs-time.png").stat().st_size > 0
