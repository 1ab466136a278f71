"""End to end in a browser: JupyterLab and Jupyter Notebook 7 on 127.0.0.1, headless Chromium (Debian's
package, driven by Playwright), the quickstart notebook run from the Run menu, and the live dashboard
rendered in the page. Notebook 7 is the current "classic" Notebook, built from JupyterLab's components."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
ARTIFACTS = REPOSITORY / "test-artifacts"
QUICKSTART = REPOSITORY / "tutorials" / "01_quickstart.ipynb"


@dataclass(frozen=True)
class Frontend:
    """What differs between the two apps: how the server starts, where the notebook opens, what covers it while loading."""

    module: str  # started as `python -m MODULE`; also names its log and screenshots
    notebook_path: str  # the URL path a notebook opens under
    splash: str | None  # the loading screen that covers the page until the app has started, if any


FRONTENDS = [Frontend("jupyterlab", "lab/tree", "#jupyterlab-splash"), Frontend("notebook", "notebooks", None)]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def frontend_url(request, tmp_path):
    """The frontend's server on 127.0.0.1 with a one-off token, serving a scratch copy of the quickstart;
    yields the frontend and the notebook's URL."""
    frontend = request.param
    notebook = nbformat.read(QUICKSTART, as_version=4)
    for cell in notebook.cells:  # a fresh notebook: every output the test sees comes from this run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, tmp_path / QUICKSTART.name)
    settings = tmp_path / "settings"
    # every cell stays in the page (no windowing), and no news pop-up covers it. Both apps use JupyterLab's
    # plugins and settings layout; Notebook 7 with JupyterLab installed is served its settings by
    # JupyterLab's server extension, so the option goes to LabServerApp, the base class of both apps.
    for name, value in (("notebook-extension/tracker", {"windowingMode": "none"}),
                        ("apputils-extension/notification", {"fetchNews": "false"})):
        (settings / "@jupyterlab" / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / "@jupyterlab" / f"{name}.jupyterlab-settings").write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(16)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
                   "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    log = tmp_path / f"{frontend.module}.log"
    server = subprocess.Popen(
        [sys.executable, "-m", frontend.module, "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--ServerApp.open_browser=False", "--allow-root",
         f"--LabServerApp.user_settings_dir={settings}"],
        cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.5)
    # start the notebook's kernel session through the REST API, so no kernel dialog can race the test
    request = urllib.request.Request(
        f"{base}/api/sessions?token={token}", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"path": QUICKSTART.name, "type": "notebook", "kernel": {"name": "python3"}}).encode(),
    )
    urllib.request.urlopen(request, timeout=60)
    yield frontend, f"{base}/{frontend.notebook_path}/{QUICKSTART.name}?token={token}"
    server.send_signal(signal.SIGINT)
    server.send_signal(signal.SIGINT)  # the server asks for confirmation on the first one
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_all_cells(page):
    """Run > Run All Cells, the same menu in both apps; retried while the kernel session settles."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    first_prompt = page.locator(".jp-CodeCell .jp-InputPrompt").first
    select_kernel = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
    for _ in range(5):  # the app may first ask which kernel to run (its session is still settling)
        try:
            if select_kernel.is_visible():
                select_kernel.click()
            page.get_by_role("menuitem", name="Run", exact=True).click(timeout=5_000)
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click(timeout=5_000)
            page.wait_for_function("element => /\\[(\\*|\\d+)\\]/.test(element.textContent)",
                                   arg=first_prompt.element_handle(), timeout=20_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")  # close a menu left open
    pytest.fail("the app never started running the notebook")


@pytest.mark.slow
@pytest.mark.parametrize("frontend_url", FRONTENDS, ids=[frontend.module for frontend in FRONTENDS], indirect=True)
def test_the_quickstart_dashboard_renders(frontend_url):
    from playwright.sync_api import sync_playwright

    frontend, url = frontend_url
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium package is needed (.ci/run installs it)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(url)
            if frontend.splash:
                page.locator(frontend.splash).wait_for(state="detached", timeout=120_000)  # the app has started
            page.locator(".jp-Notebook").wait_for(timeout=120_000)
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)
            run_all_cells(page)

            # the last cell awaits the background run; once its result shows, every cell has run
            page.get_by_text("status='stopped', rounds=1/50").wait_for(timeout=300_000)
            dashboard = page.locator(".fedless-dashboard").first  # the foreground run's, 5 rounds
            dashboard.scroll_into_view_if_needed()
            dashboard.locator(".fedless-progress").get_by_text("Round 5/5").wait_for()
            bar = dashboard.locator(".fedless-progress .progress-bar")
            assert bar.evaluate("element => element.style.width") == "100%"
            page.screenshot(path=str(ARTIFACTS / f"{frontend.module}-dashboard.png"))
            accuracy_points = dashboard.locator(".fedless-accuracy svg.fedless-chart polyline").get_attribute("points")
            assert len(accuracy_points.split()) == 5, "one accuracy point per round"
            assert dashboard.locator(".fedless-loss svg.fedless-chart polyline").count() == 1
            assert dashboard.locator(".fedless-timeline svg.fedless-timeline rect.fedless-invocation").count() == 25
            assert "25" in dashboard.locator(".fedless-totals").inner_text()
        except Exception:
            page.screenshot(path=str(ARTIFACTS / f"{frontend.module}-failure.png"))
            raise
        finally:
            browser.close()
