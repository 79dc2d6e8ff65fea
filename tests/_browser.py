"""Driving `riskcl serve`'s page in Debian's headless Chromium (no browser download at run time)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


@contextlib.contextmanager
def chromium_page(width: int = 1100, height: int = 760):
    """A page of Debian's headless Chromium (the test skips, with the reason, where there is none)."""
    import pytest

    if CHROMIUM is None:
        pytest.skip("no Chromium installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"riskcl serve exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url + "health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"riskcl serve did not answer at {url}")


def screenshot_page(run: Path, image: Path, shot: Path, bad: Path | None = None) -> dict[str, str]:
    """Start `riskcl serve` on a free port, upload ``image`` through the page in headless Chromium, wait for the
    decision and the overlay, save a screenshot; then (``bad``) upload a file that is no image. Returns what the
    page shows. The server is stopped by its PID."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen([sys.executable, "-m", "riskcl", "serve", str(run), "--port", str(port), "--log",
                             str(shot.with_suffix(".decisions.jsonl"))],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_up(url, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(url)
            page.wait_for_function("document.getElementById('op').textContent.length > 0")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#result:not([hidden])")
            page.wait_for_function("document.getElementById('overlay').complete && "
                                   "document.getElementById('overlay').naturalWidth > 0")
            shown = {k: page.evaluate(f"(document.getElementById('{k}') || {{innerText: ''}}).innerText")
                     for k in ("decision", "predicted", "p_malignant", "op", "filename", "notice", "summary")}
            shown["preview"] = page.evaluate("document.getElementById('preview').naturalWidth > 0")
            shown["probabilities_hidden"] = page.evaluate("document.getElementById('probabilities').hidden")
            shown["overlay_title"] = page.inner_text("#overlay-title")
            # the clinical fields (a fusion model): each select's options in order, and whether any label
            # overlaps the field before it on its line
            shown["meta_options"] = page.evaluate(
                "[...document.querySelectorAll('#meta-fields select')].map(s => [...s.options].map(o => o.text))")
            shown["meta_overlap"] = page.evaluate(
                "(() => { const els = [...document.querySelectorAll('#meta-fields label')];"
                " return els.some((el, i) => i > 0 && (() => { const a = els[i - 1].getBoundingClientRect(),"
                " b = el.getBoundingClientRect(); return Math.abs(a.top - b.top) < 2 && b.left < a.right + 8; })());"
                " })()")
            shown["overlay_alt"] = page.evaluate("document.getElementById('overlay').alt")
            page.screenshot(path=str(shot), full_page=True)
            if bad is not None:  # a failed upload clears the previous result: no old overlay beside a new file
                page.set_input_files("#file", str(bad))
                page.wait_for_function("document.getElementById('error').textContent.length > 0")
                shown["bad_error"] = page.inner_text("#error")
                shown["bad_filename"] = page.inner_text("#filename")
                shown["bad_result_hidden"] = page.evaluate("document.getElementById('result').hidden")
                shown["bad_overlay_src"] = page.evaluate("document.getElementById('overlay').getAttribute('src')")
            browser.close()
        return shown
    finally:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
