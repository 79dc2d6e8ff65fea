"""The triage service (riskcl.deploy.serve): the API with FastAPI's TestClient, every bad input a 4xx while it
keeps serving, and the page driven in a real headless Chromium against `riskcl serve`."""
from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _browser import CHROMIUM, free_port, screenshot_page, wait_up
from conftest import BRAIN_MRI, demo_png, needs_brain_mri
from riskcl.deploy.scoring import predict_files
from riskcl.deploy.serve import create_app



@pytest.fixture(scope="module")
def client(tiny_run):
    with TestClient(create_app(tiny_run[0], max_upload_mb=1)) as c:
        yield c


def _png_bytes(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(array)
    (img.convert(mode) if mode else img).save(buf, format=fmt)
    return buf.getvalue()


def test_predict_matches_riskcl_predict_and_explain_returns_png(client, tiny_run, tmp_path):
    img = demo_png(tmp_path)
    r = client.post("/predict", files={"file": ("x.png", img.read_bytes(), "image/png")})
    assert r.status_code == 200
    body = r.json()
    (row,), *_ = predict_files(tiny_run[0], [str(img)])
    assert body["decision"] == row["decision"] and body["predicted"] == row["predicted"]
    assert body["p_malignant"] == pytest.approx(row["p_malignant"], abs=1e-9)
    assert body["threshold"] == 0.5 and body["operating_point"]["method"] == "default"
    assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-6)
    ex = client.post("/explain", files={"file": ("x.png", img.read_bytes(), "image/png")})
    assert ex.status_code == 200 and ex.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(ex.content)).size == (224 + 224 + 18, 224)  # image | overlay + colour bar
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text and "http" not in page.text.split("<body>")[1]
    assert "innerHTML" not in page.text  # server text (class names from a user's taxonomy) never parsed as HTML
    assert body["borderline"] == (abs(body["p_malignant"] - 0.5) <= 0.05)
    model = client.get("/model").json()
    assert model["classes"] == ["nevus", "keratosis", "melanoma", "carcinoma"] and "Not calibrated" in \
        model["operating_point_text"]
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("case,status,match", [
    ("non_image", 415, "cannot decode"),
    ("empty", 400, "empty"),
    ("truncated_jpeg", 415, "cannot decode"),
    ("too_large", 413, "exceeds the limit"),
    ("one_pixel", 422, "too small"),
    ("wrong_field", 422, "field 'file'"),
    ("no_body", 422, "field 'file'"),
])
def test_bad_uploads_get_4xx_json_and_the_server_keeps_serving(client, case, status, match):
    rng = np.random.default_rng(0)
    photo = _png_bytes((rng.random((64, 64, 3)) * 255).astype(np.uint8), fmt="JPEG")
    payload = {"non_image": b"%PDF-1.4 not an image at all", "empty": b"",
               "truncated_jpeg": photo[: len(photo) // 2], "too_large": os.urandom(2 * 1024 * 1024),
               "one_pixel": _png_bytes(np.zeros((1, 1, 3), np.uint8)), "wrong_field": photo}.get(case)
    if case == "no_body":
        r = client.post("/predict")
    else:
        field = "image" if case == "wrong_field" else "file"
        r = client.post("/predict", files={field: ("x.jpg", payload, "image/jpeg")})
    assert r.status_code == status, r.text
    assert match in r.json()["error"]
    assert client.get("/health").status_code == 200  # still serving


@pytest.mark.parametrize("kind", ["png16", "cmyk"])
def test_wide_and_cmyk_images_are_decoded(client, kind):
    if kind == "png16":
        data = _png_bytes(np.linspace(0, 60000, 40 * 40).reshape(40, 40).astype(np.uint16))
    else:
        data = _png_bytes((np.random.default_rng(1).random((40, 40, 3)) * 255).astype(np.uint8), "CMYK", "JPEG")
    r = client.post("/predict", files={"file": ("x", data, "application/octet-stream")})
    assert r.status_code == 200 and r.json()["image_size"] == [40, 40]


def test_health_answers_while_a_slow_request_runs(tiny_run):
    """Requests run in the thread pool: /health answers while /explain holds the model."""
    import threading

    app = create_app(tiny_run[0])
    with TestClient(app) as c:
        rng = np.random.default_rng(2)
        big = _png_bytes((rng.random((1500, 1500, 3)) * 255).astype(np.uint8))
        slow = threading.Thread(target=lambda: c.post("/explain", files={"file": ("b.png", big, "image/png")}))
        slow.start()
        time.sleep(0.05)
        t0 = time.time()
        assert c.get("/health").status_code == 200
        fast = time.time() - t0
        slow.join()
        assert fast < 2.0


# --- the real page in a real browser -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def brain_run(tmp_path_factory):
    from riskcl.config import load_config
    from riskcl.experiment import run_experiment

    out = tmp_path_factory.mktemp("serve") / "bm"
    cfg = load_config("configs/brain_mri_cpu.yaml", [f"data.root={BRAIN_MRI}", "epochs=1", "max_steps_per_epoch=20",
                                                     "progress=false"])
    run_experiment(cfg, out)
    from riskcl.cli import main

    assert main(["calibrate", str(out), "--alpha", "0.05"]) == 0
    return out


@needs_brain_mri
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium); .ci/run installs it")
def test_page_in_headless_chromium_shows_what_riskcl_predict_says(brain_run, tmp_path):
    image = BRAIN_MRI / "Testing" / "glioma" / "Te-gl_0010.jpg"
    shot = tmp_path / "serve_page.png"
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are my notes, not an image")
    shown = screenshot_page(brain_run, image, shot, bad)
    (row,), *_ = predict_files(brain_run, [str(image)], calibrated=True)
    assert shown["decision"].split(" ")[0] == row["decision"].upper()
    assert shown["filename"] == image.name and shown["preview"] and "does not rule out disease" in shown["notice"]
    assert shown["bad_result_hidden"] and shown["bad_overlay_src"] is None and shown["bad_filename"] == "notes.png"
    assert "could not be analysed" in shown["bad_error"] and "0x" not in shown["bad_error"]
    assert shown["predicted"] == row["predicted"]
    assert float(shown["p_malignant"]) == pytest.approx(row["p_malignant"], abs=5e-5)
    assert "sensitivity on data like the calibration set" in shown["op"]
    assert shot.is_file() and Image.open(shot).size[0] >= 1000
    if os.environ.get("RISKCL_SCREENSHOT"):  # how the README's picture is made
        shutil.copy(shot, os.environ["RISKCL_SCREENSHOT"])


# --- a real uvicorn under hostile uploads (issue 21): memory and disk stay under the limits ------------------------
def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _spooled_bytes(pid: int, tmpdir: Path) -> int:
    """Bytes of the regular files under ``tmpdir`` the server holds open (spooled uploads are unlinked files)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(tmpdir)):
                total += os.stat(fd).st_size
        except OSError:
            continue
    return total


@pytest.fixture(scope="module")
def live_server(tiny_run, tmp_path_factory):
    """`riskcl serve` in its own process on 127.0.0.1 with a 1 MB upload limit and a private temp folder."""
    tmpdir = tmp_path_factory.mktemp("spool")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    log = tmp_path_factory.mktemp("log") / "decisions.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "riskcl", "serve", str(tiny_run[0]), "--port", str(port),
                             "--max-upload-mb", "1", "--log", str(log)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_up(url, proc)
        yield port, proc, tmpdir
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _multipart(data: bytes, name: str = "x.png") -> tuple[bytes, str]:
    boundary = "riskclboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_small_png_of_a_huge_image_is_refused_from_its_header(live_server, tmp_path):
    import http.client

    port, proc, _ = live_server
    base = _vm_hwm_mb(proc.pid)
    big = tmp_path / "big.png"
    Image.new("L", (11000, 11000)).save(big, optimize=True)  # 121 megapixels in about 117 KB
    body, ctype = _multipart(big.read_bytes())
    for _ in range(3):  # bounded
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
        r = conn.getresponse()
        answer = r.read().decode()
        conn.close()
        assert r.status == 413 and "exceeds the limit of 50 megapixels" in answer
    assert _vm_hwm_mb(proc.pid) - base < 200  # decoding would take 121 MB per copy (6.9 GB before the fix)


def test_uploads_over_the_limit_are_cut_while_they_stream(live_server):
    import http.client
    import threading

    port, proc, tmpdir = live_server
    # Declared too large: answered before the body is sent.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "multipart/form-data; boundary=b")
    conn.putheader("Content-Length", str(300 * 2**20))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "exceeds the limit of 1 MB" in r.read().decode()
    conn.close()
    # Chunked, no length: cut at the limit; never more than the limit spooled to disk.
    peak = {"spooled": 0}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak["spooled"] = max(peak["spooled"], _spooled_bytes(proc.pid, tmpdir))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    head, _ = _multipart(b"")
    chunk = os.urandom(64 * 1024)

    def body():
        yield head[:-len("\r\n--riskclboundary--\r\n")]
        for _ in range(800):  # 50 MB offered, bounded
            yield chunk

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/predict", body=body(), encode_chunked=True,
                     headers={"Content-Type": "multipart/form-data; boundary=riskclboundary",
                              "Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        status, answer = r.status, r.read().decode()
    except (BrokenPipeError, ConnectionResetError):  # the server may close while we still send: it cut us off
        status, answer = 413, "exceeds the limit"
    finally:
        conn.close()
        stop.set()
        watcher.join()
    assert status == 413 and "exceeds the limit" in answer
    assert peak["spooled"] <= 1.1 * 2**20
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as h:  # still serving
        assert h.status == 200


def test_serve_checks_its_options_and_binds_before_saying_it_serves(tiny_run, capsys):
    from riskcl.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny_run[0]), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert f"cannot serve on 127.0.0.1:{port}" in err and "serving on" not in out and "riskcl serve:" not in out
