"""RWCHistory and load_history: alignment on steps, round trips, readers and their errors."""

from __future__ import annotations

import csv
import json
import math
import re
import warnings

import numpy as np
import pytest
from conftest import write_tensorboard_run

from lightning_rwc.history import RWCHistory
from lightning_rwc.runs import find_runs, load_history


def test_append_adds_new_layers_as_rows_with_nan_before_their_first_value():
    history = RWCHistory()
    history.append(5, 0, {"a": 1.0, "_all": 1.0})
    history.append(9, 1, {"a": 0.5, "b": 0.25, "_all": 0.4})
    assert history.layers == ["a", "b"]
    assert history.steps == [5, 9]
    assert history.epochs == [0, 1]
    np.testing.assert_array_equal(history.values, [[1.0, 0.5], [np.nan, 0.25]])
    np.testing.assert_array_equal(history.total, [1.0, 0.4])
    np.testing.assert_array_equal(history.curve("b"), [np.nan, 0.25])
    with pytest.raises(KeyError, match="No layer 'c'"):
        history.curve("c")


def strict_json(text: str):
    """Parse ``text`` as strict JSON: NaN, Infinity and -Infinity are errors, as in most JSON readers."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_and_non_finite_values_read_back_as_nan(tmp_path):
    values = np.array([[0.1, np.nan], [np.inf, 0.2], [-np.inf, 0.3]])
    history = RWCHistory.from_arrays(["a", "b", "c"], [1, 2], values, [0, 1], [np.inf, 0.4])
    history.save(tmp_path / "h.json")
    data = strict_json((tmp_path / "h.json").read_text())
    assert data["values"] == [[0.1, None], [None, 0.2], [None, 0.3]] and data["total"] == [None, 0.4]
    again = load_history(tmp_path / "h.json")
    np.testing.assert_array_equal(again.values, np.where(np.isfinite(values), values, np.nan))
    np.testing.assert_array_equal(again.total, [np.nan, 0.4])
    assert (again.layers, again.steps, again.epochs) == (["a", "b", "c"], [1, 2], [0, 1])
    assert not list(tmp_path.glob(".*tmp"))


def test_from_arrays_checks_shapes():
    with pytest.raises(ValueError, match=r"shape \(layers, measurements\) = \(2, 3\), got \(2, 2\)"):
        RWCHistory.from_arrays(["a", "b"], [1, 2, 3], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="unique"):
        RWCHistory.from_arrays(["a", "a"], [1], np.zeros((2, 1)))


def test_tensorboard_runs_are_read_completely_and_aligned_on_steps(tmp_path):
    n = 12000  # more points than TensorBoard's default reservoir keeps per tag
    values = np.vstack([np.linspace(1, 2, n), np.linspace(3, 4, n)])
    values[1, :100] = np.nan  # layer b appears later
    steps = write_tensorboard_run(tmp_path, ["a", "b"], values, steps=list(range(n)))
    history = load_history(tmp_path)
    assert history.layers == ["a", "b"]
    assert history.steps == steps
    np.testing.assert_allclose(history.values, values.astype(np.float32), equal_nan=True)
    assert history.total[0] == pytest.approx(1.0)  # only a measured at step 0


def tensorboard_scalars(run_dir) -> dict[str, dict[int, float]]:
    """Every scalar of a run as TensorBoard's own reader sees it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


@pytest.mark.parametrize("damage", ["cut off", "corrupt record"])
def test_a_damaged_event_file_gives_what_tensorboard_reads_and_warns_which_bytes_are_lost(tmp_path, damage):
    values = np.vstack([np.linspace(1, 2, 40), np.linspace(3, 4, 40)])
    steps = write_tensorboard_run(tmp_path, ["a", "b"], values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact file: no warning
        assert load_history(tmp_path).steps == steps
    (path,) = tmp_path.glob("events.out.tfevents.*")
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    if damage == "cut off":
        del data[at:]
    else:
        data[at] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))}: bytes (\d+) to {len(data)} could not be read") as w:
        history = load_history(tmp_path)
    first_lost = int(re.search(r"bytes (\d+) to", str(w[0].message)).group(1))
    assert first_lost <= at < first_lost + 100  # the record that holds the damage: records here are < 100 bytes
    reference = tensorboard_scalars(tmp_path)
    assert 0 < len(history.steps) < len(steps)
    assert history.steps == sorted({step for tag in ("rwc/a", "rwc/b") for step in reference[tag]})
    for i, name in enumerate(history.layers):
        expected = [reference[f"rwc/{name}"].get(step, np.nan) for step in history.steps]
        np.testing.assert_array_equal(history.values[i], expected)


def test_a_resumed_run_s_later_values_replace_the_earlier_ones_at_the_same_steps(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for values, steps in (([1.0, 2.0, 3.0, 4.0], [1, 2, 3, 4]), ([30.0, 40.0, 50.0], [3, 4, 5])):  # resumed at 2
        writer = SummaryWriter(str(tmp_path))
        for value, step in zip(values, steps, strict=True):
            writer.add_scalar("rwc/a", value, step)
        writer.close()
    (tmp_path / "metrics.csv").write_text("step,rwc/a\n1,1\n2,2\n3,3\n3,30\n")
    for source in (tmp_path, tmp_path / "metrics.csv"):
        history = load_history(source)
        expected = [1.0, 2.0, 30.0, 40.0, 50.0] if source == tmp_path else [1.0, 2.0, 30.0]
        assert history.steps == list(range(1, len(expected) + 1))
        assert history.values[0].tolist() == expected


def test_csv_in_the_csv_logger_format_is_read(tmp_path):
    path = tmp_path / "metrics.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "step", "rwc/_all", "rwc/a", "rwc/b", "train_loss"])
        writer.writerow([0, 4, 0.5, 0.4, 0.6, ""])
        writer.writerow([0, 4, "", "", "", 2.3])
        writer.writerow([1, 8, 0.2, 0.1, "", ""])
    history = load_history(tmp_path)
    assert history.layers == ["a", "b"]
    assert history.steps == [4, 8]
    assert history.epochs == [0, 1]
    np.testing.assert_array_equal(history.values, [[0.4, 0.1], [0.6, np.nan]])
    np.testing.assert_array_equal(history.total, [0.5, 0.2])


GPT_ORDER = ["wte.weight", *(f"h.{i}.attn.weight" for i in range(12)), "ln_f.weight"]  # the model's order


def test_layers_read_from_event_files_keep_the_models_order(tmp_path):
    write_tensorboard_run(tmp_path, GPT_ORDER, np.linspace(1, 2, 3 * len(GPT_ORDER)).reshape(-1, 3))
    assert load_history(tmp_path).layers == GPT_ORDER


def test_layers_read_from_a_csv_log_are_in_name_order_with_numbers_compared_as_numbers(tmp_path):
    path = tmp_path / "metrics.csv"
    columns = sorted(f"rwc/{name}" for name in GPT_ORDER)  # as Lightning's CSVLogger writes them
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", *columns])
        writer.writerow([1, *range(len(columns))])
    expected = [f"h.{i}.attn.weight" for i in range(12)] + ["ln_f.weight", "wte.weight"]
    history = load_history(path)
    assert history.layers == expected
    assert history.values[:, 0].tolist() == [columns.index(f"rwc/{name}") for name in expected]


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_history(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no TensorBoard event file and no metrics.csv"):
        load_history(tmp_path)


def test_a_run_without_rwc_values_lists_the_prefixes_it_has(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("train/loss", 1.0, 0)
        writer.add_scalar("val/acc", 0.5, 0)
    with pytest.raises(ValueError, match=r"no 'rwc/' values.*\['train', 'val'\]"):
        load_history(tmp_path)
    with pytest.raises(ValueError, match="no 'other/' values"):
        load_history(tmp_path, prefix="other")


def test_bad_csv_is_a_clear_error(tmp_path):
    (tmp_path / "a.csv").write_text("x,rwc/a\n1,2\n")
    with pytest.raises(ValueError, match="no 'step' column"):
        load_history(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("step,rwc/a\n1,abc\n")
    with pytest.raises(ValueError, match="line 2: rwc/a = 'abc' is not a number"):
        load_history(tmp_path / "b.csv")
    (tmp_path / "c.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="not a TensorBoard event file"):
        load_history(tmp_path / "c.txt")
    (tmp_path / "d.csv").write_text("step,rwc/a\n1e30,0.5\n")
    with pytest.raises(ValueError, match="line 2: step '1e30' is out of range"):
        load_history(tmp_path / "d.csv")


def test_find_runs_skips_hidden_and_excluded_directories(tmp_path):
    for run in ("a/version_0", "a/version_1", "a/version_0/rwc_clusters", "a/.tmp"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "events.out.tfevents.1").write_bytes(b"")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.csv").write_text("step\n")
    runs = find_runs(tmp_path, exclude_dirs=["rwc_clusters"])
    assert [r.relative_to(tmp_path).as_posix() for r in runs] == ["a/version_0", "a/version_1", "b"]


def test_total_defaults_to_nan_when_unknown():
    history = RWCHistory.from_arrays(["a"], [1], np.ones((1, 1)))
    assert math.isnan(history.total[0]) and history.epochs == [-1]


def test_a_bounded_history_keeps_measurements_evenly_spread_over_the_run():
    history = RWCHistory(capacity=8)
    for step in range(1, 101):
        history.append(step, step // 10, {"a.weight": step / 100, "_all": step / 1000})
    assert len(history) <= 8 and history.appended == 100
    steps = history.steps
    assert steps[0] == 1 and len({b - a for a, b in zip(steps, steps[1:], strict=False)}) == 1  # evenly spaced
    assert history.values[0].tolist() == [step / 100 for step in steps]  # the measurements as they were
    assert history.total.tolist() == [step / 1000 for step in steps]


def test_a_bounded_history_continues_exactly_from_its_state():
    straight, first = RWCHistory(capacity=6), RWCHistory(capacity=6)
    rows = [(step, {"a": step * 1.0, "b": -step * 1.0}) for step in range(1, 40)]
    for step, row in rows:
        straight.append(step, 0, row)
    for step, row in rows[:17]:
        first.append(step, 0, row)
    resumed = RWCHistory()
    resumed.load_state_dict(first.state_dict())
    for step, row in rows[17:]:
        resumed.append(step, 0, row)
    assert resumed.steps == straight.steps and resumed.layers == straight.layers
    np.testing.assert_array_equal(resumed.values, straight.values)
    with pytest.raises(ValueError, match="capacity must be a whole number >= 2 or None, got 1"):
        RWCHistory(capacity=1)
