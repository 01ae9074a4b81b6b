"""The MLflow UI and optuna-dashboard as a user meets them, in a real browser (Playwright
driving Debian's Chromium), against a store filled by a small run of the demo's study.

Skips, with the reason, where Chromium or Playwright is missing (.ci/run installs both).
Screenshots go to build/test-artifacts/ui/ (CPIKAN_TEST_ARTIFACTS to move them).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(os.environ.get("CPIKAN_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts")) / "ui"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update"]

pytestmark = [
    pytest.mark.xdist_group("browser"),  # one Chromium at a time: page loads stay fast
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(pytest.importorskip("playwright", reason="Playwright is not installed (pip install playwright)")
                       is None, reason="Playwright is not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cmd: list[str], url: str, env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    # a session of its own: the server's own children (uvicorn workers) are stopped with it
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 — the server's life, not a block's
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if log else out,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode}") from None
            time.sleep(0.5)
    _stop(proc)
    raise RuntimeError(f"{url} did not answer within 120 s")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store filled the way the demo fills it: the tiling overlap sweep (small), by two workers."""
    root = tmp_path_factory.mktemp("ui") / "mlruns"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(CPIKAN_MLRUNS=str(root), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "studies.run", "tiling_overlap_sweep", "--trials", "2",
                          "--workers", "2", "--set", "image_size=640x640", "--set", "pretrain_steps=5"],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # the short pretrain is made once, before the workers start, and is every trial's network
    assert out.stderr.count("training a short one") == 1, out.stderr
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CPIKAN_MLRUNS", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        from tracking import store as tracking_store

        c = tracking_store.client()
        pre = c.search_runs([c.get_experiment_by_name("studies/psi_pretrain").experiment_id])
        exp = c.get_experiment_by_name("studies/tiling_overlap_sweep").experiment_id
        trials = [r for r in c.search_runs([exp]) if "optuna.trial_number" in r.data.tags]
    assert len(pre) == 1 and len(trials) == 2
    assert {r.data.params["model_run_id"] for r in trials} == {pre[0].info.run_id}
    return root, env


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


def test_mlflow_ui_shows_the_study_as_training_runs(store, browser, tmp_path):
    root, env = store
    port = _free_port()
    ui = subprocess.run([sys.executable, "-c", "from tracking import ui; print(ui.experiment_links('BASE'))"],
                        env=env, cwd=ROOT, capture_output=True, text=True)
    link = dict(eval(ui.stdout))["studies/tiling_overlap_sweep"].replace("BASE", f"http://127.0.0.1:{port}")
    proc = _serve([sys.executable, "-m", "tracking.ui", "--port", str(port)], f"http://127.0.0.1:{port}/health", env,
                  log=tmp_path / "ui.out")
    try:
        page, errors = _page(browser)
        # the experiment, by the link `make ui` prints: the training view, runs first
        page.goto(link)
        page.get_by_text("tiling_overlap_sweep", exact=True).first.wait_for(timeout=90000)
        body = page.inner_text("body")
        assert "Detect Issues" not in body and "Token Usage" not in body, body[:1500]  # not the GenAI view
        assert 0 <= body.find("Runs") < body.find("Traces"), body[:1500]  # runs first
        # trials nested under the study's parent run: expand it
        parent = page.locator("[role=row]").filter(has_text="tiling_overlap_sweep").first
        parent.locator("button[data-component-id*='runnamecellrenderer']").first.click(timeout=90000)
        page.get_by_text("trial 0", exact=True).wait_for(timeout=90000)
        page.screenshot(path=str(SHOTS / "mlflow_runs.png"))
        parent_href = parent.locator("a[href*='/runs/']").first.get_attribute("href")
        # a trial's page: the git commit in Source
        page.get_by_text("trial 0", exact=True).click()
        page.get_by_text("About this run").wait_for(timeout=90000)
        commit = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        about = page.inner_text("body")
        assert "studies.run" in about and commit in about, about[:2000]
        page.screenshot(path=str(SHOTS / "mlflow_trial.png"))
        # the parent run (by the link its description and the report use): description, plots
        page.goto(f"{link.split('#')[0]}{parent_href}?workflowType=machine_learning")
        page.get_by_text("About this run").wait_for(timeout=90000)
        assert "Detect Issues" not in page.inner_text("body")
        body = page.inner_text("body")
        assert "Objectives" in body and "rel_l2 (minimize)" in body, body[:2000]
        page.screenshot(path=str(SHOTS / "mlflow_parent.png"))
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("study", exact=True).first.click()
        page.get_by_text("objectives.html").first.click()
        page.frame_locator("iframe").first.locator(".plotly").first.wait_for(timeout=90000)
        page.screenshot(path=str(SHOTS / "mlflow_study_plot.png"))
        assert not errors, errors
    finally:
        proc.send_signal(signal.SIGTERM)  # `kill PID` of `make ui`, not of its group: the server must go too
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                _stop(proc)
    assert code == 0
    with socket.socket() as s:  # nothing listens on the port any more (it once stayed held)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    # quiet: the links and where the server's log is, not uvicorn's and MLflow's lines
    out = (tmp_path / "ui.out").read_text()
    assert "studies/tiling_overlap_sweep" in out and "server log: " in out, out
    assert "INFO" not in out and "Warning" not in out and len(out.strip().splitlines()) <= 12, out


def test_optuna_dashboard_shows_the_study(store, browser, tmp_path):
    root, env = store
    port = _free_port()
    proc = _serve([sys.executable, "-m", "studies.dashboard", "--port", str(port)],
                  f"http://127.0.0.1:{port}/api/studies", env, log=tmp_path / "dashboard.log")
    try:
        page, errors = _page(browser)
        page.goto(f"http://127.0.0.1:{port}/dashboard/")
        page.get_by_text("tiling_overlap_sweep").first.click()
        page.wait_for_load_state("networkidle")
        page.get_by_text("Pareto Front", exact=False).first.wait_for(timeout=90000)
        page.screenshot(path=str(SHOTS / "optuna_dashboard.png"))
        body = page.inner_text("body")
        assert "tiling_overlap_sweep" in body
        assert not errors, errors
    finally:
        _stop(proc)
    # quiet: its one line, not the server's banner nor a line per request (those with -v)
    log = (tmp_path / "dashboard.log").read_text()
    assert log.startswith("optuna-dashboard on http://127.0.0.1:") and len(log.strip().splitlines()) == 1, log
