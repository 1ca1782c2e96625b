"""The values file: what is appended is read back, across segments, resumed runs and crashes, and from a real fit."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import fit_kwargs, make_tiny_module, tiny_loader
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_rwc import RelativeWeightChange
from lightning_rwc.parts import ValuesFile, default_parts
from lightning_rwc.runs import find_runs, load_history
from lightning_rwc.values_file import ValuesWriter, has_values, read_values


def f32(x: float) -> float:
    return float(np.float32(x))


def test_measurements_come_back_with_steps_epochs_and_layers_in_the_order_written(tmp_path):
    writer = ValuesWriter(tmp_path)
    writer.append(5, 0, {"wte.weight": 0.5, "h.10.weight": 0.25, "_all": 0.4})
    writer.append(10, 1, {"wte.weight": 0.125, "h.10.weight": 1e-7, "_all": 0.1})
    writer.close()
    history = read_values(tmp_path)
    assert history.layers == ["wte.weight", "h.10.weight"]
    assert history.steps == [5, 10] and history.epochs == [0, 1]
    np.testing.assert_array_equal(history.values, [[0.5, 0.125], [0.25, f32(1e-7)]])
    np.testing.assert_array_equal(history.total, [f32(0.4), f32(0.1)])


def test_values_beyond_float32_are_stored_as_inf_and_nan_stays_nan(tmp_path):
    writer = ValuesWriter(tmp_path)
    writer.append(1, 0, {"a": 1e300, "b": float("nan"), "_all": -1e300})
    writer.append(2, 0, {"a": 1.0, "b": 2.0})  # no _all: missing
    writer.close()
    history = read_values(tmp_path)
    np.testing.assert_array_equal(history.values, [[np.inf, 1.0], [np.nan, 2.0]])
    np.testing.assert_array_equal(history.total, [-np.inf, np.nan])


def test_new_layers_and_resumed_runs_start_segments_and_later_rows_replace_earlier_ones_at_a_step(tmp_path):
    first = ValuesWriter(tmp_path)
    first.append(1, 0, {"a": 1.0, "_all": 1.0})
    first.append(2, 0, {"a": 2.0, "b": 20.0, "_all": 2.0})  # b appears: a new segment
    first.append(3, 0, {"a": 3.0, "b": 30.0, "_all": 3.0})  # measured, then the run crashed and resumed at step 2
    first.close()
    resumed = ValuesWriter(tmp_path)
    resumed.append(3, 1, {"a": 3.5, "b": 35.0, "_all": 3.5})
    resumed.append(4, 1, {"a": 4.0, "b": 40.0, "_all": 4.0})
    resumed.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"00000{i}.{ext}" for i in range(3) for ext in ("bin", "json")
    ]
    history = read_values(tmp_path)
    assert history.steps == [1, 2, 3, 4] and history.epochs == [0, 0, 1, 1]
    np.testing.assert_array_equal(history.values, [[1.0, 2.0, 3.5, 4.0], [np.nan, 20.0, 35.0, 40.0]])
    np.testing.assert_array_equal(history.total, [1.0, 2.0, 3.5, 4.0])


def test_a_row_cut_off_by_a_crash_is_left_out_with_a_warning_naming_the_file_and_bytes(tmp_path):
    writer = ValuesWriter(tmp_path)
    for step in (1, 2, 3):
        writer.append(step, 0, {"a": float(step), "_all": float(step)})
    writer.close()
    data = tmp_path / "000000.bin"
    data.write_bytes(data.read_bytes()[:-3])
    row = 8 + 8 + 4 + 4  # step, epoch, _all, one layer
    message = rf"{re.escape(str(data))}: bytes {2 * row} to {3 * row - 3} could not be read"
    with pytest.warns(UserWarning, match=message):
        history = read_values(tmp_path)
    assert history.steps == [1, 2]


def test_a_damaged_layer_list_is_an_error_naming_the_file(tmp_path):
    ValuesWriter(tmp_path).append(1, 0, {"a": 1.0, "_all": 1.0})
    (tmp_path / "000000.json").write_text('{"format": 1, "layers": [3]}')
    with pytest.raises(ValueError, match=r"000000\.json is not a values file segment written by this version"):
        read_values(tmp_path)
    assert has_values(tmp_path) and not has_values(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no values file segment"):
        read_values(tmp_path / "missing")


def event_scalars(log_dir) -> dict[str, dict[int, float]]:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


def test_a_fit_writes_beside_the_event_files_every_value_they_hold_and_the_readers_take_it(tmp_path):
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=1, parts=[*default_parts(), ValuesFile()])
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = Trainer(max_epochs=3, callbacks=[rwc], logger=[logger, CSVLogger(tmp_path)], **fit_kwargs())
    trainer.fit(make_tiny_module(), tiny_loader(n=32, batch_size=8))
    logger.experiment.flush()
    run = tmp_path / "run" / "version_0"
    assert has_values(run / "rwc_values") and find_runs(tmp_path) == [tmp_path / "lightning_logs" / "version_0", run]

    history = load_history(run)  # the values file, not the event files
    scalars = event_scalars(run)
    assert history.layers == rwc.history.layers and history.steps == rwc.history.steps == list(range(1, 13))
    assert history.epochs == [0] * 4 + [1] * 4 + [2] * 4
    for i, name in enumerate(history.layers):
        np.testing.assert_array_equal(history.values[i], [scalars[f"rwc/{name}"][s] for s in history.steps])
    np.testing.assert_array_equal(history.total, [scalars["rwc/_all"][s] for s in history.steps])


def test_a_run_resumed_in_its_log_directory_reads_back_as_its_event_files_do(tmp_path):
    def fit(epochs, ckpt_path=None):
        rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=3, parts=[*default_parts(), ValuesFile()])
        logger = TensorBoardLogger(tmp_path, name="run", version=0)
        trainer = Trainer(max_epochs=epochs, callbacks=[rwc], logger=logger, **fit_kwargs())
        trainer.fit(make_tiny_module(), tiny_loader(n=32, batch_size=8), ckpt_path=ckpt_path)
        logger.experiment.flush()
        return trainer

    fit(2).save_checkpoint(tmp_path / "epoch2.ckpt")
    fit(4, ckpt_path=tmp_path / "epoch2.ckpt")
    run = tmp_path / "run" / "version_0"
    assert len(list((run / "rwc_values").glob("*.bin"))) == 2  # one segment per process
    history, scalars = load_history(run), event_scalars(run)
    assert history.steps == [3, 6, 9, 12, 15]
    for i, name in enumerate(history.layers):
        np.testing.assert_array_equal(history.values[i], [scalars[f"rwc/{name}"][s] for s in history.steps])
