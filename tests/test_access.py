"""A service a hospital network can trust (riskcl.deploy.access, serve, service_metrics): bearer tokens of named
clients, limits per client, no service on the network without tokens unless told, TLS, CORS only when asked,
error bodies without internals, and /metrics read back with prometheus-client's own parser."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import demo_png
from riskcl.cli import main
from riskcl.deploy.access import add_token, read_tokens, revoke_token
from riskcl.deploy.export import export_run
from riskcl.deploy.serve import ServiceOptions, create_app


@pytest.fixture(scope="module")
def export_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("access") / "export"
    export_run(tiny_run[0], out, "onnx", check_limit=16)
    return out


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    return demo_png(tmp_path_factory.mktemp("png")).read_bytes()


def _upload(png: bytes) -> dict:
    return {"files": {"file": ("a.png", png, "image/png")}}


def test_tokens_are_issued_once_stored_hashed_and_revoked_without_a_restart(export_dir, png, tmp_path, capsys):
    tokens = tmp_path / "tokens.json"
    assert main(["serve-token", "add", "ward-a", "--tokens", str(tokens)]) == 0
    token_a = capsys.readouterr().out.strip().splitlines()[-1]
    token_b = add_token(tokens, "ward-b")
    assert token_a.startswith("rk_") and token_a not in tokens.read_text() and token_b not in tokens.read_text()
    assert oct(tokens.stat().st_mode & 0o777) == "0o600"
    client = TestClient(create_app(export_dir, options=ServiceOptions(tokens=str(tokens))))
    assert client.get("/health").status_code == 200 and client.get("/").status_code == 200  # public
    assert client.get("/ready").json()["ready"] is True
    no = client.get("/model")
    assert no.status_code == 401 and no.headers["www-authenticate"] == "Bearer"
    assert client.get("/model", headers={"Authorization": "Bearer rk_wrong"}).status_code == 401
    assert client.get("/metrics").status_code == 401
    ok = client.post("/predict", headers={"Authorization": f"Bearer {token_a}"}, **_upload(png))
    assert ok.status_code == 200 and len(ok.headers["X-Request-ID"]) == 32
    assert client.get("/model", headers={"Authorization": f"Bearer {token_a}"}).json()["access"].startswith(
        "bearer tokens (2 active")
    revoke_token(tokens, "ward-a")  # the running service reads the file again
    time.sleep(0.01)
    os.utime(tokens, None)
    gone = client.post("/predict", headers={"Authorization": f"Bearer {token_a}"}, **_upload(png))
    assert gone.status_code == 403 and "revoked" in gone.json()["error"]
    assert client.post("/predict", headers={"Authorization": f"Bearer {token_b}"}, **_upload(png)).status_code == 200
    assert main(["serve-token", "list", "--tokens", str(tokens)]) == 0
    listed = capsys.readouterr().out
    assert "ward-a" in listed and "REVOKED" in listed and "rk_" not in listed
    assert set(read_tokens(tokens)) == {"ward-a", "ward-b"}


def test_the_network_is_refused_without_tokens_unless_told(export_dir, tmp_path, capsys):
    assert main(["serve", str(export_dir), "--host", "0.0.0.0", "--port", "18765", "--log",
                 str(tmp_path / "log.jsonl")]) == 2
    assert "without --tokens anyone who can reach it could use the service" in capsys.readouterr().err
    app = create_app(export_dir, options=ServiceOptions(no_auth=True), host="0.0.0.0")
    model = TestClient(app).get("/model").json()
    assert model["access"].startswith("NONE: started with --no-auth")
    assert "--no-auth" in (Path(__file__).resolve().parents[1] / "src/riskcl/deploy/page.html").read_text()


def test_one_client_cannot_starve_the_others(export_dir, png, tmp_path):
    tokens = tmp_path / "tokens.json"
    busy, quiet = add_token(tokens, "busy"), add_token(tokens, "quiet")
    client = TestClient(create_app(export_dir, options=ServiceOptions(tokens=str(tokens), rate_per_minute=3)))
    answers = [client.post("/predict", headers={"Authorization": f"Bearer {busy}"}, **_upload(png)).status_code
               for _ in range(5)]
    assert answers == [200, 200, 200, 429, 429]
    limited = client.post("/predict", headers={"Authorization": f"Bearer {busy}"}, **_upload(png))
    assert 1 <= int(limited.headers["Retry-After"]) <= 60 and "busy" in limited.json()["error"]
    assert client.post("/predict", headers={"Authorization": f"Bearer {quiet}"}, **_upload(png)).status_code == 200
    # concurrent requests: a slow batch (each image waits 1.5 s for company) holds the client's one slot
    app = create_app(export_dir, max_wait_ms=1500, max_batch=64,
                     options=ServiceOptions(tokens=str(tokens), max_concurrent=1))
    slow = TestClient(app)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(slow.post, "/predict", headers={"Authorization": f"Bearer {busy}"}, **_upload(png))
        time.sleep(0.5)
        second = pool.submit(slow.post, "/predict", headers={"Authorization": f"Bearer {busy}"}, **_upload(png))
        other = pool.submit(slow.post, "/predict", headers={"Authorization": f"Bearer {quiet}"}, **_upload(png))
        assert second.result().status_code == 429 and second.result().headers["Retry-After"] == "1"
        assert first.result().status_code == 200 and other.result().status_code == 200


def test_cors_only_for_the_origins_named(export_dir):
    plain = TestClient(create_app(export_dir)).get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in plain.headers
    app = create_app(export_dir, options=ServiceOptions(allow_origin=("https://pacs.example",)))
    client = TestClient(app)
    assert client.get("/health", headers={"Origin": "https://pacs.example"}).headers[
        "access-control-allow-origin"] == "https://pacs.example"
    assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": "https://evil.example"}).headers


def test_no_error_body_holds_a_path_or_a_trace(export_dir, png, tmp_path, monkeypatch):
    """Every error path of the service, provoked: 400, 401, 403, 404, 405, 413, 415, 422, 429, 501, 503."""
    tokens = tmp_path / "tokens.json"
    good, gone = add_token(tokens, "good"), add_token(tokens, "gone")
    revoke_token(tokens, "gone")
    log = tmp_path / "log.jsonl"
    app = create_app(export_dir, max_upload_mb=0.01, options=ServiceOptions(tokens=str(tokens), log=str(log),
                                                                            rate_per_minute=30))
    client = TestClient(app, raise_server_exceptions=False)
    h = {"Authorization": f"Bearer {good}"}
    assert client.post("/predict", headers=h, **_upload(png)).status_code == 200  # the log exists
    big = b"\x89PNG" + b"0" * 20000
    bodies = {
        400: client.post("/predict", headers=h, files={"file": ("a.png", b"", "image/png")}),
        401: client.post("/predict", **_upload(png)),
        403: client.post("/predict", headers={"Authorization": f"Bearer {gone}"}, **_upload(png)),
        404: client.get("/nowhere", headers=h),
        405: client.get("/predict", headers=h),
        413: client.post("/predict", headers=h, files={"file": ("a.png", big, "image/png")}),
        415: client.post("/predict", headers=h, files={"file": ("a.png", b"not an image at all", "image/png")}),
        422: client.post("/predict", headers=h, data={"x": "1"}),
        501: client.post("/explain", headers=h, **_upload(png)),
    }
    log.unlink()
    log.mkdir()  # the log cannot be written: no decision without its record
    bodies[503] = client.post("/predict", headers=h, **_upload(png))
    assert client.get("/ready").status_code == 503
    log.rmdir()
    assert client.post("/predict", headers=h, **_upload(png)).status_code == 200  # recovered
    for _ in range(40):
        r = client.post("/predict", headers=h, **_upload(png))
        if r.status_code == 429:
            bodies[429] = r
            break
    for status, r in bodies.items():
        assert r.status_code == status, (status, r.status_code, r.text)
        text = r.text
        for internal in (str(tmp_path), str(export_dir), "/work", "/tmp", "/root", "Traceback", 'File "',
                         "site-packages"):
            assert internal not in text, (status, text)


def test_metrics_count_what_was_asked(export_dir, png, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    tokens = tmp_path / "tokens.json"
    token = add_token(tokens, "w")
    client = TestClient(create_app(export_dir, options=ServiceOptions(tokens=str(tokens))))
    h = {"Authorization": f"Bearer {token}"}
    decisions = [client.post("/predict", headers=h, **_upload(png)).json()["decision"] for _ in range(3)]
    client.post("/predict", headers=h, files={"file": ("a.png", b"junk", "image/png")})
    client.get("/model")
    text = client.get("/metrics", headers=h).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("riskcl_responses_total", (("endpoint", "/predict"), ("status", "200")))] == 3
    assert samples[("riskcl_responses_total", (("endpoint", "/predict"), ("status", "415")))] == 1
    assert samples[("riskcl_responses_total", (("endpoint", "/model"), ("status", "401")))] == 1
    assert samples[("riskcl_decisions_total", (("decision", decisions[0]),))] == decisions.count(decisions[0])
    assert samples[("riskcl_request_seconds_count", (("endpoint", "/predict"),))] == 4
    assert samples[("riskcl_batch_size_count", ())] >= 1 and ("riskcl_queue_depth", ()) in samples
    info = next(s for f in families.values() for s in f.samples if s.name == "riskcl_model_info")
    assert info.labels["model_sha256"] == json.loads((export_dir / "riskcl_export.json").read_text())[
        "files_sha256"]["model.onnx"]
    assert samples[("riskcl_model_load_seconds", ())] > 0
    public = TestClient(create_app(export_dir, options=ServiceOptions(tokens=str(tokens), metrics_public=True)))
    assert public.get("/metrics").status_code == 200


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_https_with_a_certificate_the_client_verifies(export_dir, png, tmp_path):
    import httpx

    from _browser import free_port

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "riskcl", "serve", str(export_dir), "--port", str(port),
                             "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--log",
                             str(tmp_path / "log.jsonl")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"https://localhost:{port}"
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.get(f"{url}/health", verify=str(cert), timeout=2)
                break
            except httpx.TransportError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        assert r.json() == {"status": "ok"}
        answer = httpx.post(f"{url}/predict", files={"file": ("a.png", png, "image/png")}, verify=str(cert))
        assert answer.status_code == 200 and answer.json()["decision"] in ("refer", "clear")
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate is refused
            httpx.get(f"{url}/health", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_concurrency_is_safe_under_threads(export_dir, png, tmp_path):
    """Sanity under load: 4 threads x 5 requests, every one answered 200 with its own request id."""
    tokens = tmp_path / "tokens.json"
    token = add_token(tokens, "w")
    client = TestClient(create_app(export_dir, options=ServiceOptions(tokens=str(tokens))))
    lock, ids = threading.Lock(), []

    def ask(_):
        r = client.post("/predict", headers={"Authorization": f"Bearer {token}"}, **_upload(png))
        with lock:
            ids.append((r.status_code, r.headers.get("X-Request-ID")))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(ask, range(20)))
    assert {s for s, _ in ids} == {200} and len({i for _, i in ids}) == 20
