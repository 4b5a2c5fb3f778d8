"""The live sliders in a real browser: JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright.

`make test-browser` (called by `.ci/run`) installs Chromium (Debian's package, since browser
downloads are not possible here) and the `playwright` package, then runs this file; `make test`
leaves it out. The test copies notebook 1 into a temporary folder, opens it in JupyterLab, runs every
cell, moves the K slider of the live controls with the keyboard (as a student would with the mouse:
the same noUiSlider change event) and asserts that

- every cell ran without an error output,
- the live figure under the sliders is replaced by a different picture,
- there is exactly one figure in that cell (the live one: no static copy above it),
- the page logged no error and raised no exception.

Screenshots before and after the move go to `out/browser/` (what the closing notes cite).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "01_decreasing_likelihood.ipynb"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "out" / "browser"
# Chromium's own background traffic is refused on this closed network (and slows every start)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# JupyterLab's own network calls (news, update checks) are off: nothing outside 127.0.0.1 is reached.
LAB_ARGS = [
    "--no-browser",
    "--ServerApp.ip=127.0.0.1",
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    "--LabApp.expose_app_in_browser=True",
    "--LabApp.extension_manager=readonly",  # no PyPI queries from the extension manager
    *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),  # CI runs as root
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium: expected Debian's browser at {CHROMIUM}; `make test-browser` installs it")
    work = tmp_path / "tutorials"
    work.mkdir()
    shutil.copy(ROOT / "tutorials" / NOTEBOOK, work / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", *LAB_ARGS, f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                log.close()
                raise RuntimeError(
                    f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}"
                ) from None
            time.sleep(0.5)
    try:
        yield f"{base}/lab/tree/{NOTEBOOK}?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


RUN_ALL = """async () => {
    const app = window.jupyterapp;
    await app.commands.execute('notebook:run-all-cells');
}"""

# (cells still running or queued, error outputs) of the current notebook
STATE = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cells = panel.content.widgets;
    let busy = 0, errors = [];
    cells.forEach((cell, i) => {
        if (cell.model.type !== 'code') return;
        const prompt = cell.node.querySelector('.jp-InputPrompt');
        if (prompt && prompt.textContent.includes('*')) busy += 1;
        for (const out of cell.model.outputs.toJSON()) {
            if (out.output_type === 'error') errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
        }
    });
    const status = panel.sessionContext.session?.kernel?.status;
    return {busy, errors, status, n: cells.length};
}"""


def _live_box(page):
    """The cell of the live controls, and the <img> of its live figure."""
    cell = page.locator(".jp-CodeCell", has=page.locator(".widget-slider")).last
    img = cell.locator(".widget-output img, .jupyter-widgets-output-area img").first
    return cell, img


def test_moving_a_slider_redraws_the_live_figure_without_errors(lab):
    messages, page_errors = [], []
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: messages.append((m.type, m.text)))
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.goto(lab, wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_function(
            "() => window.jupyterapp && window.jupyterapp.shell.currentWidget", timeout=120_000
        )
        page.wait_for_function(
            "() => window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status === 'idle'",
            timeout=120_000,
        )
        page.evaluate(RUN_ALL)
        deadline = time.time() + 300
        while True:
            state = page.evaluate(STATE)
            if state["busy"] == 0 and state["status"] == "idle":
                break
            assert time.time() < deadline, f"the notebook did not finish running in 300 s: {state}"
            time.sleep(1)
        assert state["errors"] == [], state["errors"]

        cell, img = _live_box(page)
        img.wait_for(timeout=60_000)
        cell.scroll_into_view_if_needed()
        before = img.get_attribute("src")
        assert before and before.startswith("data:image/png"), before
        # one figure in the cell: the live one (no static copy above the sliders)
        assert cell.locator(".jp-OutputArea img").count() == 1
        SHOTS.mkdir(parents=True, exist_ok=True)
        cell.screenshot(path=str(SHOTS / "sliders_before.png"))

        # K (per tuple): 4 -> 5 with the keyboard on the slider's handle
        k_slider = cell.locator(".widget-slider", has_text="K (per tuple)")
        handle = k_slider.locator(".noUi-handle")
        handle.focus()
        handle.press("ArrowRight")
        page.wait_for_function(
            """([sel, old]) => {
                const img = document.querySelectorAll(sel);
                return [...img].some(i => i.src.startsWith('data:image/png') && i.src !== old);
            }""",
            arg=[".widget-output img, .jupyter-widgets-output-area img", before],
            timeout=120_000,
        )
        assert "5" in k_slider.locator(".widget-readout").inner_text()
        _, img = _live_box(page)
        after = img.get_attribute("src")
        assert after != before and after.startswith("data:image/png")
        assert cell.locator(".jp-OutputArea img").count() == 1
        cell.screenshot(path=str(SHOTS / "sliders_after.png"))
        state = page.evaluate(STATE)
        assert state["errors"] == [], state["errors"]
        browser.close()

    errors = [text for kind, text in messages if kind == "error"]
    assert not page_errors, page_errors
    assert not errors, errors
