"""The README's Python examples run, and the CLI help it quotes is the CLI's own."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_python_examples_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for code in blocks("python"):
        exec(compile(code, str(README), "exec"), namespace)
    assert namespace["rwc"].history.steps == [8, 16, 24, 32, 40]
    assert set(namespace["result"].labels) == set(namespace["rwc"].history.layers)
    assert len(namespace["values"]) == 3  # two linear layers and "_all"
    lora = namespace["lora_rwc"].history  # one row per adapted layer: 4 blocks x (c_attn, attn.c_proj, mlp.c_proj)
    assert len(lora.layers) == 12 and all("lora_" not in name and "base_model" not in name for name in lora.layers)
    assert not np.isnan(lora.values).any()
    assert (tmp_path / "lightning_logs" / "version_0").is_dir()


def help_text(*args: str) -> str:
    env = {"COLUMNS": "80", "PATH": ""}
    out = subprocess.run([sys.executable, "-m", "lightning_rwc", *args], capture_output=True, text=True, env=env)
    return out.stdout


@pytest.mark.parametrize("args", [("--help",), ("cluster", "--help"), ("demo", "--help")])
def test_quoted_cli_help_matches_the_cli(args):
    text = help_text(*args)
    assert text.strip() in README.read_text(), f"README lacks the current output of lightning-rwc {' '.join(args)}"
