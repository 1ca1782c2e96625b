"""RelativeWeightChange in real Trainer.fit runs, read back through each logger's own files."""

from __future__ import annotations

import csv
import itertools
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fit_kwargs, make_tiny_module, reference_rwc, tiny_loader, weights
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from lightning_rwc import RelativeWeightChange
from lightning_rwc.parts import HealthFlags, Heatmap, History, LiveClustering, Loggers, default_parts
from lightning_rwc.runs import load_history

TRACKED = ["net.conv.weight", "net.head.weight"]


class WeightRecorder(Callback):
    """Copies the tracked weights at the start of training and after every optimizer step (float64)."""

    def __init__(self):
        self.by_step = {}
        self.names = TRACKED

    def on_train_start(self, trainer, pl_module):
        self.by_step[0] = weights(pl_module, self.names)

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.by_step[trainer.global_step] = weights(pl_module, self.names)


def expected_curves(recorder: WeightRecorder, steps: list[int], norm: str = "l1") -> dict[int, dict[str, float]]:
    out, previous = {}, 0
    for step in steps:
        out[step] = reference_rwc(recorder.by_step[previous], recorder.by_step[step], norm)
        previous = step
    return out


def read_scalars(log_dir: str) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}, acc


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_epochs": 0}, "every_n_epochs must be a whole number >= 1 or None, got 0"),
        ({"every_n_steps": -5}, "every_n_steps must be a whole number >= 1 or None, got -5"),
        ({"every_n_epochs": 1.5}, "got 1.5"),
        ({"every_n_epochs": None}, "Set every_n_epochs or every_n_steps"),
        ({"norm": "max"}, "norm must be one of"),
        ({"params": "biases"}, "params must be one of"),
        ({"include": "[unclosed"}, "include pattern '\\[unclosed' is not a valid"),
        ({"log_prefix": "a/b"}, "log_prefix must be a non-empty string without '/'"),
        ({"snapshot_device": "cuda:3"}, "snapshot_device must be None"),
        ({"parts": [object()]}, "parts must be Part instances"),
        ({"kernel": "cuda"}, "kernel must be one of"),
        ({"source": "grads"}, "source must be one of"),
        ({"source": "optimizer", "every_n_steps": 2}, "every_n_steps must be 1 \\(got 2\\)"),
        ({"source": "optimizer"}, "every_n_steps must be 1 \\(got None\\)"),
    ],
)
def test_invalid_arguments_are_rejected_in_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RelativeWeightChange(**kwargs)


def test_fit_logs_every_layer_to_tensorboard_with_reference_values_and_steps(tmp_path):
    recorder = WeightRecorder()
    rwc = RelativeWeightChange()
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = Trainer(max_epochs=3, callbacks=[recorder, rwc], logger=logger, **fit_kwargs())
    trainer.fit(make_tiny_module(), tiny_loader(n=64, batch_size=16))
    logger.experiment.flush()

    steps = [4, 8, 12]
    expected = expected_curves(recorder, steps)
    scalars, acc = read_scalars(logger.log_dir)
    assert {tag for tag in scalars if tag.startswith("rwc/")} == {f"rwc/{n}" for n in [*TRACKED, "_all"]}
    for name in [*TRACKED, "_all"]:
        logged = scalars[f"rwc/{name}"]
        assert sorted(logged) == steps
        for step in steps:
            assert logged[step] == pytest.approx(expected[step][name], rel=1e-5)
    assert rwc.history.steps == steps
    assert rwc.history.epochs == [0, 1, 2]
    assert rwc.history.values[0].tolist() == pytest.approx([expected[s][TRACKED[0]] for s in steps], rel=1e-6)

    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for chart in layout.category[0].chart}
    assert charts["conv"] == [r"rwc/net\.conv\.weight$"]
    assert charts["head"] == [r"rwc/net\.head\.weight$"]
    assert len(acc.Histograms("rwc/distribution")) == 3


def test_every_n_steps_counts_optimizer_steps_under_gradient_accumulation(tmp_path):
    recorder = WeightRecorder()
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=3)
    trainer = Trainer(
        max_epochs=2,
        accumulate_grad_batches=2,
        callbacks=[recorder, rwc],
        logger=CSVLogger(tmp_path),
        **fit_kwargs(),
    )
    trainer.fit(make_tiny_module(), tiny_loader(n=96, batch_size=8))  # 12 batches -> 6 optimizer steps per epoch
    assert trainer.global_step == 12
    assert rwc.history.steps == [3, 6, 9, 12]
    expected = expected_curves(recorder, [3, 6, 9, 12])
    for j, step in enumerate(rwc.history.steps):
        assert rwc.history.total[j] == pytest.approx(expected[step]["_all"], rel=1e-5)


def test_source_optimizer_measures_each_optimizer_step_under_gradient_accumulation(tmp_path):
    recorder = WeightRecorder()
    rwc = RelativeWeightChange(every_n_steps=1, source="optimizer")
    trainer = Trainer(max_epochs=2, accumulate_grad_batches=3, callbacks=[recorder, rwc], logger=False, **fit_kwargs())
    with pytest.warns(UserWarning, match="found no logger"):
        trainer.fit(make_tiny_module(), tiny_loader(n=96, batch_size=8))  # 12 batches -> 4 optimizer steps per epoch
    assert rwc.history.steps == list(range(1, 9))
    expected = expected_curves(recorder, rwc.history.steps)
    for j, step in enumerate(rwc.history.steps):
        for i, name in enumerate(rwc.history.layers):
            assert rwc.history.values[i][j] == pytest.approx(expected[step][name], rel=1e-5), (name, step)


class TwoOptimizers(LightningModule):
    """Manual optimization with two optimizers, as a GAN steps them: the global step grows by 2 per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.first, self.second = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

    def training_step(self, batch, batch_idx):
        first, second = self.optimizers()
        for optimizer in (first, second):
            optimizer.zero_grad()
            self.manual_backward(self.second(torch.tanh(self.first(batch[0]))).pow(2).mean())
            optimizer.step()

    def configure_optimizers(self):
        return torch.optim.Adam(self.first.parameters(), lr=0.01), torch.optim.SGD(self.second.parameters(), lr=0.1)


@pytest.mark.parametrize(("every", "expected"), [(3, [4, 8, 12]), (4, [4, 8, 12]), (2, [2, 4, 6, 8, 10, 12])])
def test_with_two_optimizers_every_n_steps_counts_optimizer_steps_since_the_previous_measurement(every, expected):
    recorder = WeightRecorder()
    recorder.names = ["first.weight", "second.weight"]
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=every)
    trainer = Trainer(max_epochs=1, callbacks=[recorder, rwc], logger=False, **fit_kwargs())
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(48, 4)), batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TwoOptimizers(), data)  # 6 batches, 2 optimizer steps each: global steps 2, 4, ..., 12
    assert rwc.history.steps == expected  # every interval the same: the first batch end with `every` steps or more
    assert not [w for w in caught if "different numbers of optimizer steps" in str(w.message)]
    reference = expected_curves(recorder, expected)
    for j, step in enumerate(expected):
        for i, name in enumerate(rwc.history.layers):
            assert rwc.history.values[i][j] == pytest.approx(reference[step][name], rel=1e-5), (name, step)


def test_source_optimizer_with_two_optimizers_measures_each_tensor_through_its_own(tmp_path):
    recorder = WeightRecorder()
    recorder.names = ["first.weight", "second.weight"]
    rwc = RelativeWeightChange(every_n_steps=1, source="optimizer")
    trainer = Trainer(max_epochs=1, callbacks=[recorder, rwc], logger=False, **fit_kwargs())
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(24, 4)), batch_size=8)
    with pytest.warns(UserWarning, match="found no logger"):
        trainer.fit(TwoOptimizers(), data)
    assert rwc.history.steps == [2, 4, 6]
    expected = expected_curves(recorder, rwc.history.steps)
    for j, step in enumerate(rwc.history.steps):
        for i, name in enumerate(rwc.history.layers):
            assert rwc.history.values[i][j] == pytest.approx(expected[step][name], rel=1e-5), (name, step)


def test_epoch_and_step_schedules_together_count_steps_from_the_latest_measurement_and_warn_once(tmp_path):
    rwc = RelativeWeightChange(every_n_epochs=1, every_n_steps=4)
    trainer = Trainer(max_epochs=3, callbacks=[rwc], logger=False, **fit_kwargs())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(make_tiny_module(), tiny_loader(n=48, batch_size=8))  # 6 steps per epoch
    assert rwc.history.steps == [4, 6, 10, 12, 16, 18]  # every step measured once; 4 steps after each measurement
    uneven = [str(w.message) for w in caught if "different numbers of optimizer steps" in str(w.message)]
    assert uneven == [
        "RelativeWeightChange: measurements cover different numbers of optimizer steps (4 and 2): an epoch's end "
        "falls between step measurements. RWC grows with the steps it covers, so values of different intervals are "
        "not comparable: the RWC tab shows each one's interval and the clustering divides by it. For equal "
        "intervals, set one schedule."
    ]


def test_a_run_that_ends_mid_interval_does_not_warn_of_uneven_intervals(tmp_path):
    rwc = RelativeWeightChange(every_n_epochs=1)
    trainer = Trainer(max_epochs=3, max_steps=15, callbacks=[rwc], logger=False, **fit_kwargs())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(make_tiny_module(), tiny_loader(n=48, batch_size=8))  # 6 steps per epoch: the last has 3
    assert rwc.history.steps == [6, 12, 15]
    assert not [w for w in caught if "different numbers of optimizer steps" in str(w.message)]


def test_csv_logger_receives_the_same_values(tmp_path):
    rwc = RelativeWeightChange(norm="l2")
    logger = CSVLogger(tmp_path, name="csv")
    trainer = Trainer(max_epochs=2, callbacks=[rwc], logger=logger, **fit_kwargs())
    trainer.fit(make_tiny_module(), tiny_loader())
    with open(f"{logger.log_dir}/metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("rwc/_all")]
    assert [int(row["step"]) for row in rows] == rwc.history.steps
    for j, row in enumerate(rows):
        for i, name in enumerate(TRACKED):
            assert float(row[f"rwc/{name}"]) == pytest.approx(rwc.history.values[i, j], rel=1e-6)


def fit_logging_to_tensorboard_and_csv(tmp_path, rwc: RelativeWeightChange, prefix: str = ""):
    """Fit with a TensorBoardLogger and a CSVLogger; the scalars and the CSV rows of RWC values read back."""
    tb = TensorBoardLogger(tmp_path, name="tb", prefix=prefix)
    csv_logger = CSVLogger(tmp_path, name="csv", prefix=prefix)
    trainer = Trainer(max_epochs=2, callbacks=[rwc], logger=[tb, csv_logger], **fit_kwargs())
    trainer.fit(make_tiny_module(), tiny_loader())
    tb.experiment.flush()
    scalars, acc = read_scalars(tb.log_dir)
    with open(f"{csv_logger.log_dir}/metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get(f"{prefix}-rwc/_all" if prefix else "rwc/_all")]
    return scalars, acc, rows, tb.log_dir


def test_several_loggers_receive_the_same_values(tmp_path):
    rwc = RelativeWeightChange()
    scalars, _, rows, _ = fit_logging_to_tensorboard_and_csv(tmp_path, rwc)
    assert [float(r["rwc/_all"]) for r in rows] == pytest.approx([scalars["rwc/_all"][s] for s in rwc.history.steps])


def test_a_logger_prefix_names_the_tensorboard_tags_as_lightning_names_every_logger_key(tmp_path):
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=2)
    scalars, acc, rows, log_dir = fit_logging_to_tensorboard_and_csv(tmp_path, rwc, prefix="train")
    csv_keys = {key for key in rows[0] if key.startswith("train-rwc")}
    health = {f"train-rwc_health/{kind}_layers" for kind in ("dead", "runaway")}
    assert csv_keys == {f"train-rwc/{name}" for name in [*TRACKED, "_all"]} | health
    assert [int(float(row["train-epoch"])) for row in rows] == rwc.history.epochs  # as Lightning names its epoch
    assert {tag for tag in scalars if "rwc" in tag} == csv_keys
    for key in csv_keys:
        assert sorted(scalars[key]) == [int(row["step"]) for row in rows] == rwc.history.steps
        assert [scalars[key][int(row["step"])] for row in rows] == pytest.approx([float(row[key]) for row in rows])

    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    patterns = [tag for chart in layout.category[0].chart for tag in chart.multiline.tag]
    assert all(any(re.match(pattern, tag) for tag in csv_keys) for pattern in patterns[:-1])  # last: live clusters
    assert load_history(log_dir, prefix="train-rwc").values == pytest.approx(rwc.history.values)


class UpperCaseLogger(TensorBoardLogger):
    """Names its tags in a way that is not a prefix: the callback must then leave the naming to it."""

    def log_metrics(self, metrics, step=None):
        super().log_metrics({key.upper(): value for key, value in metrics.items()}, step)


def test_a_logger_that_renames_keys_otherwise_receives_every_measurement_through_log_metrics(tmp_path):
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=2, parts=[History(), Loggers()])
    logger = UpperCaseLogger(tmp_path)
    trainer = Trainer(max_epochs=2, callbacks=[rwc], logger=logger, **fit_kwargs())
    trainer.fit(make_tiny_module(), tiny_loader())
    logger.experiment.flush()
    scalars, _ = read_scalars(logger.log_dir)
    assert {tag for tag in scalars if "RWC" in tag.upper()} == {f"rwc/{name}".upper() for name in [*TRACKED, "_all"]}
    for j, step in enumerate(rwc.history.steps):
        assert scalars["RWC/_ALL"][step] == pytest.approx(rwc.history.total[j], rel=1e-6)


def test_without_logger_it_measures_keeps_history_and_warns_once(tmp_path):
    rwc = RelativeWeightChange()
    trainer = Trainer(max_epochs=2, callbacks=[rwc], logger=False, **fit_kwargs())
    with pytest.warns(UserWarning, match="found no logger") as caught:
        trainer.fit(make_tiny_module(), tiny_loader())
    assert len([w for w in caught if "found no logger" in str(w.message)]) == 1
    assert len(rwc.history) == 2


def test_sanity_check_and_validation_do_not_measure(tmp_path):
    rwc = RelativeWeightChange()
    trainer = Trainer(max_epochs=2, callbacks=[rwc], logger=CSVLogger(tmp_path), num_sanity_val_steps=2, **fit_kwargs())
    trainer.fit(make_tiny_module(), tiny_loader(), tiny_loader(seed=1))
    trainer.validate(trainer.lightning_module, tiny_loader(seed=1))
    assert rwc.history.steps == [8, 16]


def test_nan_weights_warn_and_training_goes_on(tmp_path):
    class Poison(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                with torch.no_grad():
                    pl_module.net.head.weight[0, 0] = float("nan")

    rwc = RelativeWeightChange()
    trainer = Trainer(max_epochs=2, callbacks=[Poison(), rwc], logger=CSVLogger(tmp_path), **fit_kwargs())
    with pytest.warns(UserWarning, match="'net.head.weight' is nan"):
        trainer.fit(make_tiny_module(), tiny_loader())
    assert trainer.current_epoch == 2
    assert math.isnan(rwc.history.values[1, 0])


def test_state_dict_round_trip_keeps_the_history(tmp_path):
    rwc = RelativeWeightChange()
    trainer = Trainer(max_epochs=2, callbacks=[rwc], logger=False, **fit_kwargs())
    with pytest.warns(UserWarning, match="no logger"):
        trainer.fit(make_tiny_module(), tiny_loader())
    restored = RelativeWeightChange()
    restored.load_state_dict(rwc.state_dict())
    assert restored.history.steps == rwc.history.steps
    assert restored.history.values.tolist() == rwc.history.values.tolist()
    assert restored.history.layers == rwc.history.layers


@pytest.mark.parametrize(
    ("settings", "capacity"),
    [({}, 200), ({"every_n_epochs": None, "every_n_steps": 1}, 4)],
    ids=["every epoch", "every step, a history thinned to 4"],
)
def test_resume_from_checkpoint_continues_the_curves_exactly(tmp_path, settings, capacity):
    def run(max_epochs, ckpt_path=None):
        torch.manual_seed(0)
        rwc = RelativeWeightChange(**settings, parts=[History(capacity), HealthFlags(), Loggers()])
        logger = CSVLogger(tmp_path, name=f"{max_epochs}-{ckpt_path is not None}")
        trainer = Trainer(
            max_epochs=max_epochs,
            callbacks=[rwc],
            logger=logger,
            default_root_dir=tmp_path,
            **{**fit_kwargs(), "enable_checkpointing": True},
        )
        trainer.fit(make_tiny_module(), tiny_loader(), ckpt_path=ckpt_path)
        return trainer, rwc

    straight_trainer, straight = run(4)
    first, _ = run(2)
    resumed_trainer, resumed = run(4, ckpt_path=first.checkpoint_callback.best_model_path)
    assert resumed.history.steps == straight.history.steps
    assert resumed.history.values.tolist() == straight.history.values.tolist()
    # What the resumed run logged after the checkpoint is what the uninterrupted run logged at those steps.
    logged = {
        name: load_history(Path(t.logger.log_dir) / "metrics.csv")
        for name, t in (("a", straight_trainer), ("b", resumed_trainer))
    }
    after = [j for j, step in enumerate(logged["a"].steps) if step > 16]
    assert [logged["a"].steps[j] for j in after] == logged["b"].steps
    np.testing.assert_array_equal(logged["b"].values, logged["a"].values[:, after])


def test_two_instances_keep_separate_state():
    by_epoch, by_steps = RelativeWeightChange(), RelativeWeightChange(every_n_epochs=None, every_n_steps=50)
    assert by_epoch.state_key != by_steps.state_key


def test_live_clustering_logs_cluster_summaries_under_the_prefix_with_matched_ids(tmp_path):
    import lightning.pytorch as pl
    import torchvision

    class Wide(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torchvision.models.resnet18(num_classes=10)
            self.net.conv1 = torch.nn.Conv2d(1, 64, 3, padding=1, bias=False)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    live = LiveClustering(every_n_epochs=1)
    rwc = RelativeWeightChange(log_prefix="weights", parts=[*default_parts(), live])
    seen = []

    class Spy(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if live.result is not None:
                seen.append((dict(live.result.labels), live.result.next_id))

    logger = CSVLogger(tmp_path)
    trainer = Trainer(max_epochs=5, callbacks=[rwc, Spy()], logger=logger, **fit_kwargs())
    trainer.fit(Wide(), tiny_loader(n=32, batch_size=16))
    assert len(seen) == 4  # clustering needs two measurements
    with open(f"{logger.log_dir}/metrics.csv", newline="") as handle:
        columns = next(csv.reader(handle))
    for labels, _ in seen:
        for cid in set(labels.values()) - {-1}:
            assert {f"weights_cluster/{cid}/{key}" for key in ("mean", "lower", "upper")} <= set(columns)
            assert torch.is_tensor(trainer.callback_metrics.get(f"weights_cluster/{cid}/mean", torch.tensor(0.0)))
    assert not any(column.startswith("rwc_cluster/") for column in columns)
    # What the matching guarantees, whatever the trajectory: an id kept from the previous clustering goes to a
    # cluster that shares members with it, and a new id was never given out before.
    given_out: set[int] = set()
    for (before, next_id), (after, _) in itertools.pairwise(seen):
        given_out |= set(before.values()) - {-1}
        for cid in set(after.values()) - {-1}:
            members = {n for n, c in after.items() if c == cid}
            if cid in set(before.values()):
                assert any(before[n] == cid for n in members)
            else:
                assert cid not in given_out and cid >= next_id


def test_values_are_callback_metrics_that_early_stopping_and_checkpoints_can_monitor(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    rwc = RelativeWeightChange()
    stop = EarlyStopping(monitor="rwc/_all", mode="min", stopping_threshold=1e9, check_on_train_epoch_end=True)
    best = ModelCheckpoint(dirpath=tmp_path, monitor="rwc/net.head.weight", mode="min", save_top_k=1)
    kwargs = {**fit_kwargs(), "enable_checkpointing": True}
    trainer = Trainer(max_epochs=5, callbacks=[stop, best, rwc], logger=CSVLogger(tmp_path), **kwargs)
    trainer.fit(make_tiny_module(), tiny_loader())
    assert trainer.should_stop and len(rwc.history) == 1  # any finite RWC is below the threshold: stopped at once
    assert float(trainer.callback_metrics["rwc/_all"]) == pytest.approx(rwc.history.total[-1], rel=1e-6)
    assert float(best.best_model_score) == pytest.approx(np.nanmin(rwc.history.curve("net.head.weight")), rel=1e-6)


def test_state_key_includes_every_setting_that_changes_what_is_measured():
    base = RelativeWeightChange()
    assert base.state_key == RelativeWeightChange(snapshot_device="cpu", parts=[History(), Heatmap()]).state_key
    assert RelativeWeightChange(include="fc").state_key == RelativeWeightChange(include=["fc"]).state_key
    others = [
        RelativeWeightChange(params="trainable"),
        RelativeWeightChange(include="fc"),
        RelativeWeightChange(exclude="fc"),
        RelativeWeightChange(norm="l2"),
        RelativeWeightChange(every_n_epochs=2),
        RelativeWeightChange(every_n_steps=5),
        RelativeWeightChange(log_prefix="other"),
    ]
    keys = [base.state_key, *(callback.state_key for callback in others)]
    assert len(set(keys)) == len(keys)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_gpu_matches_the_reference(tmp_path):
    recorder = WeightRecorder()
    rwc = RelativeWeightChange()
    kwargs = {**fit_kwargs(), "accelerator": "cuda"}
    trainer = Trainer(max_epochs=2, callbacks=[recorder, rwc], logger=CSVLogger(tmp_path), **kwargs)
    trainer.fit(make_tiny_module(), tiny_loader(n=64, batch_size=16))
    expected = expected_curves(recorder, [4, 8])
    for j, step in enumerate(rwc.history.steps):
        for i, name in enumerate(TRACKED):
            assert rwc.history.values[i, j] == pytest.approx(expected[step][name], rel=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_step_on_gpu_matches_the_reference_without_making_the_host_wait(tmp_path):
    class NoSync(RelativeWeightChange):
        def on_train_batch_end(self, *args):
            torch.cuda.set_sync_debug_mode("error")  # a synchronising call in the hook raises
            try:
                super().on_train_batch_end(*args)
            finally:
                torch.cuda.set_sync_debug_mode("default")

    recorder = WeightRecorder()
    rwc = NoSync(every_n_epochs=None, every_n_steps=1)
    kwargs = {**fit_kwargs(), "accelerator": "cuda"}
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = Trainer(max_epochs=2, callbacks=[recorder, rwc], logger=logger, **kwargs)
    trainer.fit(make_tiny_module(), tiny_loader(n=64, batch_size=16))
    steps = list(range(1, 9))
    expected = expected_curves(recorder, steps)
    assert rwc.history.steps == steps
    scalars, _ = read_scalars(logger.log_dir)
    for j, step in enumerate(steps):
        for i, name in enumerate(TRACKED):
            assert rwc.history.values[i, j] == pytest.approx(expected[step][name], rel=1e-4)
            assert scalars[f"rwc/{name}"][step] == pytest.approx(expected[step][name], rel=1e-4)


def test_old_checkpoint_without_callback_state_warns_and_starts_a_new_baseline(tmp_path):
    kwargs = {**fit_kwargs(), "enable_checkpointing": True}
    first = Trainer(max_epochs=1, logger=False, default_root_dir=tmp_path, **kwargs)
    first.fit(make_tiny_module(), tiny_loader())
    rwc = RelativeWeightChange()
    resumed = Trainer(max_epochs=2, callbacks=[rwc], logger=False, default_root_dir=tmp_path, **kwargs)
    with pytest.warns(UserWarning, match="holds no RelativeWeightChange state"):
        resumed.fit(make_tiny_module(), tiny_loader(), ckpt_path=first.checkpoint_callback.best_model_path)
    assert rwc.history.steps == [16]


def test_two_instances_resume_their_own_histories(tmp_path):
    def run(max_epochs, ckpt_path=None):
        torch.manual_seed(0)
        callbacks = [RelativeWeightChange(), RelativeWeightChange(every_n_epochs=None, every_n_steps=3)]
        kwargs = {**fit_kwargs(), "enable_checkpointing": True}
        trainer = Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=False, default_root_dir=tmp_path, **kwargs)
        with pytest.warns(UserWarning, match="no logger"):
            trainer.fit(make_tiny_module(), tiny_loader(), ckpt_path=ckpt_path)
        return trainer, callbacks[:2]  # the Trainer appends its own ModelCheckpoint to the list

    _, straight = run(3)
    first, _ = run(2)
    _, resumed = run(3, ckpt_path=first.checkpoint_callback.best_model_path)
    assert resumed[0].history.steps == [8, 16, 24]
    assert resumed[1].history.steps == [3, 6, 9, 12, 15, 18, 21, 24]
    for a, b in zip(resumed, straight, strict=True):
        assert a.history.values.tolist() == b.history.values.tolist()


@pytest.mark.parametrize(("precision", "rel"), [("bf16-mixed", 1e-6), ("16-mixed", 1e-6), ("bf16-true", 1e-3)])
def test_mixed_and_half_precision_agree_with_the_float64_reference(tmp_path, precision, rel):
    recorder = WeightRecorder()
    rwc = RelativeWeightChange()
    trainer = Trainer(max_epochs=2, precision=precision, callbacks=[recorder, rwc], logger=False, **fit_kwargs())
    with pytest.warns(UserWarning, match="no logger"):
        trainer.fit(make_tiny_module(), tiny_loader())
    expected = expected_curves(recorder, [8, 16])
    for j, step in enumerate(rwc.history.steps):
        assert expected[step]["_all"] > 0
        for i, name in enumerate(TRACKED):
            assert rwc.history.values[i, j] == pytest.approx(expected[step][name], rel=rel)


def test_parameters_added_during_training_start_their_curve_later(tmp_path):
    class AddHead(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                pl_module.extra = torch.nn.Linear(3, 3)

    rwc = RelativeWeightChange()
    trainer = Trainer(max_epochs=3, callbacks=[AddHead(), rwc], logger=CSVLogger(tmp_path), **fit_kwargs())
    trainer.fit(make_tiny_module(), tiny_loader())
    # Added just before the first measurement, which takes its baseline: its first value comes at the second.
    assert rwc.history.layers == [*TRACKED, "extra.weight"]
    extra = rwc.history.curve("extra.weight")
    assert math.isnan(extra[0]) and extra[1:].tolist() == [0.0, 0.0]
    assert not math.isnan(rwc.history.curve(TRACKED[0])[0])


def test_manual_optimization_with_two_optimizers_counts_global_steps(tmp_path):
    import lightning.pytorch as pl
    from conftest import TinyNet

    class TwoOptimizers(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.net = TinyNet()

        def training_step(self, batch, batch_idx):
            x, y = batch
            for opt in self.optimizers():
                opt.zero_grad()
                self.manual_backward(torch.nn.functional.cross_entropy(self.net(x), y))
                opt.step()

        def configure_optimizers(self):
            conv = torch.optim.SGD(self.net.conv.parameters(), lr=0.1)
            rest = torch.optim.SGD([*self.net.bn.parameters(), *self.net.head.parameters()], lr=0.1)
            return conv, rest

    recorder = WeightRecorder()
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=4)
    trainer = Trainer(max_epochs=1, callbacks=[recorder, rwc], logger=CSVLogger(tmp_path), **fit_kwargs())
    trainer.fit(TwoOptimizers(), tiny_loader(n=32, batch_size=8))  # 4 batches x 2 optimizer steps
    assert trainer.global_step == 8
    assert rwc.history.steps == [4, 8]
    expected = expected_curves(recorder, [4, 8])
    for j, step in enumerate(rwc.history.steps):
        assert rwc.history.total[j] == pytest.approx(expected[step]["_all"], rel=1e-5)


def test_sharding_strategies_without_layer_shapes_are_rejected_at_setup():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(MisconfigurationException, match="does not support FSDPStrategy.*ModelParallelStrategy"):
        RelativeWeightChange().setup(trainer, None, "fit")


CRASH_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
from conftest import fit_kwargs, make_tiny_module, tiny_loader
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning_rwc import RelativeWeightChange
from lightning_rwc.measure import Measurement
from lightning_rwc.parts import History, Loggers, ValuesFile

WINDOW = 0.5
if {late}:
    Measurement.ready = lambda self: False  # as if the device were slow: values are read at epoch end or on exit

class Interrupt(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 6:
            time.sleep(2 * WINDOW)  # the measurements so far are now older than the window
        if trainer.global_step == 7:
            os.kill(os.getpid(), signal.{signal})

loggers = [TensorBoardLogger({out!r}, name="run"), CSVLogger({out!r}, name="csv")]
parts = [History(), Loggers(flush_every_s={flush_every_s}), ValuesFile()]
rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=1, parts=parts)
trainer = Trainer(max_epochs=4, callbacks=[rwc, Interrupt()], logger=loggers, **fit_kwargs())
try:
    trainer.fit(make_tiny_module(), tiny_loader(n=32, batch_size=8))
except SystemExit:
    print("stopped at step", trainer.global_step)
"""


def run_interrupted(tmp_path, signal: str, flush_every_s: float, late: bool = False):
    import subprocess
    import sys
    from pathlib import Path

    from lightning_rwc.runs import load_history

    script = tmp_path / "crash.py"
    tests = str(Path(__file__).parent)
    options = {"signal": signal, "flush_every_s": flush_every_s, "late": late}
    script.write_text(CRASH_SCRIPT.format(tests=tests, out=str(tmp_path), **options))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    run = tmp_path / "run" / "version_0"
    (events,) = run.glob("events.out.tfevents.*")  # read alone: the run directory's values file would come first
    return result, [load_history(source) for source in (events, tmp_path / "csv" / "version_0", run / "rwc_values")]


def test_after_a_sigkill_every_measurement_older_than_the_flush_window_is_readable(tmp_path):
    result, histories = run_interrupted(tmp_path, "SIGKILL", flush_every_s=0.5)
    assert result.returncode == -9
    for history in histories:  # TensorBoard's event file, the CSV file (which buffers rows until flushed), values file
        # Steps 1-6 were measured a second or more before the kill: on disk. Step 7, measured just before, may be.
        assert history.steps in ([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7])
        assert history.layers == TRACKED and not np.isnan(history.values).any()


def test_after_a_sigterm_every_measurement_is_readable_also_those_still_on_their_way(tmp_path):
    result, histories = run_interrupted(tmp_path, "SIGTERM", flush_every_s=3600, late=True)  # no flush by time
    assert "stopped at step 7" in result.stdout, result.stderr[-2000:]
    for history in histories:
        assert history.steps == [1, 2, 3, 4, 5, 6, 7]


def test_measurements_read_later_are_logged_at_the_step_they_were_taken(tmp_path, monkeypatch):
    from lightning_rwc.measure import Measurement
    from lightning_rwc.runs import load_history

    def run(name):
        torch.manual_seed(0)
        rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=1)
        loggers = [TensorBoardLogger(tmp_path, name=name), CSVLogger(tmp_path, name=name)]
        Trainer(max_epochs=2, callbacks=[rwc], logger=loggers, **fit_kwargs()).fit(make_tiny_module(), tiny_loader())
        return rwc, load_history(loggers[0].log_dir), load_history(Path(loggers[1].log_dir) / "metrics.csv")

    at_once = run("at_once")
    polls: dict[int, int] = {}
    original_ready = Measurement.ready

    def slow(measurement):  # each measurement arrives at the third look, as a slow device's would
        polls[id(measurement)] = polls.get(id(measurement), 0) + 1
        return polls[id(measurement)] >= 3 and original_ready(measurement)

    monkeypatch.setattr(Measurement, "ready", slow)
    later = run("later")
    assert max(polls.values()) >= 3
    (rwc_a, *logged_a), (rwc_b, *logged_b) = at_once, later
    assert rwc_b.history.steps == rwc_a.history.steps == list(range(1, 17))
    np.testing.assert_array_equal(rwc_b.history.values, rwc_a.history.values)
    for history in (*logged_a, *logged_b):  # TensorBoard and CSV, read back by their readers
        assert history.steps == rwc_a.history.steps
        np.testing.assert_allclose(history.values, rwc_a.history.values, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fsdp1_on_gpu_stops_at_setup_with_a_pointer_to_fsdp2(tmp_path):
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    kwargs = {**fit_kwargs(), "accelerator": "cuda", "devices": 1}
    trainer = Trainer(max_epochs=1, strategy="fsdp", callbacks=[RelativeWeightChange()], logger=False, **kwargs)
    with pytest.raises(MisconfigurationException, match="ModelParallelStrategy"):
        trainer.fit(make_tiny_module(), tiny_loader())


def test_a_checkpoint_of_a_run_with_other_settings_warns_and_starts_a_fresh_baseline(tmp_path):
    kwargs = {**fit_kwargs(), "enable_checkpointing": True}
    first = Trainer(max_epochs=1, callbacks=[RelativeWeightChange(norm="l2")], logger=CSVLogger(tmp_path), **kwargs)
    first.fit(make_tiny_module(), tiny_loader())
    rwc = RelativeWeightChange()  # norm="l1": another state key
    resumed = Trainer(max_epochs=2, callbacks=[rwc], logger=CSVLogger(tmp_path), default_root_dir=tmp_path, **kwargs)
    with pytest.warns(UserWarning, match="holds no RelativeWeightChange state .* or other settings"):
        resumed.fit(make_tiny_module(), tiny_loader(), ckpt_path=first.checkpoint_callback.best_model_path)
    assert rwc.history.steps == [16]  # nothing of the l2 run; the first value spans epoch 2 from the checkpoint


def test_a_checkpointed_baseline_that_does_not_fit_the_model_warns_and_starts_again(tmp_path):
    rwc = RelativeWeightChange()
    rwc.load_state_dict({"version": 2, "history": {}, "snapshot": {"net.conv.weight": torch.zeros(1, 1, 2, 2)}})
    trainer = Trainer(max_epochs=1, callbacks=[rwc], logger=CSVLogger(tmp_path), **fit_kwargs())
    with pytest.warns(UserWarning, match="baseline does not fit this model .*shape"):
        trainer.fit(make_tiny_module(), tiny_loader())
    assert rwc.history.steps == [8] and not np.isnan(rwc.history.values).any()


def test_a_checkpoint_written_before_the_callback_had_parts_resumes_exactly(tmp_path):
    """``tests/data/rwc-checkpoint-v2.ckpt``: saved at step 10 of a run measuring every 3 steps (see its script)."""
    from lightning_rwc import LayerFreezer

    path = Path(__file__).parent / "data" / "rwc-checkpoint-v2.ckpt"
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=3)
    freezer = LayerFreezer(mode="suggest", warmup=0, patience=1)
    saved = torch.load(path, weights_only=False)["callbacks"]
    baseline = {name: tensor.double() for name, tensor in saved[rwc.state_key]["snapshot"].items()}
    recorder = WeightRecorder()
    trainer = Trainer(max_steps=16, callbacks=[rwc, freezer, recorder], logger=False, **fit_kwargs())
    with pytest.warns(UserWarning, match="no logger"):
        trainer.fit(make_tiny_module(), tiny_loader(), ckpt_path=path)
    old = saved[rwc.state_key]["history"]
    assert rwc.history.steps == [3, 6, 9, 12, 15]
    np.testing.assert_array_equal(rwc.history.values[:, :3], old["values"].numpy())
    # The first measurement after the resume is against the baseline the checkpoint held (the weights at step 9).
    expected = [
        reference_rwc(baseline, recorder.by_step[12], "l1"),
        reference_rwc(*map(recorder.by_step.get, (12, 15)), "l1"),
    ]
    for column, reference in zip((3, 4), expected, strict=True):
        for i, name in enumerate(TRACKED):
            assert rwc.history.values[i, column] == pytest.approx(reference[name], rel=1e-6)
    assert freezer.state_dict()["measurements"] == saved[freezer.state_key]["measurements"] + 2


def test_a_run_that_ends_before_the_first_measurement_says_so_in_one_line():
    live = LiveClustering()
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=100, parts=[*default_parts(), live])
    trainer = Trainer(max_epochs=1, callbacks=[rwc], logger=False, **fit_kwargs())
    with pytest.warns(UserWarning) as caught:
        trainer.fit(make_tiny_module(), tiny_loader())
    messages = [str(w.message) for w in caught]
    assert (
        "RelativeWeightChange took no measurement: training ended at step 8 (epoch 1), before the first one "
        "(every_n_epochs=None, every_n_steps=100). " in " ".join(messages)
    )
    assert any(m.startswith("LiveClustering did not cluster in this run: 0 measurement(s)") for m in messages)
    assert len(rwc.history) == 0


def test_live_clustering_of_a_small_model_finds_clusters():
    live = LiveClustering()
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=2, params="trainable", parts=[History(), live])
    Trainer(max_epochs=3, callbacks=[rwc], logger=False, **fit_kwargs()).fit(make_tiny_module(), tiny_loader())
    assert live.result is not None and live.result.n_clusters >= 1  # HDBSCAN finds no cluster in 6 layers: k-means
    assert live.result.params["method"] in ("hdbscan", "kmeans") and "HDBSCAN found" in live.result.params["why"]


def test_a_lora_fine_tuning_gives_one_finite_row_per_adapted_layer_without_a_nan_warning():
    pytest.importorskip("peft")
    from conftest import make_lora_module, token_loader

    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(max_epochs=2, callbacks=[rwc], logger=False, **fit_kwargs()).fit(make_lora_module(), token_loader())
    layers = [f"model.transformer.h.{i}.{name}.weight" for i in range(4) for name in ("attn.c_attn", "attn.c_proj")]
    layers += [f"model.transformer.h.{i}.mlp.c_proj.weight" for i in range(4)]
    assert sorted(rwc.history.layers) == sorted(layers)  # no lora_A / lora_B, no wrapper segments
    assert np.isfinite(rwc.history.values).all() and (rwc.history.values > 0).all()
    assert not [str(w.message) for w in caught if "nan" in str(w.message)]
