"""The documentation site: it builds strictly, its tutorial pages run, and the built site renders.

The ``bash`` and ``python`` blocks of the tutorial pages run, in page order, in one working folder (the folder a
reader would work in, the repository's ``configs/`` beside it), so a page cannot drift from the code; ``sh``
blocks (the real data sets, long-running services, a cluster or a GPU) are checked for syntax with ``bash -n``;
``yaml`` blocks must parse.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The tutorial pages whose bash and python blocks run, in the order a reader takes them (each may use what the
# ones before it made: getting-started's runs/first and demo_images).
TUTORIALS = ["getting-started.md", "data.md", "operating-point.md", "costs.md", "deploy.md", "monitoring.md",
             "dicom.md"]

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


def fenced(text: str) -> list[tuple[str, str]]:
    """The page's fenced code blocks in order, as (language, code)."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def blocks(page: str, lang: str) -> list[str]:
    return [code for language, code in fenced((DOCS / page).read_text()) if language == lang]


def test_the_fence_reader_on_a_hand_made_page():
    page = "# t\n\n```bash\necho 1\n```\n\ntext\n\n```python\nx = 1\n\ny = 2\n```\n\n```\nplain\n```\n"
    assert fenced(page) == [("bash", "echo 1\n"), ("python", "x = 1\n\ny = 2\n"), ("", "plain\n")]


def all_pages() -> list[str]:
    return sorted(p.name for p in DOCS.glob("*.md"))


def test_every_tutorial_page_is_in_the_site_and_every_page_has_a_title():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python/name:", ""))["nav"]
    listed = set()

    def walk(items):
        for item in items:
            for value in (item.values() if isinstance(item, dict) else [item]):
                walk(value) if isinstance(value, list) else listed.add(value)
    walk(nav)
    assert set(TUTORIALS) <= listed and set(all_pages()) <= listed, set(all_pages()) - listed
    for page in all_pages():
        assert (DOCS / page).read_text().startswith("# "), page


@pytest.mark.parametrize("page", all_pages())
def test_sh_blocks_parse_and_yaml_blocks_load(page):
    for block in blocks(page, "sh"):
        done = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert done.returncode == 0, f"{page}: {done.stderr}\n{block}"
    for block in blocks(page, "yaml"):
        yaml.safe_load(block)
    if page not in TUTORIALS:
        assert not blocks(page, "bash") and not blocks(page, "python"), (
            f"{page} has bash / python blocks but is not a tutorial page that the tests run: add it to TUTORIALS, "
            f"or mark blocks that cannot run here as sh (commands) or py (code, not run)")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The reader's working folder: the repository's configs beside it, riskcl on the PATH."""
    work = tmp_path_factory.mktemp("tutorial")
    (work / "configs").symlink_to(ROOT / "configs")
    return work


def test_the_tutorials_run(workdir, monkeypatch):
    """Every bash and python block of the tutorial pages, in order, in one working folder."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    monkeypatch.chdir(workdir)
    for page in TUTORIALS:
        namespace: dict = {"__name__": "__main__"}
        ran = 0
        for lang, body in fenced((DOCS / page).read_text()):
            ran += lang in ("bash", "python")
            if lang == "bash":
                done = subprocess.run(["bash", "-e", "-u", "-o", "pipefail", "-c", body], cwd=workdir, env=env,
                                      capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, f"{page}:\n{body}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n" \
                                             f"{done.stderr[-3000:]}"
            elif lang == "python":
                try:
                    exec(compile(body, f"<{page}>", "exec"), namespace)
                except Exception as exc:  # noqa: BLE001 - said with the page and the block
                    pytest.fail(f"{page}: {type(exc).__name__}: {exc}\n{body}")
        assert ran, f"{page} is a tutorial page without a block that runs"


def test_the_site_builds_strictly_and_renders(tmp_path):
    """`mkdocs build --strict` (a broken link or reference fails it), then the front page, a tutorial and an API
    page in headless Chromium: each has its navigation, and the search finds a tutorial."""
    pytest.importorskip("mkdocs", reason="the site needs mkdocs-material and mkdocstrings (pip install 'riskcl[docs]')")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for page in ("index.html", "getting-started.html", "api.html", "search/search_index.js"):
        assert (site / page).is_file(), page
    from _browser import chromium_page

    with chromium_page() as browser_page:
        import http.server
        import threading
        from functools import partial

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                 partial(http.server.SimpleHTTPRequestHandler, directory=str(site)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        try:
            for path, text in (("index.html", "riskcl"), ("getting-started.html", "riskcl calibrate"),
                               ("api.html", "RiskCalibratedLoss")):
                browser_page.goto(base + path)
                assert text in browser_page.inner_text("article")
                assert browser_page.locator("nav.md-nav--primary a").count() > 10
            browser_page.goto(base + "index.html")
            browser_page.keyboard.press("/")
            browser_page.keyboard.type("calibrate")
            browser_page.wait_for_selector(".md-search-result__item", timeout=15000)
            assert browser_page.locator(".md-search-result__item").count() > 0
        finally:
            server.shutdown()
    shutil.rmtree(site)
