"""The callback through LightningCLI and through every common logger, read back from each logger's own files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fit_kwargs, make_tiny_module, tiny_loader
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_rwc import RelativeWeightChange
from lightning_rwc.parts import Heatmap, default_parts

APP = Path(__file__).with_name("lightning_cli_app.py")
KEYS = ["rwc/net.conv.weight", "rwc/net.head.weight", "rwc/_all"]


def history_columns(rwc: RelativeWeightChange) -> dict[str, list[float]]:
    return {
        "rwc/net.conv.weight": rwc.history.values[0].tolist(),
        "rwc/net.head.weight": rwc.history.values[1].tolist(),
        "rwc/_all": rwc.history.total.tolist(),
    }


def test_lightning_cli_configures_the_callback_from_yaml(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
trainer:
  max_epochs: 2
  accelerator: cpu
  enable_progress_bar: false
  enable_checkpointing: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args:
      save_dir: {tmp_path}
      name: cli
  callbacks:
    - class_path: lightning_rwc.RelativeWeightChange
      init_args:
        norm: l2
        log_prefix: weights
        exclude: conv
        parts:
          - class_path: lightning_rwc.parts.History
            init_args:
              capacity: 50
          - class_path: lightning_rwc.parts.Loggers
            init_args:
              flush_every_s: 0
"""
    )
    subprocess.run([sys.executable, str(APP), "fit", "--config", str(config)], check=True, capture_output=True)
    with open(tmp_path / "cli" / "version_0" / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("weights/_all")]
    assert [int(r["step"]) for r in rows] == [8, 16]
    assert "weights/net.head.weight" in rows[0] and "weights/net.conv.weight" not in rows[0]
    assert float(rows[0]["weights/net.head.weight"]) == pytest.approx(float(rows[0]["weights/_all"]))
    assert not any(key.startswith("weights_health/") for key in rows[0])  # HealthFlags left out of the parts


def test_lightning_cli_help_shows_the_arguments_and_their_docs():
    out = subprocess.run(
        [sys.executable, str(APP), "fit", "--trainer.callbacks.help", "lightning_rwc.RelativeWeightChange"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "--trainer.callbacks.every_n_steps" in out
    assert "measure every n optimizer steps" in " ".join(out.split())  # the docstring's Args, as help


def test_mlflow_logger_with_a_local_file_store_receives_the_values(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow-skinny is not installed")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store in maintenance mode
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    logger = MLFlowLogger(experiment_name="rwc", tracking_uri=uri)
    rwc = RelativeWeightChange()
    Trainer(max_epochs=2, callbacks=[rwc], logger=logger, **fit_kwargs()).fit(make_tiny_module(), tiny_loader())
    client = MlflowClient(tracking_uri=uri)
    for key, expected in history_columns(rwc).items():
        metrics = client.get_metric_history(logger.run_id, key)
        assert [m.step for m in metrics] == rwc.history.steps
        assert [m.value for m in metrics] == pytest.approx(expected)


def test_wandb_logger_offline_receives_the_values(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="rwc")
    rwc = RelativeWeightChange()
    Trainer(max_epochs=2, callbacks=[rwc], logger=logger, **fit_kwargs()).fit(make_tiny_module(), tiny_loader())
    summary = dict(logger.experiment.summary)
    logger.experiment.finish()
    for key, expected in history_columns(rwc).items():
        assert summary[key] == pytest.approx(expected[-1])
    assert summary["trainer/global_step"] == rwc.history.steps[-1]
    # Every logged value is in the offline run file, as the JSON text wandb stores for each history item.
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    content = run_file.read_bytes()
    for key, expected in history_columns(rwc).items():
        assert key.encode() in content
        for value in expected:
            assert json.dumps(value).encode() in content, (key, value)


def test_tensorboard_gets_a_heatmap_image_when_asked(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb")
    rwc = RelativeWeightChange(parts=[*default_parts(), Heatmap()])
    Trainer(max_epochs=3, callbacks=[rwc], logger=logger, **fit_kwargs()).fit(make_tiny_module(), tiny_loader())
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    images = acc.Images("rwc/heatmap")
    assert [i.step for i in images] == rwc.history.steps
    assert (images[-1].height, images[-1].width) == (2 * 4, 3 * 4)  # 2 layers x 3 measurements, 4 px cells


def test_the_heatmap_is_logged_at_epoch_ends_only_when_measuring_by_steps(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb")
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=1, parts=[*default_parts(), Heatmap()])
    Trainer(max_epochs=2, callbacks=[rwc], logger=logger, **fit_kwargs()).fit(make_tiny_module(), tiny_loader())
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    images = acc.Images("rwc/heatmap")
    assert rwc.history.steps == list(range(1, 17))  # 8 steps per epoch, each measured
    assert [i.step for i in images] == [8, 16]
    assert (images[-1].height, images[-1].width) == (2 * 4, 16 * 4)


def test_several_loggers_of_different_kinds_receive_identical_values(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow-skinny is not installed")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    loggers = [
        TensorBoardLogger(tmp_path, name="tb"),
        CSVLogger(tmp_path, name="csv"),
        MLFlowLogger("rwc", tracking_uri=uri),
    ]
    rwc = RelativeWeightChange()
    Trainer(max_epochs=2, callbacks=[rwc], logger=loggers, **fit_kwargs()).fit(make_tiny_module(), tiny_loader())
    loggers[0].experiment.flush()
    acc = EventAccumulator(loggers[0].log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    with open(Path(loggers[1].log_dir) / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("rwc/_all")]
    client = MlflowClient(tracking_uri=uri)
    for key in KEYS:
        tb = [e.value for e in acc.Scalars(key)]
        from_csv = [float(r[key]) for r in rows]
        mlflow = [m.value for m in client.get_metric_history(loggers[2].run_id, key)]
        np.testing.assert_allclose(tb, from_csv, rtol=1e-6)
        np.testing.assert_allclose(mlflow, from_csv, rtol=1e-12)
