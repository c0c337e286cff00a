"""A real browser on a real tracking server: what a user sees after a sweep.

A tiny sweep (one augmentation x two front ends, no controls) logs over HTTP to an
``mlflow server`` on loopback; the runs are read back with ``MlflowClient``, then headless
Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium) opens the UI:
the experiment list, the experiment in the model-training view (MLflow 3.17 opens every
experiment in its GenAI view unless the link says otherwise), the sweep's saved runs view
with the headline metric and the cell settings as columns, and the parent run's heatmap.
Screenshots land in the test's tmp path. A missing browser skips on a developer machine
and fails under ``CI=true``, as a missing dataset does.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Run

from core.sweep import SweepOutcome, SweepRequest, run_sweep
from core.tracking import (
    EXPERIMENT_KIND_TRAINING,
    HEADLINE_METRIC,
    TAG_EXPERIMENT_KIND,
    TAG_PRIMARY_METRIC,
    TAG_RUNS_VIEW_PREFIX,
    UI_TRAINING_VIEW_QUERY,
    UI_VIEW_QUERY_KEY,
    find_trial_runs,
    tracking_client,
)
from tests.servers import MlflowServer
from tests.test_sweep_e2e import _tiny

pytestmark = pytest.mark.slow

HEATMAP = "report/aug_matrix_stft3.png"
FRONTENDS = ["raw1d", "stft3"]
PAGE_WAIT_S = 60
# Flags for a browser with no display, no GPU, no sandbox (CI runs as root in a
# container) and nothing that reaches out to the network on its own.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1920,1080",
)


def _missing(message: str) -> None:
    """Skip on a developer machine; fail under CI, which must never pass by skipping."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (the bytes the browser has to decode)."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


@dataclass(frozen=True)
class Browser:
    """Where Debian installs the browser and its driver."""

    chromium: str
    chromedriver: str


@pytest.fixture(scope="module")
def browser_binaries() -> Browser:
    """Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them), and
    Selenium. Nothing is downloaded: the driver is given by path, so Selenium's own
    driver manager never runs."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("selenium is not installed; pip install -e '.[test]'")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        _missing(
            "headless Chromium not found (chromium and chromedriver on PATH); "
            "apt-get install -y chromium chromium-driver"
        )
    return Browser(chromium=chromium, chromedriver=chromedriver)


@pytest.fixture(scope="module")
def sweep(
    mlflow_server: MlflowServer,
    ray_cluster: Any,
    fsdd_root: Path,
    cache_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> SweepOutcome:
    """Two tiny trials (FD on raw1d and on stft3) logged to the server over HTTP."""
    outcome = run_sweep(
        SweepRequest(
            preset="quick",
            overrides=_tiny(fsdd_root, cache_dir),
            axis_values={"augment.pipeline": ["FD"], "frontend.name": FRONTENDS},
            controls=False,
            max_concurrent=1,  # one reused trial actor: its start costs more than the trials
            tracking_uri=mlflow_server.wait_until_ready(),
            results_dir=tmp_path_factory.mktemp("browser-results"),
            command_line="pytest browser",
        )
    )
    assert outcome.tracking_uri == mlflow_server.url, "loopback on one node stays as given"
    assert [record.status for record in outcome.records] == ["FINISHED"] * len(FRONTENDS)
    return outcome


@dataclass(frozen=True)
class Logged:
    """The sweep as ``MlflowClient`` reads it back from the server."""

    experiment_id: str
    experiment_name: str
    experiment_tags: dict[str, str]
    parent: Run
    children: list[Run]


@pytest.fixture(scope="module")
def logged(sweep: SweepOutcome) -> Logged:
    client = tracking_client(sweep.tracking_uri)
    parent = client.get_run(sweep.parent_run_id)
    experiment = client.get_experiment(parent.info.experiment_id)
    return Logged(
        experiment_id=experiment.experiment_id,
        experiment_name=experiment.name,
        experiment_tags=dict(experiment.tags),
        parent=parent,
        children=find_trial_runs(sweep.tracking_uri, sweep.parent_run_id),
    )


def test_the_sweep_reads_back_over_http(sweep: SweepOutcome, logged: Logged) -> None:
    assert logged.parent.info.status == "FINISHED"
    assert logged.parent.data.tags["clarlab.run_kind"] == "sweep"
    assert len(logged.children) == len(FRONTENDS)
    assert sorted(run.data.params["frontend.name"] for run in logged.children) == FRONTENDS
    for child in logged.children:
        assert child.info.status == "FINISHED"
        assert child.info.experiment_id == logged.experiment_id
        assert 0.0 <= child.data.metrics[HEADLINE_METRIC] <= 1.0

    # The experiment says what it is: model training, scored by the headline metric.
    tags = logged.experiment_tags
    assert tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING
    assert tags[TAG_PRIMARY_METRIC] == HEADLINE_METRIC
    # The sweep's saved runs view: its trials, best first, metric and settings as columns.
    envelope = json.loads(tags[f"{TAG_RUNS_VIEW_PREFIX}{sweep.parent_run_id}"])
    assert envelope["name"].startswith(logged.parent.info.run_name)
    state = json.loads(envelope["state"])
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}'"
    assert state["orderByKey"] == f"metrics.`{HEADLINE_METRIC}`"
    assert state["orderByAsc"] is False
    assert state["selectedColumns"][0] == f"metrics.`{HEADLINE_METRIC}`"
    for setting in ("frontend.name", "augment.pipeline"):
        assert f"params.`{setting}`" in state["selectedColumns"]

    client = tracking_client(sweep.tracking_uri)
    listed = {item.path for item in client.list_artifacts(sweep.parent_run_id, "report")}
    assert HEATMAP in listed


@pytest.fixture
def browser(browser_binaries: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium with a fresh profile, as a first-time user has."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_binaries.chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(
        service=Service(executable_path=browser_binaries.chromedriver), options=options
    )
    driver.set_page_load_timeout(PAGE_WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _page_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait_for(driver: Any, what: str, condition: Callable[[Any], Any]) -> Any:
    """Wait until the single-page app has rendered ``condition``; on time-out, say what
    the page showed instead."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, PAGE_WAIT_S, poll_frequency=0.25).until(condition)
    except TimeoutException:
        pytest.fail(
            f"the MLflow UI did not show {what} within {PAGE_WAIT_S} s at "
            f"{driver.current_url}; the page read:\n{_page_text(driver)[:3000]}"
        )


def _shows_all(names: list[str]) -> Callable[[Any], bool]:
    return lambda driver: all(name in _page_text(driver) for name in names)


def _has_columns(columns: set[str]) -> Callable[[Any], list[str] | bool]:
    """The runs table's column headers once they include ``columns``."""

    def check(driver: Any) -> list[str] | bool:
        headers = driver.execute_script(HEADERS_JS)
        return headers if columns <= set(headers) else False

    return check


def _assert_training_view(driver: Any) -> None:
    """The page is MLflow's model-training view, not its GenAI one."""
    shown = _page_text(driver)
    found = [marker for marker in GENAI_MARKERS if marker in shown]
    assert not found, f"GenAI view at {driver.current_url} ({found}):\n{shown[:2000]}"


def _screenshot(driver: Any, path: Path) -> None:
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


# Column headers of the runs table (ag-grid), read from the DOM: a narrow column clips
# its header on screen, but the text is all there.
HEADERS_JS = """
return Array.from(document.querySelectorAll('.ag-header-cell-text, [role="columnheader"]'))
    .map(cell => cell.textContent.trim()).filter(text => text.length > 0);
"""
# The body cells of the column whose id names a field (ag-grid's col-id, e.g.
# params.`frontend.name`).
COLUMN_CELLS_JS = """
return Array.from(document.querySelectorAll('.ag-center-cols-container .ag-cell[col-id]'))
    .filter(cell => cell.getAttribute('col-id').includes(arguments[0]))
    .map(cell => cell.textContent.trim());
"""
# Click the expander beside a parent run's name (the run-name cell's only button).
EXPAND_JS = """
const link = Array.from(document.querySelectorAll('a'))
    .find(anchor => anchor.textContent.trim() === arguments[0]);
const button = link && link.closest('.ag-cell') && link.closest('.ag-cell').querySelector('button');
if (!button) { return false; }
button.click();
return true;
"""
# What only MLflow's GenAI view shows: its usage overview and its navigation.
GENAI_MARKERS = ("Token Usage", "Tokens per Trace", "Evaluation runs")
# The images the artifact viewer shows (it loads the PNG into a blob: URL), decoded sizes.
IMAGES_JS = """
return Array.from(document.images)
    .filter(image => image.src.startsWith('blob:') && image.complete)
    .map(image => [image.naturalWidth, image.naturalHeight]);
"""


def test_the_ui_shows_the_sweep_and_its_heatmap(
    browser_binaries: Browser, sweep: SweepOutcome, logged: Logged, browser: Any, tmp_path: Path
) -> None:
    # browser_binaries comes first: without a browser the test stops before the sweep.
    base = sweep.tracking_uri
    experiment_page = f"{base}/#/experiments/{logged.experiment_id}"
    parent_name = logged.parent.info.run_name
    child_names = [run.info.run_name for run in logged.children]

    # The experiment list.
    browser.get(f"{base}/#/experiments")
    _wait_for(
        browser, f"experiment {logged.experiment_name!r}", _shows_all([logged.experiment_name])
    )
    _screenshot(browser, tmp_path / "1-experiments.png")

    # The experiment, opened in the model-training view: the runs table, with the
    # sweep's parent run, not the GenAI overview of traces (MLflow 3.17's landing view
    # for a bare link, whatever the experiment's tags say).
    browser.get(f"{experiment_page}?{UI_TRAINING_VIEW_QUERY}")
    _wait_for(browser, f"parent run {parent_name!r}", _shows_all([parent_name]))
    assert f"/experiments/{logged.experiment_id}/runs" in browser.current_url
    assert "/overview" not in browser.current_url and "/traces" not in browser.current_url
    _assert_training_view(browser)
    total = 1 + len(child_names)
    _wait_for(browser, f"{total} matching runs", _shows_all([f"{total} matching runs"]))
    # The trials fold under their parent; its expander shows them.
    assert browser.execute_script(EXPAND_JS, parent_name), "the parent run has no expander"
    _wait_for(browser, f"child runs {child_names} under the parent", _shows_all(child_names))
    _screenshot(browser, tmp_path / "2-experiment-runs.png")

    # The sweep's saved view: its trials, with the headline metric and the cell settings
    # as columns, and each trial's front end in its row.
    browser.get(
        f"{experiment_page}/runs?{UI_TRAINING_VIEW_QUERY}&{UI_VIEW_QUERY_KEY}={sweep.parent_run_id}"
    )
    _wait_for(browser, f"child runs {child_names}", _shows_all(child_names))
    columns = {HEADLINE_METRIC, "frontend.name", "augment.pipeline"}
    headers = _wait_for(browser, f"the columns {sorted(columns)}", _has_columns(columns))
    count = f"{len(child_names)} matching runs"
    _wait_for(browser, f"{count} (the trials only)", _shows_all([count]))
    assert f"{parent_name}: trials by {HEADLINE_METRIC}" in _page_text(browser), "view's name"
    cells = browser.execute_script(COLUMN_CELLS_JS, "frontend.name")
    assert sorted(cells) == FRONTENDS, f"frontend.name column shows {cells}"
    _assert_training_view(browser)
    print(f"runs table columns: {list(dict.fromkeys(headers))}")
    _screenshot(browser, tmp_path / "3-sweep-view.png")

    # The parent run's heatmap, decoded by the browser at the size of the logged PNG.
    local = Path(
        tracking_client(base).download_artifacts(sweep.parent_run_id, HEATMAP, str(tmp_path))
    )
    width, height = _png_size(local)
    browser.get(
        f"{experiment_page}/runs/{sweep.parent_run_id}/artifacts/{HEATMAP}?{UI_TRAINING_VIEW_QUERY}"
    )
    decoded = _wait_for(
        browser,
        f"the heatmap {HEATMAP}",
        lambda driver: driver.execute_script(IMAGES_JS) or False,
    )
    assert [width, height] in decoded, f"decoded {decoded}, the PNG is {width}x{height}"
    assert width > 0 and height > 0
    _assert_training_view(browser)
    _screenshot(browser, tmp_path / "4-heatmap.png")
