"""`pip install .` gives a wheel that works outside the repository."""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY_FIT = """
import torch, lightning_rwc
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel
from lightning_rwc import RelativeWeightChange
rwc = RelativeWeightChange()
Trainer(max_epochs=2, callbacks=[rwc], logger=False, enable_progress_bar=False).fit(BoringModel(), BoringDataModule())
print(lightning_rwc.__file__)
print(rwc.history.steps)
"""


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)], check=True)
    (wheel,) = dist.glob("lightning_rwc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lightning_rwc/cli.py" in names and not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "lightning-rwc = lightning_rwc.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # The dependencies come from this environment's site-packages (not its editable install of the package).
    fresh_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    deps = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    Path(fresh_site, "_deps.pth").write_text("\n".join(deps) + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    help_out = subprocess.run([venv / "bin" / "lightning-rwc", "--help"], cwd=work, capture_output=True, text=True)
    assert help_out.returncode == 0 and "cluster" in help_out.stdout
    fit = subprocess.run([python, "-c", TINY_FIT], cwd=work, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-2000:]
    installed_at, steps = fit.stdout.strip().splitlines()[-2:]
    assert installed_at.startswith(str(venv)) and steps == "[64, 128]"
