"""The RWC dashboard on a long, deep run: 1,000 layers x 10,000 measurements, in a values file or in event files.

- the ``run`` route of the plugin in this process: the first answer (reading the values file, or the event files)
  and warm ones, the bytes sent, and what the tab keeps between requests after 40 widths were asked for;
- the page in headless Chromium (Debian's ``chromium`` and ``chromium-driver``) against a real ``tensorboard``:
  the time from asking to having the data, and the time to draw the heatmap once the data are there;
- two such runs side by side (one colour scale, one step axis, rows aligned, their ratio): the time from picking
  them to everything drawn.

Run ``python -m benchmarks.dashboard --out benchmarks/results/dashboard-cpu.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.tables import cpu_name, publish, table


def write_run(run: Path, layers: int, measurements: int, values_file: bool = True, seed: int = 0) -> None:
    """A run of planted curves, in a values file or in event files only (one event per measurement, as logged).

    A values file comes with the small event file that makes TensorBoard list the run.
    """
    from torch.utils.tensorboard import SummaryWriter

    from lightning_rwc.tensorboard import use_fast_checksums, write_scalars
    from lightning_rwc.values_file import ValuesWriter

    use_fast_checksums()
    rng = np.random.default_rng(seed)
    names = [f"h.{i // 10}.layer{i % 10}.weight" for i in range(layers)]
    base, decay = rng.lognormal(-5, 1, layers), rng.uniform(0.1, 1.0, layers)
    writer = ValuesWriter(run / "rwc_values") if values_file else None
    events = SummaryWriter(str(run), max_queue=1000, flush_secs=3600)
    for step in range(1, measurements + 1):
        values = dict(zip(names, (base * step**-decay * rng.lognormal(0, 0.1, layers)).tolist(), strict=True))
        if writer is not None:
            writer.append(step, step // 1000, values | {"_all": 1e-3})
        else:
            tags = {f"rwc/{name}": value for name, value in values.items()} | {"rwc/_all": 1e-3}
            write_scalars(events, tags | {"epoch": step // 1000}, step)  # as Lightning logs them: one event
    if writer is not None:
        writer.close()
        events.add_scalar("rwc/_all", 1e-3, measurements)
    events.close()


def bench_route(logdir: Path, repeats: int, runs: tuple[str, ...]) -> list[dict]:
    from werkzeug.test import Client

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from dashboard.test_plugin import make_plugin  # the same provider and context as the route tests

    plugin = make_plugin(logdir)
    route = Client(plugin.get_plugin_apps()["/run"])
    rows = []
    for run in runs:
        for columns in (1000, 2000):
            times = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                body = route.get("/run", query_string={"run": run, "columns": str(columns)}).get_data()
                times.append(time.perf_counter() - start)
            row = {"run": run, "columns asked": columns, "first answer s": times[0]}
            row |= {"warm answer s (<= 0.5)": statistics.median(times[1:])}
            rows.append(row | {"MB sent (<= 8)": len(body) / 1e6})
        for columns in range(1000, 5000, 100):  # 40 widths: what the tab keeps stays within its bound
            route.get("/run", query_string={"run": run, "columns": str(columns)})
        rows[-1]["MB kept after 40 widths"] = plugin.cache.nbytes / 1e6
    return rows


def bench_page(
    logdir: Path, runs: tuple[str, ...] = ("long",), pairs: tuple[tuple[str, str], ...] = ()
) -> tuple[list[dict], list[dict]]:
    """Each run alone, then each pair side by side once both were read: the rows of both tables.

    Each run is first shown by a tensorboard that lists only it (beside ``logdir``), so its first reading is timed
    alone, not while the page reads the run it shows first.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
    from screenshots import browser, tensorboard

    alone, beside = [], []
    driver = browser()
    try:
        for run in runs:
            solo = logdir.parent / "solo" / run
            shutil.copytree(logdir / run, solo / run, copy_function=os.link)  # the same files, not copied
            with tensorboard(solo, "rwc") as base:
                driver.get(f"{base}/#rwc")
                alone.append(visit(driver, run, "first visit (the run read)"))
                if run == runs[0]:
                    driver.refresh()
                    alone.append(visit(driver, run, "page reloaded (cached)"))
        with tensorboard(logdir, "rwc") as base:
            driver.get(f"{base}/#rwc")
            for first, second in pairs:
                compare(driver, first, second)  # both runs read
                driver.refresh()
                beside.append(compare(driver, first, second))
    finally:
        driver.quit()
    return alone, beside


def visit(driver, run: str, page: str) -> dict:
    """One run in the tab: the time from asking to having its data, and to drawing its heatmap."""
    from screenshots import show_a_layer
    from selenium.webdriver.common.by import By

    pick(driver, {"rwc-run": run})
    layers = show_a_layer(driver, settle=3, click=False)
    panel = driver.find_element(By.CSS_SELECTOR, "section.rwc-panel")
    heatmap = driver.find_element(By.CSS_SELECTOR, "canvas.rwc-heatmap")
    row = {"run": panel.get_attribute("data-run"), "page": page, "rows": layers}
    row |= {"columns": int(heatmap.get_attribute("data-columns"))}
    row |= {"data s (asked to arrived)": float(panel.get_attribute("data-fetch-ms")) / 1e3}
    row |= {"heatmap drawn s (<= 1)": float(heatmap.get_attribute("data-draw-ms")) / 1e3}
    row |= {"MB sent (<= 8)": int(panel.get_attribute("data-bytes")) / 1e6}
    driver.switch_to.default_content()
    return row


def pick(driver, runs: dict[str, str]) -> None:
    """Pick runs in the tab's run lists (by list id), once TensorBoard lists them; leaves the driver in the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "iframe"))
    driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "iframe"))
    for picker, run in runs.items():
        listed = f"#{picker} option[value='{run}']"
        WebDriverWait(driver, 300).until(lambda d, listed=listed: d.find_elements(By.CSS_SELECTOR, listed))
        Select(driver.find_element(By.ID, picker)).select_by_value(run)
    driver.switch_to.default_content()


def compare(driver, first: str, second: str) -> dict:
    """Two runs in the tab: the time from picking them to both heatmaps and their ratio drawn, on one scale."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pick(driver, {"rwc-run": first, "rwc-run-b": second})
    driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "iframe"))
    drawn = "section.rwc-ratio:not([hidden]) canvas[data-draw-ms]"
    ratio = WebDriverWait(driver, 300).until(lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, drawn)), 0))
    panels = driver.find_elements(By.CSS_SELECTOR, "section.rwc-panel")
    heatmaps = [p.find_element(By.CSS_SELECTOR, "canvas.rwc-heatmap") for p in panels]
    scales = {p.find_element(By.CSS_SELECTOR, "canvas.rwc-legend").get_attribute("aria-label") for p in panels}
    area = driver.find_element(By.ID, "rwc-panels")
    row = {"runs": f"{first} beside {second}", "rows": int(heatmaps[0].get_attribute("data-rows"))}
    row |= {"columns": " + ".join(h.get_attribute("data-columns") for h in heatmaps)}
    row |= {"data s (asked to arrived)": max(float(p.get_attribute("data-fetch-ms")) for p in panels) / 1e3}
    row |= {"both heatmaps and ratio drawn s": float(area.get_attribute("data-draw-ms")) / 1e3}
    row |= {"of which the ratio s": float(ratio.get_attribute("data-draw-ms")) / 1e3}
    row |= {"picked to all shown s (<= 1.5 warm)": float(area.get_attribute("data-shown-ms")) / 1e3}
    row |= {"one scale": len(scales) == 1, "MB sent": sum(int(p.get_attribute("data-bytes")) for p in panels) / 1e6}
    driver.switch_to.default_content()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small run, no browser (for the test suite)")
    parser.add_argument("--out", default=None, help="also write the Markdown tables to this file")
    args = parser.parse_args()
    layers, measurements = (50, 200) if args.smoke else (1000, 10_000)
    with tempfile.TemporaryDirectory() as folder:
        logdir = Path(folder) / "runs"
        start = time.perf_counter()
        write_run(logdir / "long", layers, measurements)
        write_run(logdir / "events", layers, measurements, values_file=False)
        if not args.smoke:
            write_run(logdir / "wide", 10_000, 1000)
            write_run(logdir / "half", layers, measurements // 2, seed=1)
        sections = [
            f"# The RWC dashboard, {date.today().isoformat()}",
            f"CPU: {cpu_name()}. A run of {layers} layers x {measurements} measurements in a values file (long), the "
            f"same in event files only (events), written in {time.perf_counter() - start:.1f} s. Command: "
            f"`python -m benchmarks.dashboard {' '.join(sys.argv[1:])}`.",
            "## The run route, in process (the tab reads the files itself; 1 GiB kept at most by default)",
            table(bench_route(logdir, 2 if args.smoke else 5, ("long", "events"))),
        ]
        if not args.smoke:
            title = "## The page in headless Chromium, against tensorboard (wide: 10,000 layers x 1,000 measurements)"
            alone, beside = bench_page(logdir, ("long", "events", "wide"), (("long", "events"), ("long", "half")))
            sections += [title, table(alone), "## Two runs side by side, both read (half: 1,000 x 5,000, other values)"]
            sections += [table(beside)]
    publish(sections, args.out)


if __name__ == "__main__":
    main()
