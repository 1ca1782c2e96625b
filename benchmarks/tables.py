"""Benchmark results as Markdown tables."""

from __future__ import annotations


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
