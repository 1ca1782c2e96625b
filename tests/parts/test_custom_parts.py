"""Parts: what the callback hands them, what they log, what a checkpoint keeps of them, adding and leaving out."""

from __future__ import annotations

import csv

from conftest import fit_kwargs, make_tiny_module, tiny_loader
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from lightning_rwc import RelativeWeightChange
from lightning_rwc.parts import HealthFlags, History, Part, default_parts


class Recorder(Part):
    """Keeps what it is handed, logs a scalar of its own and counts measurements in its checkpoint state."""

    def __init__(self) -> None:
        self.seen, self.count, self.epoch_ends = [], 0, 0

    def on_measurement(self, trainer, record):
        self.seen.append((record.step, record.epoch, dict(record.values)))
        self.count += 1
        record.extra["custom/count"] = float(self.count)

    def epoch_end(self, trainer, rwc):
        self.epoch_ends += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state_dict):
        self.count = state_dict["count"]


def csv_rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(f"{logger.log_dir}/metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_part_gets_every_measurement_in_order_and_what_it_adds_is_logged_and_monitorable(tmp_path):
    recorder = Recorder()
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=3, parts=[*default_parts(), recorder])
    logger = CSVLogger(tmp_path)
    trainer = Trainer(max_epochs=2, callbacks=[rwc], logger=logger, **fit_kwargs())
    trainer.fit(make_tiny_module(), tiny_loader())
    assert [step for step, _, _ in recorder.seen] == rwc.history.steps == [3, 6, 9, 12, 15]
    assert [epoch for _, epoch, _ in recorder.seen] == [0, 0, 1, 1, 1]  # 8 batches an epoch
    assert [values for _, _, values in recorder.seen][-1]["net.head.weight"] == rwc.history.values[1, -1]
    assert recorder.epoch_ends == 2
    logged = {int(row["step"]): float(row["custom/count"]) for row in csv_rows(logger) if row.get("custom/count")}
    assert logged == {3: 1.0, 6: 2.0, 9: 3.0, 12: 4.0, 15: 5.0}
    assert float(trainer.callback_metrics["custom/count"]) == 5.0


def test_a_part_that_is_not_a_callback_is_saved_in_the_callbacks_checkpoint_state(tmp_path):
    first = Recorder()
    rwc = RelativeWeightChange(every_n_epochs=1, parts=[History(), first])
    trainer = Trainer(max_epochs=2, callbacks=[rwc], logger=False, default_root_dir=tmp_path, **fit_kwargs())
    trainer.fit(make_tiny_module(), tiny_loader())
    again = Recorder()
    restored = RelativeWeightChange(every_n_epochs=1, parts=[History(), again])
    restored.load_state_dict(rwc.state_dict())
    assert again.count == first.count == 2
    assert restored.history.steps == rwc.history.steps


def test_leaving_a_part_out_leaves_out_what_it_logs(tmp_path):
    quiet = [part for part in default_parts() if not isinstance(part, HealthFlags)]
    logger = CSVLogger(tmp_path)
    trainer = Trainer(max_epochs=1, callbacks=[RelativeWeightChange(parts=quiet)], logger=logger, **fit_kwargs())
    trainer.fit(make_tiny_module(), tiny_loader())
    columns = set(csv_rows(logger)[0])
    assert "rwc/_all" in columns
    assert not any(column.startswith("rwc_health/") for column in columns)


def test_without_a_history_part_there_is_no_history_and_logging_goes_on(tmp_path):
    from lightning_rwc.parts import Loggers

    logger = CSVLogger(tmp_path)
    rwc = RelativeWeightChange(parts=[Loggers()])
    Trainer(max_epochs=2, callbacks=[rwc], logger=logger, **fit_kwargs()).fit(make_tiny_module(), tiny_loader())
    assert rwc.history is None
    assert [row["step"] for row in csv_rows(logger) if row.get("rwc/_all")] == ["8", "16"]
