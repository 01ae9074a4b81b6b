"""The KPI report renders in headless Chromium with no console errors and no network requests.

Skips (with the reason) where Chromium is not installed: apt-get install chromium.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.xdist_group("browser")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium's own background calls (clock sync, components), not the page's
BROWSER_SERVICE = re.compile(rb"^[A-Z]+ (https?://)?[^/ :]*(google\.com|googleapis\.com|gvt1\.com|gstatic\.com)[/: ]")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_offline_without_console_errors(tmp_path, monkeypatch):
    from tracking.tracker import Tracker

    monkeypatch.setenv("CPIKAN_MLRUNS", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for rel in (1e-3, 2e-4):
        with Tracker("studies/tiling_overlap_sweep") as run:
            run.log_results({"rel_l2": rel, "image_mpix": 4.2, "seam_rel": rel})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "kpi.html"
    res = subprocess.run([sys.executable, "-m", "reports.kpi", "--out", str(out)], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    dom, console, requests = render(out)
    assert "cPIKAN Lab" in dom and "plotly" in dom  # rendered
    assert console == [], console
    assert requests == [], requests


def render(page: Path) -> tuple[str, list[str], list[bytes]]:
    """(DOM, console messages, requests) of a page loaded in headless Chromium, every
    network request sent to a local proxy that only records it."""
    seen: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    seen.append(conn.recv(4096))
                except OSError:
                    seen.append(b"?")

    t = threading.Thread(target=record, daemon=True)
    t.start()
    port = server.getsockname()[1]
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={page.parent / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
           f"--proxy-server=http://127.0.0.1:{port}", "--proxy-bypass-list=<-loopback>",
           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        stop.set()
        t.join()
        server.close()
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    return r.stdout, console, [q for q in seen if not BROWSER_SERVICE.search(q)]


def test_the_check_itself_catches_errors_and_requests(tmp_path):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body>x<script src="https://cdn.example.org/a.js"></script>'
                   '<script>console.error("boom")</script></body></html>')
    _, console, requests = render(bad)
    assert any("boom" in c for c in console) and requests


AXES_CHECK = """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => {
  const ys = gd.data.flatMap(t => (t.y || []).filter(v => typeof v === 'number' && isFinite(v)));
  const ax = gd._fullLayout.yaxis;
  return {title: (gd._fullLayout.title || {}).text || '', type: ax.type, range: ax.range, ys: ys};
})"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_every_kpi_has_a_value_or_a_command_and_axes_fit_the_data(tmp_path, monkeypatch):
    import math

    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    from tracking.tracker import Tracker

    monkeypatch.setenv("CPIKAN_MLRUNS", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # values far from their targets: a target line must not stretch the axis to it
    for i, rel in enumerate((3e-2, 2e-2, 9e-3)):
        with Tracker("studies/tiling_overlap_sweep") as run:
            run.log_results({"rel_l2": rel, "image_mpix": 4.2 + i, "seam_rel": rel / 3})
    out = tmp_path / "kpi.html"
    res = subprocess.run([sys.executable, "-m", "reports.kpi", "--out", str(out)], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(out.as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length > 0")
        rows = page.eval_on_selector_all("table tr", "rs => rs.slice(1).map(r => r.cells[2].innerText)")
        axes = page.evaluate(AXES_CHECK)
        browser.close()
    from reports.kpi import load_kpis

    assert len(rows) == len(load_kpis()) and errors == [], (rows, errors)
    for cell in rows:
        assert re.fullmatch(r"[-+0-9.e]+", cell) or re.search(r"no data: run \S", cell), cell
    checked = 0
    for ax in axes:
        ys = ax["ys"]
        if len(ys) < 2 or min(ys) == max(ys) or ax["type"] not in ("linear", "log"):
            continue
        lo, hi = ax["range"]
        if ax["type"] == "log":
            assert hi - lo <= math.log10(max(ys) / min(ys)) + 1, ax  # within a decade of the data
        else:
            assert hi - lo <= 10 * (max(ys) - min(ys)), ax
        checked += 1
    assert checked >= 2


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_sensor_map_opens_offline_and_marks_each_sensor_where_sensors_csv_says(tmp_path):
    import csv

    import meshio

    from studies import place_sensors
    from tests.test_place_sensors import _mesh, _vortex

    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    pts, tri = _mesh()
    (tmp_path / "cfd").mkdir()
    for i in range(12):
        meshio.write(tmp_path / "cfd" / f"f{i}.vtu", meshio.Mesh(pts, [("triangle", tri)], point_data=_vortex(pts, i / 11)))
    assert place_sensors.main([str(tmp_path / "cfd"), "--k", "7", "--out", str(tmp_path / "s"), "--no-track"]) == 0
    page_file = tmp_path / "s" / "sensors.html"
    _, console, requests = render(page_file)
    assert console == [] and requests == [], (console, requests)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(page_file.as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length > 0")
        shown = page.evaluate("() => { const t = document.querySelector('.js-plotly-plot').data.at(-1);"
                              " return {x: Array.from(t.x), y: Array.from(t.y), text: t.text}; }")
        browser.close()
    with (tmp_path / "s" / "sensors.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert shown["text"] == [r["sensor"] for r in rows] == [str(i) for i in range(1, 8)]
    assert np.allclose(shown["x"], [float(r["x"]) for r in rows]) and np.allclose(shown["y"], [float(r["y"]) for r in rows])
