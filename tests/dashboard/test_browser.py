"""The RWC tab in a real TensorBoard and a real headless Chromium: rows, hover, click, clusters, live updates."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs"))

from screenshots import CHROMEDRIVER, CHROMIUM, INSTALL_HINT, browser, show_a_layer, tensorboard  # noqa: E402

from lightning_rwc.pipeline import cluster_run  # noqa: E402
from lightning_rwc.runs import load_history  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()), reason=INSTALL_HINT),
]


def wait_for(condition, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError("the page did not get there in time")


@pytest.fixture
def driver():
    pytest.importorskip("selenium", reason=INSTALL_HINT)
    chromium = browser()
    yield chromium
    chromium.quit()


def test_the_rwc_tab_shows_every_layer_its_values_on_hover_its_curve_on_click_and_the_clusters(
    real_run, tmp_path, driver
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    run = tmp_path / "logs" / "run"
    shutil.copytree(real_run.tensorboard_dir, run, ignore=shutil.ignore_patterns("rwc_values"))
    clusters = cluster_run(run, plots=False, method="kmeans", n_clusters=2).result
    history = load_history(run)
    with tensorboard(tmp_path / "logs", "rwc") as base:
        driver.get(f"{base}/#rwc")
        assert "RWC" in [tab.text for tab in driver.find_elements(By.CSS_SELECTOR, ".plugin-name, a, span")]
        rows = show_a_layer(driver, settle=3)
        heatmap = driver.find_element(By.CSS_SELECTOR, "canvas.rwc-heatmap")
        assert rows == len(history.layers) == 8
        assert int(heatmap.get_attribute("data-columns")) == len(history.steps)
        assert int(heatmap.get_attribute("data-clusters")) == clusters.n_clusters == 2
        row_height, column_width = heatmap.size["height"] / rows, heatmap.size["width"] / len(history.steps)
        # hover the middle of the cell of the 3rd layer at the last measurement
        x, y = int(heatmap.size["width"] / 2 - column_width / 2), int(-heatmap.size["height"] / 2 + 2.5 * row_height)
        ActionChains(driver).move_to_element_with_offset(heatmap, x, y).perform()
        tooltip = wait_for(lambda: driver.find_element(By.ID, "rwc-tooltip").text)
        layer, value = history.layers[2], history.values[2, -1]
        assert tooltip.startswith(f"{layer} |") and f"step {history.steps[-1]} |" in tooltip
        assert float(tooltip.rsplit("RWC ", 1)[1]) == pytest.approx(value, rel=6e-3)  # float32, shown to 3 digits
        ActionChains(driver).move_to_element_with_offset(heatmap, x, y).click().perform()
        title = wait_for(
            lambda: (
                driver.find_element(By.ID, "rwc-curve-title").text.startswith(layer)
                and driver.find_element(By.ID, "rwc-curve-title").text
            )
        )
        assert f"cluster {clusters.labels[layer]}" in title


def test_a_live_run_gains_columns_without_a_page_reload(real_run, tmp_path, driver):
    from selenium.webdriver.common.by import By

    from lightning_rwc.values_file import ValuesWriter

    run = tmp_path / "logs" / "run"
    shutil.copytree(real_run.tensorboard_dir, run)
    history = load_history(run)
    with tensorboard(tmp_path / "logs", "rwc") as base:
        driver.get(f"{base}/#rwc")
        show_a_layer(driver, settle=3)
        columns = lambda: int(driver.find_element(By.CSS_SELECTOR, "canvas.rwc-heatmap").get_attribute("data-columns"))  # noqa: E731
        assert columns() == len(history.steps)
        writer = ValuesWriter(run / "rwc_values")  # training goes on: two more measurements
        for step in (history.steps[-1] + 2, history.steps[-1] + 4):
            writer.append(step, 3, dict(zip(history.layers, history.values[:, -1], strict=True)) | {"_all": 0.01})
        writer.close()
        assert wait_for(lambda: columns() == len(history.steps) + 2, timeout=40)


def test_a_folder_without_rwc_values_says_so_in_the_page(tmp_path, driver):
    from selenium.webdriver.common.by import By
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "logs" / "other"))
    writer.add_scalar("loss", 1.0, 1)
    writer.close()
    with tensorboard(tmp_path / "logs", "rwc") as base:
        driver.get(f"{base}/#rwc")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "iframe"))
        driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "iframe"))
        message = wait_for(lambda: driver.find_element(By.ID, "rwc-message").text)
        assert message.startswith("No run here holds RWC values")


def test_the_page_clusters_a_run_and_names_its_scale_steps_and_layers_in_text(real_run, tmp_path, driver):
    from selenium.webdriver.common.by import By

    run = tmp_path / "logs" / "run"
    shutil.copytree(real_run.tensorboard_dir, run)
    history = load_history(run)
    with tensorboard(tmp_path / "logs", "rwc") as base:
        driver.get(f"{base}/#rwc")
        show_a_layer(driver, settle=3, click=False)
        driver.find_element(By.ID, "rwc-cluster-now").click()  # a POST from the page: its Host and Origin pass
        message = wait_for(
            lambda: (
                "clusters of" in driver.find_element(By.ID, "rwc-message").text
                and driver.find_element(By.ID, "rwc-message").text
            )
        )
        assert message.endswith(f"clusters of {len(history.layers)} layers.")
        assert (run / "rwc_clusters.json").is_file()
        legend = driver.find_element(By.CSS_SELECTOR, "canvas.rwc-legend")
        low, high = (float(legend.get_attribute(f"data-{end}")) for end in ("low", "high"))
        positive = history.values[history.values > 0]
        assert low == pytest.approx(positive.min(), rel=0.06) and high == pytest.approx(positive.max(), rel=0.06)
        assert "e-" not in legend.get_attribute("data-high") or positive.max() < 0.01  # plain numbers where they fit
        ticks = json.loads(driver.find_element(By.CSS_SELECTOR, "canvas.rwc-axis").get_attribute("data-ticks"))
        assert ticks[0] == f"{history.steps[0]} (epoch {history.epochs[0]})"
        assert ticks[-1] == f"{history.steps[-1]} (epoch {history.epochs[-1]})"
        driver.find_element(By.CSS_SELECTOR, "details.rwc-layers summary").click()
        names = wait_for(lambda: [b.text for b in driver.find_elements(By.CSS_SELECTOR, "button.rwc-layer-name")])
        assert names == history.layers
        driver.find_elements(By.CSS_SELECTOR, "button.rwc-layer-name")[3].click()
        assert wait_for(lambda: driver.find_element(By.ID, "rwc-curve-title").text).startswith(history.layers[3])


def write_run(folder: Path, layers: list[str], steps: list[int], values: np.ndarray) -> None:
    """A run's RWC values in event files, as the callback logs them: ``rwc/{layer}`` and the epoch at each step."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for j, step in enumerate(steps):
        for i, layer in enumerate(layers):
            writer.add_scalar(f"rwc/{layer}", values[i, j], step)
        writer.add_scalar("epoch", step // 10, step)
    writer.close()


def show_beside(driver, base: str, second: str):
    """Open the RWC tab, put run ``second`` beside the first, and return the ratio view's canvas once drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(f"{base}/#rwc")
    show_a_layer(driver, settle=3, click=False)
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f"#rwc-run-b option[value='{second}']"))
    Select(driver.find_element(By.ID, "rwc-run-b")).select_by_value(second)
    drawn = "canvas.rwc-ratio-map[data-draw-ms]"
    return wait_for(lambda: next(iter(driver.find_elements(By.CSS_SELECTOR, drawn)), 0))


def test_two_runs_share_one_colour_scale_one_step_axis_and_rows_and_show_their_ratio(tmp_path, driver):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    rng = np.random.default_rng(0)
    shared = ["enc.0.weight", "enc.1.weight", "enc.2.weight"]
    long_steps, short_steps = list(range(10, 240, 10)), list(range(10, 100, 10))  # 23 and 9 measurements
    long_values = 10 ** rng.uniform(-3, -1, (4, 23))  # shared layers, then head.weight
    short_values = np.vstack([long_values[:3, :9] * [[0.5], [4.0], [0.5]], 10 ** rng.uniform(-2, -0.3, (1, 9))])
    short_values[2, 4] = 0.0  # enc.2 did not change from step 40 to 50 in the short run
    write_run(tmp_path / "logs" / "long", [*shared, "head.weight"], long_steps, long_values)
    write_run(tmp_path / "logs" / "short", [*shared, "extra.weight"], short_steps, short_values)
    every = np.concatenate([long_values.ravel(), short_values.ravel()])
    every = every[every > 0]  # the scale's ends: positive values (0 is black)
    with tensorboard(tmp_path / "logs", "rwc") as base:
        ratio = show_beside(driver, base, "short")
        panels = {p.get_attribute("data-run"): p for p in driver.find_elements(By.CSS_SELECTOR, "section.rwc-panel")}
        heatmaps = {run: p.find_element(By.CSS_SELECTOR, "canvas.rwc-heatmap") for run, p in panels.items()}
        legends = {run: p.find_element(By.CSS_SELECTOR, "canvas.rwc-legend") for run, p in panels.items()}

        # one colour scale: the union of both runs' values
        for legend in legends.values():
            assert float(legend.get_attribute("data-low")) == pytest.approx(every.min(), rel=0.06)
            assert float(legend.get_attribute("data-high")) == pytest.approx(every.max(), rel=0.06)
        # one step axis: the short run ends where its steps end
        assert {json.dumps(json.loads(h.get_attribute("data-steps"))) for h in heatmaps.values()} == {"[0, 230]"}
        width = int(heatmaps["short"].get_attribute("width"))
        assert float(heatmaps["short"].get_attribute("data-end")) == pytest.approx(width * 90 / 230, abs=1)
        assert float(heatmaps["long"].get_attribute("data-end")) == pytest.approx(width, abs=1)
        pixel = "return Array.from(arguments[0].getContext('2d').getImageData(arguments[1], arguments[2], 1, 1).data)"
        row_height = int(heatmaps["short"].get_attribute("height")) / 5
        at = lambda step: int(width * step / 230)  # noqa: E731
        assert driver.execute_script(pixel, heatmaps["short"], at(150), row_height / 2)[3] == 0  # nothing drawn
        assert driver.execute_script(pixel, heatmaps["long"], at(150), row_height / 2)[3] == 255
        # rows aligned by name, a layer one run lacks shown missing (grey) in it
        for panel in panels.values():
            panel.find_element(By.CSS_SELECTOR, "details.rwc-layers summary").click()
        names = {
            run: wait_for(lambda p=p: [b.text for b in p.find_elements(By.CSS_SELECTOR, "button.rwc-layer-name")])
            for run, p in panels.items()
        }
        assert names["long"] == names["short"] == [*shared, "extra.weight", "head.weight"]  # after their neighbour
        assert driver.execute_script(pixel, heatmaps["long"], at(45), 3.5 * row_height)[:3] == [214, 214, 214]
        assert driver.execute_script(pixel, heatmaps["short"], at(45), 4.5 * row_height)[:3] == [214, 214, 214]

        # the ratio view: short over long where both measured, red where short's layer changes more
        driver.execute_script("arguments[0].scrollIntoView()", ratio)
        center = ratio.size["width"] / 2, ratio.size["height"] / 2
        offset = lambda step, row: (int(at(step) - center[0]), int((row + 0.5) * row_height - center[1]))  # noqa: E731
        ActionChains(driver).move_to_element_with_offset(ratio, *offset(45, 1)).perform()
        tooltip = wait_for(lambda: driver.find_element(By.ID, "rwc-ratio-tooltip").text)
        assert tooltip.startswith("enc.1.weight | step 45 |")
        assert float(tooltip.rsplit("ratio ", 1)[1]) == pytest.approx(short_values[1, 4] / long_values[1, 4], rel=6e-3)
        red, _, blue, _ = driver.execute_script(pixel, ratio, at(45), 1.5 * row_height)
        assert red > blue  # 4x: more change in the short run
        red, _, blue, _ = driver.execute_script(pixel, ratio, at(45), 0.5 * row_height)
        assert blue > red  # 0.5x: less
        assert driver.execute_script(pixel, ratio, at(150), 0.5 * row_height)[3] == 0  # only where both measured
        assert driver.execute_script(pixel, ratio, at(45), 2.5 * row_height) == [33, 102, 172, 255]  # 0: the far end
        for row in (3, 4):  # a layer one run lacks
            assert driver.execute_script(pixel, ratio, at(45), (row + 0.5) * row_height)[:3] == [214, 214, 214]
        # a click shows both runs' curves of that layer on one plot
        ActionChains(driver).move_to_element_with_offset(ratio, *offset(45, 1)).click().perform()
        title = wait_for(lambda: driver.find_element(By.ID, "rwc-curve-title").text.startswith("enc.1.weight"))
        assert title
        curves = panels["long"].find_element(By.CSS_SELECTOR, "canvas.rwc-curves")
        assert json.loads(curves.get_attribute("data-runs")) == ["long", "short"]
        assert not panels["short"].find_element(By.CSS_SELECTOR, "canvas.rwc-curves").is_displayed()
        # the step fields zoom both heatmaps to the same steps: the measurements from 50 to 80 and what they cover
        for field, step in (("rwc-from", "50"), ("rwc-to", "80")):
            driver.find_element(By.ID, field).send_keys(step, Keys.TAB)
        assert wait_for(lambda: {h.get_attribute("data-steps") for h in heatmaps.values()} == {"[40,80]"})
        assert [int(h.get_attribute("data-columns")) for h in heatmaps.values()] == [4, 4]


def test_the_ratio_of_runs_measured_at_different_intervals_compares_their_change_per_step(tmp_path, driver):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    rng = np.random.default_rng(1)
    every_ten, every_five = 10 ** rng.uniform(-3, -1, (2, 6)), 10 ** rng.uniform(-3, -1, (2, 12))
    write_run(tmp_path / "logs" / "a", ["l0.weight", "l1.weight"], list(range(10, 70, 10)), every_ten)
    write_run(tmp_path / "logs" / "b", ["l0.weight", "l1.weight"], list(range(5, 65, 5)), every_five)
    with tensorboard(tmp_path / "logs", "rwc") as base:
        ratio = show_beside(driver, base, "b")
        driver.execute_script("arguments[0].scrollIntoView()", ratio)
        width, height = int(ratio.get_attribute("width")), int(ratio.get_attribute("height"))
        x = int(width * 27 / 60 - ratio.size["width"] / 2)  # step 27: a's measurement at 30, b's at 30 (25 to 30)
        ActionChains(driver).move_to_element_with_offset(
            ratio, x, int(height * 3 / 4 - ratio.size["height"] / 2)
        ).perform()
        tooltip = wait_for(lambda: driver.find_element(By.ID, "rwc-ratio-tooltip").text)
        assert tooltip.startswith("l1.weight | step 27 |") and "per step" in tooltip
        per_step = (every_five[1, 5] / 5) / (every_ten[1, 2] / 10)  # each value over the steps it covers
        assert float(tooltip.rsplit("ratio ", 1)[1]) == pytest.approx(per_step, rel=6e-3)
