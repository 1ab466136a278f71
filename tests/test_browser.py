"""End to end in a browser: JupyterLab and Jupyter Notebook 7 on 127.0.0.1, headless Chromium (Debian's
package, driven by Playwright), the quickstart notebook run from the Run menu, and the live dashboard
rendered in the page. Notebook 7 is the current "classic" Notebook, built from JupyterLab's components."""

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from ports import free_port

REPOSITORY = Path(__file__).resolve().parents[1]
ARTIFACTS = REPOSITORY / "test-artifacts"
QUICKSTART = REPOSITORY / "tutorials" / "01_quickstart.ipynb"


@dataclass(frozen=True)
class Frontend:
    """What differs between the two apps: how the server starts, where the notebook opens, what covers it while loading."""

    module: str  # started as `python -m MODULE`; also names its log and screenshots
    notebook_path: str  # the URL path a notebook opens under; JupyterLab's names a workspace
    splash: str | None  # the loading screen that covers the page until the app has started, if any

    def page(self, server, notebook):
        """The URL of `notebook` (its served path) in this app. JupyterLab opens it in a workspace of its own: a
        server's workspace keeps the tabs an earlier page left open, which would open beside it."""
        workspace = re.sub(r"[^A-Za-z0-9_-]", "-", notebook)
        return f"{server.base}/{self.notebook_path.format(workspace=workspace)}/{notebook}?token={server.token}"


FRONTENDS = [Frontend("jupyterlab", "lab/workspaces/{workspace}/tree", "#jupyterlab-splash"),
             Frontend("notebook", "notebooks", None)]


@dataclass(frozen=True)
class Server:
    """A running frontend server: its base URL, its token, the folder it serves, its log file and its process id
    (its kernels are its children)."""

    base: str
    token: str
    root: Path
    log: Path
    pid: int

    def api(self, path, method="GET", body=None):
        request = urllib.request.Request(
            f"{self.base}/api/{path}?token={self.token}", method=method, headers={"Content-Type": "application/json"},
            data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def path(self, file):
        """The path the server serves `file` under (the notebook's URL path and its session's path)."""
        return file.relative_to(self.root).as_posix()

    def wait_until_connected(self, notebook, timeout=600):
        """Until the kernel of `notebook`'s session has a page connected to it and is idle. The page's own
        execution indicator says "idle" before any kernel has answered, and the app may replace the session's
        kernel with one of its own as it opens the notebook: only the server knows which kernel the page uses."""
        deadline = time.time() + timeout
        while True:
            kernels = [session["kernel"] for session in self.api("sessions") if session["path"] == notebook]
            if any(kernel["connections"] > 0 and kernel["execution_state"] == "idle" for kernel in kernels):
                return
            assert time.time() < deadline, f"no page connected to {notebook}'s kernel: {kernels}"
            time.sleep(0.5)


@contextlib.contextmanager
def server_running(frontend, directory, root):
    """The frontend's server on 127.0.0.1 with a one-off token, serving the folder `root`; its settings, runtime
    files and log go to `directory`. Yields the Server."""
    settings = directory / "settings"
    # every cell stays in the page (no windowing), and no news pop-up covers it. Both apps use JupyterLab's
    # plugins and settings layout; Notebook 7 with JupyterLab installed is served its settings by
    # JupyterLab's server extension, so the option goes to LabServerApp, the base class of both apps.
    # The widget manager saves live widgets' state with the notebook when asked to (off by default).
    for name, value in (("@jupyterlab/notebook-extension/tracker", {"windowingMode": "none"}),
                        ("@jupyterlab/apputils-extension/notification", {"fetchNews": "false"}),
                        ("@jupyter-widgets/jupyterlab-manager/plugin", {"saveState": True})):
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{name}.jupyterlab-settings").write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(16)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
                   "JUPYTER_RUNTIME_DIR": str(directory / "runtime"), "JUPYTER_CONFIG_DIR": str(directory / "config")}
    log = directory / f"{frontend.module}.log"
    # no port retries: a server that found its port taken ends, rather than serve on one the test does not know
    server = subprocess.Popen(
        [sys.executable, "-m", frontend.module, "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False", "--allow-root",
         f"--LabServerApp.user_settings_dir={settings}"],
        cwd=root, env=environment, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
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
    try:
        yield Server(base, token, root, log, server.pid)
    finally:
        # SIGTERM stops the server at once, kernels shut down; SIGINT without a terminal is a KeyboardInterrupt
        # that a second one (sent to skip a confirmation only asked on a terminal) could cut short mid-cleanup
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextlib.contextmanager
def notebooks_open(server, directory, notebooks, end_sessions=True):
    """`notebooks` (file name -> notebook) written to `directory`, each with its kernel session started through
    the REST API (so no kernel dialog can race the test); with `end_sessions` (a shared server, which outlives the
    test), the sessions and their kernels end with the block."""
    sessions = []
    try:
        for name, notebook in notebooks.items():
            nbformat.write(notebook, directory / name)
            path = server.path(directory / name)
            sessions.append(server.api("sessions", "POST", {"path": path, "name": name, "type": "notebook",
                                                            "kernel": {"name": "python3"}})["id"])
        yield
    finally:
        for session in sessions if end_sessions else ():
            server.api(f"sessions/{session}", "DELETE")


@contextlib.contextmanager
def serving(frontend, directory, notebooks):
    """The frontend's own server, serving `directory` with `notebooks` (file name -> notebook) open in it. Its
    sessions end with the server (a session whose kernel the test restarted answered its DELETE with a 500)."""
    with server_running(frontend, directory, directory) as server, \
            notebooks_open(server, directory, notebooks, end_sessions=False):
        yield server


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server per frontend for this module's tests that need no server of their own (each opens its own
    notebooks in its own folder, with their own kernels), serving the folder that holds every test's tmp_path.
    Started on first use; under pytest-xdist the tests of one frontend share a worker (their xdist_group)."""
    with contextlib.ExitStack() as stack:
        servers = {}

        def server_for(frontend):
            if frontend.module not in servers:
                directory = tmp_path_factory.mktemp(f"{frontend.module}-server")
                servers[frontend.module] = stack.enter_context(
                    server_running(frontend, directory, tmp_path_factory.getbasetemp()))
            return servers[frontend.module]

        yield server_for


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for this module's tests; each test opens its pages in a context of its own."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_for_tests(), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def chromium_for_tests():
    """Debian's chromium, which Playwright drives; the screenshots' folder made."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium package is needed (.ci/run installs it)"
    ARTIFACTS.mkdir(exist_ok=True)
    return chromium


def python3_notebook(cells):
    """A notebook of code cells with the sources `cells`, for the python3 kernel."""
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells],
                                    metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                             "language": "python"}})


@contextlib.contextmanager
def jupyterlab_page(browser, server, notebook, artifact):
    """A page of its own in `browser` showing `notebook` in JupyterLab, once the app has started; on a failure, its
    screenshot and the server's log go to test-artifacts/ARTIFACT-failure.*"""
    frontend = FRONTENDS[0]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        page.goto(frontend.page(server, notebook))
        page.locator(frontend.splash).wait_for(state="detached", timeout=120_000)
        page.locator(".jp-Notebook").wait_for(timeout=120_000)
        yield page
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"{artifact}-failure.png"))
        shutil.copy(server.log, ARTIFACTS / f"{artifact}-failure-server.log")
        raise
    finally:
        context.close()


@pytest.fixture
def frontend_url(request, shared_server, tmp_path):
    """A scratch copy of the quickstart served by the frontend; yields the frontend, the server and the notebook's file."""
    frontend = request.param
    notebook = nbformat.read(QUICKSTART, as_version=4)
    for cell in notebook.cells:  # a fresh notebook: every output the test sees comes from this run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    server = shared_server(frontend)
    with notebooks_open(server, tmp_path, {QUICKSTART.name: notebook}):
        yield frontend, server, tmp_path / QUICKSTART.name


def saved_with(path, text, what):
    """Until the file on disk holds `text` (the app saves asynchronously)."""
    deadline = time.time() + 60
    while text not in path.read_text():
        assert time.time() < deadline, f"the saved notebook has no {what}"
        time.sleep(0.5)


def save(page):
    page.locator(".jp-Notebook").click()
    page.keyboard.press("Control+s")


QUEUED_OR_RUN = re.compile(r"\[(\*|\d+)\]")  # a code cell's prompt once it is queued, running or run
RUN = re.compile(r"\[\d+\]")  # a code cell's prompt once it has run (its execution count)


def kernel_ready(page, server, notebook):
    """Until the server reports a page connected to the notebook's idle kernel and the page itself shows that kernel
    idle. Until then the page says "No Kernel": a cell run then waits for a kernel of its own, and a Run All made
    again meanwhile would send the notebook's cells twice, interleaved."""
    server.wait_until_connected(notebook)
    page.locator(".jp-Toolbar-kernelName").filter(has_not_text="No Kernel").wait_for(timeout=300_000)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=300_000)


def cells_seen(page):
    """Each code cell as the page shows it, one line each (prompt, first source line, output), for failure messages."""
    return "\n".join(page.locator(".jp-CodeCell").evaluate_all("""cells => cells.map(cell => {
        const text = selector => [...cell.querySelectorAll(selector)].map(node => node.innerText.trim()).join(' | ');
        return `${text('.jp-InputPrompt')} ${text('.jp-InputArea-editor').split('\\n')[0]} -> ${text('.jp-OutputArea-output').slice(0, 300)}`;
    })"""))


def each_cell_ran_once_in_order(page):
    """Every code cell has run, once and in order: execution counts 1, 2, ... in a fresh kernel."""
    counts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
    assert counts == [f"[{count}]:" for count in range(1, len(counts) + 1)], f"the cells ran:\n{cells_seen(page)}"


def run_all_cells(page, server, notebook):
    """Run > Run All Cells, the same menu in both apps, once the page shows its kernel idle (however long a loaded
    machine takes to start it). The menu is used again only while no code cell shows it queued or run (a click
    made while the page settles can be lost): a second Run All once cells were queued would run them twice."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    kernel_ready(page, server, notebook)
    queued = page.locator(".jp-CodeCell .jp-InputPrompt").filter(has_text=QUEUED_OR_RUN)
    select_kernel = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
    while queued.count() == 0:
        try:
            if select_kernel.is_visible():  # the app may ask which kernel to run while its session settles
                select_kernel.click()
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            queued.first.wait_for(timeout=30_000)
        except PlaywrightTimeout:
            if not select_kernel.is_visible():
                page.keyboard.press("Escape")  # close a menu left open (Escape would cancel the kernel's choice)


def last_cell_output(page):
    """The last code cell's output once it has run (its prompt shows its execution count)."""
    last = page.locator(".jp-CodeCell").last
    last.locator(".jp-InputPrompt").filter(has_text=RUN).wait_for(timeout=900_000)
    return [text.strip() for text in last.locator(".jp-OutputArea-output").all_inner_texts()]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the whole quickstart runs in the page; a loaded machine takes its time
@pytest.mark.parametrize("frontend_url", [pytest.param(frontend, id=frontend.module, marks=pytest.mark.xdist_group(frontend.module))
                                          for frontend in FRONTENDS], indirect=True)
def test_the_quickstart_dashboard_renders(frontend_url, browser):
    frontend, server, notebook_file = frontend_url
    url = frontend.page(server, server.path(notebook_file))
    with contextlib.closing(browser.new_context(viewport={"width": 1400, "height": 1000})) as context:
        page = context.new_page()
        console = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        try:
            page.goto(url)
            if frontend.splash:
                page.locator(frontend.splash).wait_for(state="detached", timeout=120_000)  # the app has started
            page.locator(".jp-Notebook").wait_for(timeout=120_000)
            run_all_cells(page, server, server.path(notebook_file))

            dashboard = page.locator(".fedless-dashboard").first  # the first run's live widgets, while it trains
            dashboard.wait_for(timeout=300_000)
            dashboard.locator(".fedless-progress").get_by_text("Round").wait_for()
            dashboard.locator(".fedless-accuracy svg").first.wait_for()
            page.screenshot(path=str(ARTIFACTS / f"{frontend.module}-dashboard.png"))
            save(page)  # mid-run: the live widgets' state goes into the notebook's metadata
            saved_with(notebook_file, "fedless-dashboard", "widget state of the live dashboard")
            assert "application/vnd.jupyter.widget-state+json" in notebook_file.read_text()

            # the last cell awaits the background run; once it has run, every cell has. %fedless_stop ends the run
            # after the round in progress: round 1, or a later one when round 1 finished before the stop's cell ran
            # (a loaded machine runs cells slowly)
            result = last_cell_output(page)
            assert len(result) == 1 and re.match(r"RunResult: run .+ \(\S+\) stopped: ([1-9]|[1-4]\d)/50 rounds, final test "
                                                 r"accuracy [\d.]+\n", result[0]), f"the cells ran:\n{cells_seen(page)}"
            assert ".rounds_frame()" in result[0] and ".model()" in result[0], "the result's view says what to call on it"
            each_cell_ran_once_in_order(page)
            record = page.locator(".fedless-record").first  # the widgets gave way to the run's record
            record.scroll_into_view_if_needed()
            assert "5/5 rounds" in record.inner_text() and "25 invocations" in record.inner_text()
            assert "History: fedless_history.db; its rounds: %fedless_history experiment-" in record.inner_text()
            widths = record.locator("img").evaluate_all("images => images.map(image => image.naturalWidth)")
            assert len(widths) == 2 and min(widths) > 0, "the run's figure and its partition's figure render"
            # the background run's cell finished long before its run: its record still replaced its widgets
            background = page.locator(".fedless-record").nth(1)
            background.wait_for(timeout=120_000)
            assert "stopped" in background.inner_text()
            page.screenshot(path=str(ARTIFACTS / f"{frontend.module}-record.png"))

            save(page)  # save, then open the saved notebook afresh
            saved_with(notebook_file, "stopped: ", "record of the background run")
            page.reload()
            page.locator(".jp-Notebook").wait_for(timeout=120_000)
            reopened = page.locator(".fedless-record")
            reopened.nth(1).wait_for(timeout=120_000)
            assert reopened.count() == 2
            assert "final test accuracy" in reopened.first.inner_text() and "stopped" in reopened.nth(1).inner_text()
            widths = reopened.first.locator("img").evaluate_all("images => images.map(image => image.naturalWidth)")
            assert len(widths) == 2 and min(widths) > 0
            (ARTIFACTS / f"{frontend.module}-console.log").write_text("\n".join(console))
            # an extension built for a newer JupyterLab than the one running (jupyterlab_widgets 3.0.17 wants ^4.6.2)
            mismatches = [line for line in console if re.search(r"Unsatisfied version|No satisfying version", line)]
            assert mismatches == [], "\n".join(mismatches[:3])
            # the page's own errors (a widget that fails to render logs one); an empty notebook logs none
            errors = [line for line in console if line.startswith("error:")]
            assert errors == [], "\n".join(errors[:3])
            assert page.get_by_text(re.compile("Error displaying widget|Loading widget")).count() == 0
        except Exception:
            page.screenshot(path=str(ARTIFACTS / f"{frontend.module}-failure.png"))
            (ARTIFACTS / f"{frontend.module}-failure-console.log").write_text("\n".join(console))
            (ARTIFACTS / f"{frontend.module}-failure-cells.txt").write_text(cells_seen(page))
            shutil.copy(server.log, ARTIFACTS / f"{frontend.module}-failure-server.log")
            raise


def run_cell(page, server, notebook, index):
    """Run the notebook's code cell `index` (Shift+Enter in it) once the page shows its kernel idle; like
    run_all_cells, again only while its prompt does not show it queued or run (a key press can be lost)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    kernel_ready(page, server, notebook)
    cell = page.locator(".jp-CodeCell").nth(index)
    started = cell.locator(".jp-InputPrompt").filter(has_text=QUEUED_OR_RUN)
    while not started.is_visible():
        try:
            cell.locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            started.wait_for(timeout=30_000)
        except PlaywrightTimeout:
            page.keyboard.press("Escape")


CLASSROOM_NOTEBOOKS = {
    "teacher.ipynb": ["%load_ext fedless_nb",
                      "classroom = %fedless_classroom open --host 127.0.0.1 --port 0\n"
                      "import json, pathlib\n"
                      "_ = pathlib.Path('classroom.json').write_text(json.dumps({'url': classroom.url, 'code': classroom.code}))"],
    "student.ipynb": ["%load_ext fedless_nb\npad = %fedless_draw",
                      "import json, pathlib\nroom = json.loads(pathlib.Path('classroom.json').read_text())\n"
                      "student = get_ipython().run_line_magic(\n"
                      "    'fedless_join', f\"{room['url']} {room['code']} --name alice --host 127.0.0.1 --data pad\")"],
}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.xdist_group("notebook")  # the quickstart's notebook case shares its server
def test_the_classroom_roster_and_the_drawing_pad_render(shared_server, browser, tmp_path):
    """The teacher's roster in one page and a student's drawing pad in another (Notebook 7, one page per
    notebook, as a room would open them): the student draws an example, joins with it, and the teacher's
    roster shows them with their own drawings."""
    frontend = FRONTENDS[1]
    notebooks = {name: python3_notebook(cells) for name, cells in CLASSROOM_NOTEBOOKS.items()}
    server = shared_server(frontend)
    teacher_path, student_path = (server.path(tmp_path / name) for name in ("teacher.ipynb", "student.ipynb"))
    with notebooks_open(server, tmp_path, notebooks), contextlib.ExitStack() as contexts:
        pages = {}
        try:
            for name in notebooks:
                context = contexts.enter_context(contextlib.closing(browser.new_context(viewport={"width": 1200, "height": 1000})))
                pages[name] = context.new_page()
                pages[name].goto(frontend.page(server, server.path(tmp_path / name)))
                pages[name].locator(".jp-Notebook").wait_for(timeout=120_000)
            teacher, student = pages["teacher.ipynb"], pages["student.ipynb"]

            run_all_cells(teacher, server, teacher_path)
            roster = teacher.locator(".fedless-roster")
            roster.get_by_text("No student has joined yet.").wait_for(timeout=300_000)
            join_command = teacher.locator(".fedless-join-command").inner_text()
            assert re.fullmatch(r"%load_ext fedless_nb\n%fedless_join http://127\.0\.0\.1:\d+ [A-Z2-9]{6} --name YOUR_NAME",
                                join_command.strip()), join_command

            run_cell(student, server, student_path, 0)
            pad = student.locator(".fedless-drawing")
            pad.wait_for(timeout=300_000)
            cells = pad.locator(".fedless-cell")
            assert cells.count() == 64
            for index in (3, 11, 19, 27, 35, 43, 51, 59):  # a vertical stroke: a one
                cells.nth(index).click()
            pad.locator("select").select_option("1")
            student.screenshot(path=str(ARTIFACTS / "classroom-student-drawing.png"))
            pad.get_by_role("button", name="Add example").click()
            pad.get_by_text("1 examples drawn (1: 1)").wait_for(timeout=60_000)

            run_cell(student, server, student_path, 1)
            student.locator(".fedless-calls").get_by_text("Waiting for the teacher's first round").wait_for(timeout=300_000)
            alice = roster.locator("tr").filter(has_text="alice")
            alice.wait_for(timeout=60_000)
            assert "joined" in alice.inner_text() and "own examples" in alice.inner_text()
            assert "127.0.0.1" in alice.inner_text()  # the address alice joined from, with how many names it holds
            assert "names from it" in roster.locator("th").all_inner_texts()
            teacher.screenshot(path=str(ARTIFACTS / "classroom-teacher-roster.png"))
        except Exception:
            for name, page in pages.items():
                page.screenshot(path=str(ARTIFACTS / f"classroom-{name}-failure.png"))
            raise


TINY = "--clients 4 --clients-per-round 2 --workers 2 --set model.options.hidden_units=[8]"
STOPPED_LINE = re.compile(r"UsageError: Run (\S+) stopped after round (\d+); the history keeps every finished round\. "
                          r"Continue it with: (%fedless_resume \S+)")
# the interrupt, sent once the dashboard shows round 1 done, stops the run after round 1 or 2 (3 on a loaded machine):
# 10 rounds leave room, and the resume trains the rest to its last round
INTERRUPTED_ROUNDS = 10
INTERRUPTED_NOTEBOOK = ["%load_ext fedless_nb", f"run = %fedless_train {TINY} --rounds {INTERRUPTED_ROUNDS}",
                        "",  # the user pastes the resume line here
                        "%fedless_pool --end", f"run = %fedless_train {TINY} --rounds 40"]


def kernel_menu(page, item):
    """Kernel > `item` in JupyterLab's menu bar, as a user stops or restarts a kernel."""
    page.get_by_role("menuitem", name="Kernel", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(rf"^{re.escape(item)}")).click()  # its name ends in the shortcut


def rounds_done(page, cell, rounds):
    """Until the live dashboard in code cell `cell` shows a finished round of its `rounds`."""
    title = page.locator(".jp-CodeCell").nth(cell).locator(".fedless-dashboard")
    title.get_by_text(re.compile(rf"running, [1-9]\d*/{rounds} rounds")).wait_for(timeout=300_000)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_interrupt_and_restart_from_the_kernel_menu_keep_the_history_and_leave_no_worker(exec_workers, browser, tmp_path):
    """JupyterLab's Kernel > Interrupt Kernel mid-run: one line naming the resume magic, the finished rounds in the
    history, and the pasted line continues the run to its last round. Kernel > Restart Kernel mid-run: every worker
    ends with the old kernel, the history still reads (the run is `interrupted`)."""
    import psutil

    from fedless_nb.records.history import History

    notebook = python3_notebook(INTERRUPTED_NOTEBOOK)
    # a server of its own, started without the suite's zygote (exec_workers): its kernel's workers are its children
    with serving(FRONTENDS[0], tmp_path, {"interrupted.ipynb": notebook}) as server, \
            jupyterlab_page(browser, server, "interrupted.ipynb", "jupyterlab-interrupted") as page:
        def workers():
            (kernel,) = psutil.Process(server.pid).children()
            return kernel.children(recursive=True)

        run_cell(page, server, "interrupted.ipynb", 0)
        run_cell(page, server, "interrupted.ipynb", 1)
        rounds_done(page, 1, INTERRUPTED_ROUNDS)
        kernel_menu(page, "Interrupt Kernel")
        outputs = page.locator(".jp-CodeCell").nth(1).locator(".jp-OutputArea-output")
        stopped = outputs.and_(page.locator('[data-mime-type="application/vnd.jupyter.stderr"]')).filter(
            has_text="stopped after round")
        stopped.wait_for(timeout=300_000)
        line = stopped.inner_text().strip()
        match = STOPPED_LINE.fullmatch(line)
        assert match, f"one line, no traceback: {line!r}"
        run_id, rounds, resume = match.group(1), int(match.group(2)), match.group(3)
        record = outputs.and_(page.locator('[data-mime-type="text/html"]')).filter(has_text="stopped after round")
        assert f"Run {run_id} stopped after round {rounds};" in record.inner_text()  # the record says it too
        # the calls the interrupt cut off are no failures (they were counted, and drawn red, as failures)
        assert " 0 failures," in record.inner_text(), record.inner_text()
        history = History(tmp_path / "fedless_history.db")
        run = history.run(run_id)
        assert run["status"] == "stopped" and run["rounds_completed"] == rounds < INTERRUPTED_ROUNDS
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-interrupted.png"))

        page.locator(".jp-CodeCell").nth(2).locator(".jp-InputArea-editor").click()
        page.keyboard.type(f"resumed = {resume}")
        run_cell(page, server, "interrupted.ipynb", 2)
        record = page.locator(".jp-CodeCell").nth(2).locator(".fedless-record")
        record.wait_for(timeout=600_000)
        assert f"{INTERRUPTED_ROUNDS}/{INTERRUPTED_ROUNDS} rounds" in record.inner_text()
        assert [row["round"] for row in history.rounds(run_id)] == list(range(1, INTERRUPTED_ROUNDS + 1)), "each round once"
        run_cell(page, server, "interrupted.ipynb", 3)
        page.locator(".jp-CodeCell").nth(3).get_by_text(re.compile(r"Stopped \d+ warm workers?")).wait_for(timeout=120_000)
        assert workers() == [], "every worker the interrupted and the resumed run used was the pool's"

        run_cell(page, server, "interrupted.ipynb", 4)
        rounds_done(page, 4, 40)
        training = workers()
        assert training, "the run's local workers are the kernel's children"
        kernel_menu(page, "Restart Kernel…")
        page.locator(".jp-Dialog .jp-mod-accept").click()  # "Restart" in the dialog that asks
        _, alive = psutil.wait_procs(training, timeout=120)
        assert not alive, f"workers outlived their kernel: {[worker.pid for worker in alive]}"
        server.wait_until_connected("interrupted.ipynb")
        (cut_off,) = [run for run in History(tmp_path / "fedless_history.db").runs() if run["run_id"] != run_id]
        # the server interrupts a kernel before it shuts it down: the run records its end ("stopped") if the
        # kernel lives long enough, else the history finds its process gone ("interrupted"); both resume
        assert cut_off["status"] in ("stopped", "interrupted") and 1 <= cut_off["rounds_completed"] < 40, cut_off
        assert history.run(run_id)["rounds_completed"] == INTERRUPTED_ROUNDS
        with sqlite3.connect(tmp_path / "fedless_history.db") as database:
            assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)


STOP_BUTTON_NOTEBOOK = ["%load_ext fedless_nb", f"run = %fedless_train {TINY} --rounds 40 --background",
                        "result = await run\nresult"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.xdist_group("jupyterlab")  # the quickstart's JupyterLab case shares its server
def test_the_dashboards_stop_button_stops_a_background_run_in_jupyterlab(shared_server, browser, tmp_path):
    """A click on the live dashboard's Stop button, made while another cell awaits the run, ends the run after its
    current round: the awaiting cell gets the stopped run, the widgets give way to its record, the history keeps it."""
    from fedless_nb.records.history import History

    server = shared_server(FRONTENDS[0])
    notebook = server.path(tmp_path / "stop.ipynb")
    with notebooks_open(server, tmp_path, {"stop.ipynb": python3_notebook(STOP_BUTTON_NOTEBOOK)}), \
            jupyterlab_page(browser, server, notebook, "jupyterlab-stop-button") as page:
        run_cell(page, server, notebook, 0)
        run_cell(page, server, notebook, 1)
        rounds_done(page, 1, 40)
        run_cell(page, server, notebook, 2)  # the kernel reads the click while this cell awaits the run
        stop = page.locator(".jp-CodeCell").nth(1).get_by_role("button", name="Stop after this round")
        stop.scroll_into_view_if_needed()
        # the timeline's rows are named by their clients' numbers (they read 0, 1, ... by row, as the x axis's seconds)
        ticks = page.locator(".jp-CodeCell").nth(1).locator(".fedless-timeline .tick text").all_text_contents()
        rows = [tick for tick in ticks if re.fullmatch(r"\d{4}", tick)]
        assert len(rows) >= 2 and set(rows) <= {"0000", "0001", "0002", "0003"}, ticks
        overlap = page.locator(".jp-CodeCell").nth(1).locator(".fedless-timeline").evaluate("""figure => {
            const label = [...figure.querySelectorAll('text.axislabel')].find(text => text.textContent === 'client');
            const rows = [...figure.querySelectorAll('.tick text')].filter(text => /^\\d{4}$/.test(text.textContent));
            return label.getBoundingClientRect().right - Math.min(...rows.map(row => row.getBoundingClientRect().left));
        }""")
        assert overlap < 0, f"the axis label 'client' runs {overlap:.0f}px into the rows' numbers"
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-stop-button-live.png"))
        stop.click()
        page.locator(".jp-CodeCell").nth(2).get_by_text(re.compile(r"RunResult: run .+ stopped: \d+/40 rounds")).wait_for(
            timeout=300_000)
        record = page.locator(".jp-CodeCell").nth(1).locator(".fedless-record")
        record.wait_for(timeout=120_000)
        assert "stopped" in record.inner_text()
        (run,) = History(tmp_path / "fedless_history.db").runs()
        assert run["status"] == "stopped" and 1 <= run["rounds_completed"] < 40
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-stop-button.png"))
