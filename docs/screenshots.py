"""Screenshots of TensorBoard's Scalars, Custom Scalars and RWC dashboards for a real run, in headless Chromium.

``python docs/screenshots.py [--logdir demo_logs] [--out docs/images]`` (or ``make screenshots``) runs the demo if
the log folder is missing, clusters every run that has no cluster run yet, starts ``tensorboard`` on 127.0.0.1,
opens the dashboards in headless Chromium (Debian's ``chromium`` and ``chromium-driver`` packages, driven by
Selenium) and saves ``scalars.png``, ``custom_scalars.png`` and ``rwc.png``. It prints how many cluster charts the
Custom Scalars page shows. With ``--compare`` it saves only ``rwc-compare.png``: the RWC tab with the first two runs
of the log folder side by side (the documentation's image: two ``lightning-rwc demo`` runs into one folder, the
second with ``--lr 0.05 --every-n-steps 2``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = "Needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) and selenium."

# Custom elements live in shadow roots; this walks them all and counts the margin charts (one per cluster).
COUNT_MARGIN_CHARTS = """
const seen = [];
function walk(root) {
  for (const el of root.querySelectorAll('*')) {
    if (el.tagName.toLowerCase() === 'tf-custom-scalar-margin-chart-card') seen.push(el);
    if (el.shadowRoot) walk(el.shadowRoot);
  }
}
walk(document);
return seen.length;
"""


@contextmanager
def tensorboard(logdir: Path, ready: str = "custom_scalars", *flags: str) -> Iterator[str]:
    """A tensorboard process on a free loopback port; yields its base URL and stops it by its process group.

    ``ready``: the plugin that must be enabled before the URL is given; ``flags``: more command-line flags.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", *flags]
    server = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/data/plugins_listing", timeout=5) as response:
                    if json.loads(response.read()).get(ready, {}).get("enabled"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"tensorboard did not serve the {ready} plugin for {logdir} within 60 s")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def browser() -> object:
    """Headless Chromium through Selenium, with the flags a machine without network needs."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        raise ModuleNotFoundError(INSTALL_HINT) from err
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        raise FileNotFoundError(INSTALL_HINT)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def capture(logdir: Path, out: Path, settle: float = 6.0) -> dict[str, object]:
    """Save both dashboards as PNG into ``out``; return the paths and the number of margin charts seen."""
    out.mkdir(parents=True, exist_ok=True)
    driver = browser()
    try:
        with tensorboard(logdir) as base:
            driver.get(f"{base}/#scalars&tagFilter=rwc%2F")
            time.sleep(settle)
            driver.save_screenshot(str(out / "scalars.png"))
            driver.set_window_size(1400, 2900)  # the cluster charts come after the per-block charts
            driver.get(f"{base}/#custom_scalars")
            time.sleep(settle)
            charts = driver.execute_script(COUNT_MARGIN_CHARTS)
            driver.save_screenshot(str(out / "custom_scalars.png"))
            driver.set_window_size(1400, 1100)
            driver.get(f"{base}/#rwc")
            rows = show_a_layer(driver, settle)
            driver.switch_to.default_content()
            driver.save_screenshot(str(out / "rwc.png"))
    finally:
        driver.quit()
    shots = {"scalars": out / "scalars.png", "custom_scalars": out / "custom_scalars.png", "rwc": out / "rwc.png"}
    return shots | {"margin_charts": charts, "rwc_rows": rows}


def capture_comparison(logdir: Path, out: Path, settle: float = 6.0) -> Path:
    """Save the RWC tab with the first two runs of ``logdir`` side by side, a layer clicked, as ``rwc-compare.png``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out.mkdir(parents=True, exist_ok=True)
    driver = browser()
    try:
        with tensorboard(logdir, "rwc") as base:
            driver.set_window_size(1400, 2700)
            driver.get(f"{base}/#rwc")
            show_a_layer(driver, settle, click=False)
            runs = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#rwc-run-b option")]
            if len(runs) < 3:  # "(none)" and the runs
                raise SystemExit(f"{logdir} holds {len(runs) - 1} run with RWC values; --compare needs two.")
            Select(driver.find_element(By.ID, "rwc-run-b")).select_by_value(runs[2])  # after "(none)" and run A
            time.sleep(settle / 2)
            driver.switch_to.default_content()
            show_a_layer(driver, settle)
            driver.switch_to.default_content()
            driver.save_screenshot(str(out / "rwc-compare.png"))
    finally:
        driver.quit()
    return out / "rwc-compare.png"


def show_a_layer(driver: object, settle: float, click: bool = True) -> int:
    """In the RWC tab: wait for the heatmap, click a layer near its top (with ``click``); return the number of rows."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "iframe"))
    driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "iframe"))
    heatmap = WebDriverWait(driver, 30).until(
        lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, "canvas.rwc-heatmap[data-rows]")), None)
    )
    rows = int(heatmap.get_attribute("data-rows"))
    height, width = heatmap.size["height"], heatmap.size["width"]
    if click:
        ActionChains(driver).move_to_element_with_offset(
            heatmap, width // 4, -height // 2 + height // 3
        ).click().perform()
    time.sleep(settle / 3)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: demo run if needed, clustering if needed, then both screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="demo_logs")
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--compare", action="store_true", help="only the RWC tab with the first two runs, beside")
    args = parser.parse_args(argv)
    logdir = Path(args.logdir)
    if args.compare:
        print(f"wrote {capture_comparison(logdir, Path(args.out))}")
        return
    if not logdir.exists():
        from lightning_rwc.demo import main as demo

        demo(["--out", str(logdir)])
    from lightning_rwc.keys import CLUSTER_RUN_DIR
    from lightning_rwc.pipeline import cluster_run
    from lightning_rwc.runs import find_runs

    for run in find_runs(logdir, exclude_dirs=[CLUSTER_RUN_DIR]):
        if not (run / CLUSTER_RUN_DIR).exists():
            cluster_run(run)
    shots = capture(logdir, Path(args.out))
    print(f"wrote {shots['scalars']} and {shots['custom_scalars']}; {shots['margin_charts']} cluster charts shown")


if __name__ == "__main__":
    main()
