"""The RWC dashboard on a long, deep run: 1,000 layers x 10,000 measurements (values file).

- the ``run`` route of the plugin in this process, through TensorBoard's data provider: the first answer (reading
  the values file) and warm ones, and the bytes sent;
- the page in headless Chromium (Debian's ``chromium`` and ``chromium-driver``) against a real ``tensorboard``:
  the time from asking to having the data, and the time to draw the heatmap once the data are there.

Run ``python -m benchmarks.dashboard --out benchmarks/results/dashboard-cpu.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.tables import cpu_name, publish, table


def write_run(run: Path, layers: int, measurements: int) -> None:
    """A run with a values file of planted curves and the small event file that makes TensorBoard list it."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_rwc.values_file import ValuesWriter

    rng = np.random.default_rng(0)
    names = [f"h.{i // 10}.layer{i % 10}.weight" for i in range(layers)]
    base, decay = rng.lognormal(-5, 1, layers), rng.uniform(0.1, 1.0, layers)
    writer = ValuesWriter(run / "rwc_values")
    for step in range(1, measurements + 1):
        values = base * step**-decay * rng.lognormal(0, 0.1, layers)
        writer.append(step, step // 1000, dict(zip(names, values.tolist(), strict=True)) | {"_all": 1e-3})
    writer.close()
    events = SummaryWriter(str(run))
    events.add_scalar("rwc/_all", 1e-3, measurements)
    events.close()


def bench_route(logdir: Path, repeats: int) -> list[dict]:
    from werkzeug.test import Client

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from dashboard.test_plugin import make_plugin  # the same provider and context as the route tests

    plugin = make_plugin(logdir)
    route = Client(plugin.get_plugin_apps()["/run"])
    rows = []
    for columns in (1000, 2000):
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            body = route.get("/run", query_string={"run": "long", "columns": str(columns)}).get_data()
            times.append(time.perf_counter() - start)
        row = {
            "columns asked": columns,
            "first answer s": times[0],
            "warm answer s (<= 0.5)": statistics.median(times[1:]),
        }
        rows.append(row | {"MB sent (<= 8)": len(body) / 1e6})
    return rows


def bench_page(logdir: Path, runs: tuple[str, ...] = ("long",)) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
    from screenshots import browser, show_a_layer, tensorboard
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    rows = []
    with tensorboard(logdir, "rwc") as base:
        driver = browser()
        try:
            driver.get(f"{base}/#rwc")
            visits = [(run, "first visit (the run read)") for run in runs] + [(runs[0], "page reloaded (cached)")]
            for run, visit in visits:
                if visit.startswith("page"):
                    driver.refresh()
                elif run != runs[0]:
                    driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "iframe"))
                    Select(driver.find_element(By.ID, "rwc-run")).select_by_value(run)
                    driver.switch_to.default_content()
                    time.sleep(2)
                layers = show_a_layer(driver, settle=3, click=False)
                panel = driver.find_element(By.CSS_SELECTOR, "section.rwc-panel")
                heatmap = driver.find_element(By.CSS_SELECTOR, "canvas.rwc-heatmap")
                row = {"run": run, "page": visit, "rows": layers, "columns": int(heatmap.get_attribute("data-columns"))}
                row |= {"data s (asked to arrived)": float(panel.get_attribute("data-fetch-ms")) / 1e3}
                row |= {"heatmap drawn s (<= 1)": float(heatmap.get_attribute("data-draw-ms")) / 1e3}
                rows.append(row | {"MB sent (<= 8)": int(panel.get_attribute("data-bytes")) / 1e6})
                driver.switch_to.default_content()
        finally:
            driver.quit()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small run, no browser (for the test suite)")
    parser.add_argument("--out", default=None, help="also write the Markdown tables to this file")
    args = parser.parse_args()
    layers, measurements = (50, 200) if args.smoke else (1000, 10_000)
    with tempfile.TemporaryDirectory() as folder:
        logdir = Path(folder)
        start = time.perf_counter()
        write_run(logdir / "long", layers, measurements)
        if not args.smoke:
            write_run(logdir / "wide", 10_000, 1000)
        sections = [
            f"# The RWC dashboard, {date.today().isoformat()}",
            f"CPU: {cpu_name()}. A run of {layers} layers x {measurements} measurements in a values file "
            f"(written in {time.perf_counter() - start:.1f} s). Command: `python -m benchmarks.dashboard "
            f"{' '.join(sys.argv[1:])}`.",
            "## The run route, in process (TensorBoard's data provider)",
            table(bench_route(logdir, 2 if args.smoke else 5)),
        ]
        if not args.smoke:
            title = "## The page in headless Chromium, against tensorboard (wide: 10,000 layers x 1,000 measurements)"
            sections += [title, table(bench_page(logdir, ("long", "wide")))]
    publish(sections, args.out)


if __name__ == "__main__":
    main()
