"""The code blocks of the README and the documentation: found, run one by one on their own, outputs written.

Every fenced ``python`` block runs alone in a fresh interpreter in an empty folder; every ``bash`` block runs line by
line in one shell there, with three kinds of line stood in for by what can run offline and end by itself:

- ``pip install ARGS`` resolves ``ARGS`` from the project folder without downloading (``pip install --dry-run``);
- ``make TARGET`` prints the target's commands (``make -n``); the test suite and the demo run those for real;
- ``tensorboard --logdir DIR`` starts TensorBoard, waits until it serves the RWC tab for ``DIR``, and stops it.

A block followed by ``{literalinclude} _generated/NAME.txt`` (in the documentation) has its output written there by
``python docs/examples.py`` (``make docs`` runs it before building), so sample outputs are generated, never typed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = DOCS / "_generated"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```\n(?:\n```\{literalinclude\} (\S+)\n```)?", re.S | re.M)


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language and code, and the file its output goes to (or ``None``)."""

    page: Path
    line: int
    language: str
    code: str
    output: Path | None

    @property
    def name(self) -> str:
        """``page:line``, relative to the project."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    """The README and every page of the documentation."""
    return [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)]


def blocks(page: Path) -> list[Block]:
    """The ``python`` and ``bash`` blocks of ``page``, in order."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        language, code, include = match.groups()
        if language in ("python", "bash"):
            line = text.count("\n", 0, match.start()) + 1
            output = (page.parent / include).resolve() if include else None
            found.append(Block(page, line, language, code, output))
    return found


def run(block: Block, cwd: Path, timeout: float = 600) -> str:
    """Run ``block`` on its own in ``cwd``; return what it printed. Raises ``RuntimeError`` if it fails."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env |= {"PYTHONWARNINGS": "ignore", "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    if block.language == "python":
        command = [sys.executable, "-c", block.code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", "\n".join(map(_stand_in, block.code.splitlines()))]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{block.name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _stand_in(line: str) -> str:
    """The line itself, or what runs in its place (see the module's docstring)."""
    words = shlex.split(line, comments=True)
    if words[:2] == ["pip", "install"]:
        args = " ".join(shlex.quote(w) for w in words[2:])
        offline = "--dry-run --quiet --no-index --no-deps --no-build-isolation"
        return f"(cd {shlex.quote(str(ROOT))} && pip install {offline} {args})"
    if words[:1] == ["make"]:
        return f"make --dry-run -C {shlex.quote(str(ROOT))} {' '.join(map(shlex.quote, words[1:]))} > /dev/null"
    if words[:1] == ["tensorboard"]:
        serve_args = " ".join(map(shlex.quote, words[1:]))
        return f"{shlex.quote(sys.executable)} {shlex.quote(__file__)} --serve {serve_args}"
    return line


def serve(args: list[str], wait: float = 120) -> None:
    """Start ``tensorboard ARGS`` on a free port, wait until it lists the RWC tab, stop it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen([str(binary), *args, "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=5) as answer:
                    if b'"rwc"' in answer.read():
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"tensorboard {' '.join(args)} did not serve the RWC tab within {wait:.0f} s")
    finally:
        server.terminate()
        server.wait()


def generate() -> None:
    """Run every block whose output a page includes, and write that output."""
    GENERATED.mkdir(exist_ok=True)
    for page in pages():
        for block in blocks(page):
            if block.output is not None:
                with tempfile.TemporaryDirectory() as cwd:
                    block.output.write_text(run(block, Path(cwd)))
                print(f"{block.output.relative_to(ROOT)} <- {block.name}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2:])
    else:
        generate()
