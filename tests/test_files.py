"""Files written atomically without following links, and files read only where they are what they claim to be."""

from __future__ import annotations

import os

import pytest

from lightning_rwc.files import open_inside, write_atomic


def test_a_regular_file_inside_the_folder_is_read(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "values.bin").write_bytes(b"\x00\x01")
    with open_inside(tmp_path, tmp_path / "run" / "values.bin") as handle:
        assert handle.read() == b"\x00\x01"


@pytest.mark.parametrize("where", ["the file", "a folder on the way"])
def test_nothing_is_read_through_a_symbolic_link(tmp_path, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"secret")
    root = tmp_path / "root"
    root.mkdir()
    if where == "the file":
        (root / "values.bin").symlink_to(outside / "secret.bin")
        path = root / "values.bin"
    else:
        (root / "run").symlink_to(outside, target_is_directory=True)
        path = root / "run" / "secret.bin"
    with pytest.raises(OSError, match="symbolic link"):
        open_inside(root, path)


def test_fifos_folders_files_outside_and_files_too_large_are_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "pipe.bin")  # opening it for reading would wait for a writer
    (tmp_path / "folder").mkdir()
    (tmp_path / "large.bin").write_bytes(bytes(2048))
    with pytest.raises(OSError, match="not a regular file"):
        open_inside(tmp_path, tmp_path / "pipe.bin")
    with pytest.raises(OSError, match="not a regular file"):
        open_inside(tmp_path, tmp_path / "folder")
    with pytest.raises(OSError, match="outside"):
        open_inside(tmp_path / "folder", tmp_path / "large.bin")
    with pytest.raises(OSError, match="more than"):
        open_inside(tmp_path, tmp_path / "large.bin", max_bytes=1024)
    with open_inside(tmp_path, tmp_path / "large.bin", max_bytes=2048) as handle:
        assert len(handle.read()) == 2048


def test_an_atomic_write_replaces_a_link_and_never_writes_through_one(tmp_path):
    (tmp_path / "kept.txt").write_text("kept")
    run = tmp_path / "run"
    run.mkdir()
    (run / "out.json").symlink_to(tmp_path / "kept.txt")
    (run / ".out.json.tmp").symlink_to(tmp_path / "kept.txt")  # the temporary's name in earlier versions
    write_atomic(run / "out.json", "new")
    assert (tmp_path / "kept.txt").read_text() == "kept"
    assert not (run / "out.json").is_symlink() and (run / "out.json").read_text() == "new"
    assert sorted(p.name for p in run.iterdir()) == [".out.json.tmp", "out.json"]  # no temporary left behind
