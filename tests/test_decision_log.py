"""The decision log (riskcl.deploy.decision_log): one chained line per decision from the service and from predict;
an edited, deleted or swapped line is found; a log that cannot be written refuses the decision and recovers; a
torn, duplicated or out-of-order line is read with a warning naming it."""
from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from conftest import demo_png
from riskcl.cli import main
from riskcl.deploy.access import add_token
from riskcl.deploy.decision_log import DecisionLog, line_hash, read_records, verify_log
from riskcl.deploy.export import export_run
from riskcl.deploy.serve import ServiceOptions, create_app


@pytest.fixture(scope="module")
def export_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("log") / "export"
    export_run(tiny_run[0], out, "onnx", check_limit=16)
    return out


def _lines(path):
    return path.read_text().splitlines()


def test_concurrent_clients_get_one_chained_line_each(export_dir, tmp_path, capsys):
    tokens = tmp_path / "tokens.json"
    names = ["ward-a", "ward-b", "ward-c"]
    keys = {n: add_token(tokens, n) for n in names}
    log = tmp_path / "decisions.jsonl"
    client = TestClient(create_app(export_dir, options=ServiceOptions(tokens=str(tokens), log=str(log))))
    pngs = [demo_png(tmp_path, k).read_bytes() for k in range(4)]

    def ask(k):
        name = names[k % 3]
        r = client.post("/predict", headers={"Authorization": f"Bearer {keys[name]}"},
                        files={"file": ("x.png", pngs[k % 4], "image/png")})
        return name, r

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(24)))
    assert all(r.status_code == 200 for _, r in answers)
    records = [json.loads(line) for line in _lines(log)]
    assert len(records) == 24 and [r["seq"] for r in records] == list(range(1, 25))
    by_id = {r["request_id"]: r for r in records}
    key = bytes.fromhex((tmp_path / "decisions.jsonl.key").read_text().strip())
    for name, r in answers:  # the line of each answer: its client, its decision, the keyed hash of its bytes
        line = by_id[r.headers["X-Request-ID"]]
        body = r.json()
        assert line["client"] == name and line["decision"] == body["decision"]
        assert line["p_malignant"] == pytest.approx(body["p_malignant"]) and line["source"] == "api"
        assert line["image"]["hmac_sha256"] in {hmac.new(key, p, hashlib.sha256).hexdigest() for p in pngs}
        assert line["model_sha256"] == json.loads((export_dir / "riskcl_export.json").read_text())[
            "files_sha256"]["model.onnx"]
    text = log.read_text()
    assert keys["ward-a"] not in text and "PNG" not in text  # no token, no pixel
    assert main(["log", "verify", str(log)]) == 0
    assert "intact: 24 line(s)" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["edit", "delete", "swap", "not json"])
def test_an_edited_deleted_or_swapped_line_is_named(tmp_path, capsys, damage):
    log = DecisionLog(tmp_path / "d.jsonl")
    for k in range(6):
        log.record({"decision": "clear", "p_malignant": 0.1 * k})
    lines = _lines(tmp_path / "d.jsonl")
    if damage == "edit":
        lines[2] = lines[2].replace('"decision":"clear"', '"decision":"refer"')
    elif damage == "delete":
        del lines[3]
    elif damage == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines[4] = lines[4][:-3]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    result = verify_log([tmp_path / "d.jsonl"])
    assert not result.ok
    expected = {"edit": "line 4", "delete": "line 4", "swap": "line 2", "not json": "line 5"}[damage]
    assert expected in result.problem
    assert main(["log", "verify", str(tmp_path / "d.jsonl")]) == 1
    assert "NOT INTACT" in capsys.readouterr().out


def test_the_chain_runs_across_rotated_files_and_resumes_after_a_restart(tmp_path):
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, max_mb=0.0005)  # ~500 bytes: a few lines per file
    for k in range(12):
        log.record({"decision": "refer", "k": k})
    again = DecisionLog(path, max_mb=0.0005)  # a restart continues the chain
    for k in range(12, 15):
        again.record({"decision": "clear", "k": k})
    files = sorted(tmp_path.glob("d.jsonl*"))
    assert len([f for f in files if not f.name.endswith(".key")]) >= 3
    result = verify_log([path])
    assert result.ok and result.lines == 15 and result.last_seq == 15
    first_of_new = json.loads(_lines(path)[0])
    older = _lines(tmp_path / "d.jsonl.1")
    assert first_of_new["prev"] == line_hash(older[-1])  # the chain crosses the rotation
    (tmp_path / "d.jsonl.2").unlink()  # a removed rotated file breaks the chain
    assert not verify_log([path]).ok


def test_a_log_that_cannot_be_written_refuses_the_decision_and_recovers(export_dir, tmp_path, monkeypatch):
    import os

    log = tmp_path / "d.jsonl"
    client = TestClient(create_app(export_dir, options=ServiceOptions(log=str(log))))
    png = demo_png(tmp_path).read_bytes()
    assert client.post("/predict", files={"file": ("a.png", png, "image/png")}).status_code == 200
    real_write = os.write

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("riskcl.deploy.decision_log.os.write", full_disk)
    refused = client.post("/predict", files={"file": ("a.png", png, "image/png")})
    assert refused.status_code == 503 and "No space left on device" in refused.json()["error"]
    monkeypatch.setattr("riskcl.deploy.decision_log.os.write", real_write)
    assert client.post("/predict", files={"file": ("a.png", png, "image/png")}).status_code == 200
    assert verify_log([log]).ok and verify_log([log]).lines == 2  # the refused decision left no line


def test_predict_writes_the_same_lines(export_dir, tmp_path):
    images = [str(demo_png(tmp_path, k)) for k in range(3)]
    log = tmp_path / "d.jsonl"
    assert main(["predict", str(export_dir), *images, "--out", str(tmp_path / "p.csv"), "--log", str(log),
                 "--quiet"]) == 0
    records = [json.loads(line) for line in _lines(log)]
    assert [r["source"] for r in records] == ["predict"] * 3 and records[0]["client"].startswith("predict:")
    assert set(records[0]) >= {"request_id", "model_sha256", "operating_point", "decision", "p_malignant", "image",
                               "time", "seq", "prev"}
    assert verify_log([log]).ok


def test_torn_duplicated_and_out_of_order_lines_are_read_with_a_warning(tmp_path):
    log = DecisionLog(tmp_path / "d.jsonl")
    for k in range(4):
        log.record({"decision": "clear", "k": k})
    lines = _lines(tmp_path / "d.jsonl")
    text = "\n".join([lines[0], lines[2], lines[1], lines[1], lines[3]]) + "\n" + '{"seq": 5, "decis'
    (tmp_path / "d.jsonl").write_text(text)
    records, notes = read_records([tmp_path / "d.jsonl"])
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert any("line 3: seq 2 after 3 (out of order)" in n for n in notes)
    assert any("line 4: seq 2 repeated" in n for n in notes)
    assert any("line 6: torn line" in n for n in notes)


def test_concurrent_decisions_share_a_sync_and_a_failed_batch_leaves_no_trace(tmp_path, monkeypatch):
    """Group commit: 8 threads x 25 decisions with a slow disk (each fsync 5 ms) need far fewer syncs than lines,
    every line is chained and returned only once synced; a batch whose sync fails is cut off whole, each of its
    requests is refused, and the chain goes on from the last synced line."""
    import threading
    import time as _time

    from riskcl.deploy import decision_log as dl

    log = dl.DecisionLog(tmp_path / "d.jsonl")
    real_fsync, syncs, synced = os.fsync, [], {"lines": 0}

    def slow_fsync(fd):
        _time.sleep(0.005)
        real_fsync(fd)
        syncs.append(1)
        synced["lines"] = (tmp_path / "d.jsonl").read_bytes().count(b"\n")

    monkeypatch.setattr(dl.os, "fsync", slow_fsync)
    returned = []

    def client():
        for _ in range(25):
            entry = log.record({"decision": "clear"})
            returned.append(entry["seq"] <= synced["lines"] and entry["seq"])  # on disk before it returns

    threads = [threading.Thread(target=client) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(returned) == list(range(1, 201)) and len(syncs) < 150
    assert dl.verify_log([tmp_path / "d.jsonl"]).ok

    def failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(dl.os, "fsync", failing)
    size = (tmp_path / "d.jsonl").stat().st_size
    with pytest.raises(dl.LogUnavailable):
        log.record({"decision": "refer"})
    assert (tmp_path / "d.jsonl").stat().st_size == size
    monkeypatch.setattr(dl.os, "fsync", real_fsync)
    assert log.record({"decision": "refer"})["seq"] == 201
    assert dl.verify_log([tmp_path / "d.jsonl"]).ok
