"""Reading runs back: a real run's epochs from every kind of log, and damaged event files read as far as they go."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from lightning_rwc.runs import load_history


@pytest.mark.parametrize("kind", ["event file", "CSV log", "values file"])
def test_the_epochs_read_back_are_those_the_callback_saw_at_each_measurement(real_run, kind):
    source = {"event file": real_run.event_file, "CSV log": real_run.csv_file, "values file": real_run.values_dir}
    history = load_history(source[kind])
    assert history.steps == sorted(real_run.epochs)
    assert history.epochs == [real_run.epochs[step] for step in history.steps]
    assert len(set(history.epochs)) == 3  # the run spans three epochs (7 batches each)
    if kind != "CSV log":  # a CSV log's columns are sorted by name
        assert history.layers == real_run.layers


def record_ends(data: bytes) -> list[int]:
    """Where each record of an event file ends: length (8 bytes), its checksum (4), the event, its checksum (4)."""
    ends, position = [], 0
    while position < len(data):
        (length,) = struct.unpack("<Q", data[position : position + 8])
        position += 16 + length
        ends.append(position)
    return ends


@pytest.mark.parametrize("damage", ["cut off after a record", "a record zeroed"])
def test_a_damaged_real_event_file_reads_the_records_before_the_damage_with_their_epochs(real_run, tmp_path, damage):
    intact = load_history(real_run.event_file)
    data = real_run.event_file.read_bytes()
    ends = record_ends(data)
    assert ends[-1] == len(data) and len(ends) > 30
    run = tmp_path / "run"
    run.mkdir()
    target = run / real_run.event_file.name
    for start, end in zip([0, *ends[:-1]], ends, strict=True):
        damaged = data[:end] if damage.startswith("cut") else data[:start] + bytes(end - start) + data[end:]
        target.write_bytes(damaged)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the bytes lost are warned about: tested elsewhere
            try:
                history = load_history(run)
            except ValueError as err:  # no measurement before the damage
                assert "has no 'rwc/' values" in str(err)
                continue
        measured = [intact.steps.index(step) for step in history.steps]
        assert measured == list(range(len(measured)))  # the first measurements, in order
        assert history.epochs == [intact.epochs[j] for j in measured]
        for i, layer in enumerate(history.layers):  # the first measurement may be cut between its values
            np.testing.assert_array_equal(history.values[i], intact.curve(layer)[measured])


def test_event_files_read_only_what_was_appended_since_and_equal_a_whole_reading(real_run, tmp_path):
    from lightning_rwc.runs import EventFiles, history_from_series

    data = real_run.event_file.read_bytes()
    ends = record_ends(data)
    middle = ends[len(ends) // 2]
    run = tmp_path / "run"
    run.mkdir()
    target = run / real_run.event_file.name
    target.write_bytes(data[: middle - 5])  # the last record cut off while it is written
    files = EventFiles(run)
    assert files.update() and "could not be read" in files.problems[0]
    assert not files.update()  # nothing new
    with open(target, "r+b") as out:
        out.write(bytes(ends[2]))  # what was read already is not read again: zeros there go unseen
        out.seek(middle - 5)
        out.write(data[middle - 5 :])
    assert files.update() and files.problems == []
    whole = load_history(real_run.event_file)
    read = history_from_series(files.series, "rwc", run)
    assert read.steps == whole.steps and read.layers == whole.layers and read.epochs == whole.epochs
    np.testing.assert_array_equal(read.values, whole.values)
    assert files.nbytes == 16 * sum(len(steps) for steps, _ in files.series.columns.values())
    target.write_bytes(data)  # the zeros undone (the same size: nothing to read)
    assert not files.update()
    (run / "events.out.tfevents.0.first").write_bytes(data[: ends[0]])  # a file before the others: all read again
    assert files.update() and history_from_series(files.series, "rwc", run).steps == whole.steps
