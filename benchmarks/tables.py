"""Benchmark results as Markdown tables."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def table(rows: list[dict]) -> str:
    """One row per dict, one column per key (in the order first seen); floats with three significant digits."""
    if not rows:
        return ""
    keys = list(rows[0])
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{row[k]:.3g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def publish(sections: list[str], out: str | None) -> None:
    """Print the report made of ``sections`` and, with ``out``, write it to that file."""
    report = "\n\n".join(sections) + "\n"
    print(report)
    if out:
        with open(out, "w") as handle:
            handle.write(report)


def cpu_name() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` where there is one) and how many cores this process may use."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model or platform.processor() or platform.machine()}, {cores} cores"
