"""Inference throughput and latency of an exported model (issue 26), three ways, on a run's held-in test split:

    python benchmarks/bench_infer.py --run RUN [--export RUN/export] [--batch 32] [--requests 2000]
    python benchmarks/bench_infer.py --run RUN --images 48 --requests 60   # the small form the tests run

(a) ceiling: the bare ONNX Runtime session on pre-decoded ``uint8`` images (the graph's own resize, TTA and
    temperature included), batches of ``--batch`` images of one size;
(b) ``riskcl predict EXPORT FILES`` end to end from the image files (decoding, batching, CSV written and synced)
    at the same batch size, through :func:`riskcl.deploy.scoring.predict_files` (one batch per usable core at
    once, as predict scores; the median of as many passes as the ceiling's), and whether it decides every image
    as the bare session and the run's own saved predictions do;
(c) the service (``riskcl serve EXPORT`` in its own process on 127.0.0.1) under a closed-loop load of 1, 4 and
    16 clients, each sending the next image as soon as its answer came back, ``--requests`` requests per level:
    images/s, p50 / p95 / p99 latency, errors, and the server's resident memory before the load and after it;
(d) the cost of trust: the same service at 4 clients with bearer tokens and the decision log on (every answer
    authenticated and recorded, flushed and synced before it leaves) against both off: two services loaded in
    turn, three rounds each, medians (this machine's throughput drifts by a third from minute to minute).

Prints one JSON object (machine, figures, the targets and whether each holds): (b) >= 0.8 x (a) with the same
decisions; no error,
p99 <= 3 x p50 at 4 clients, memory growth under 5% across the run, and (d) costing under 10% of the throughput.
The export is made with ``riskcl export`` when ``--export`` does not exist yet. Image files come from the run's
split table; a data set generated in memory (the demo) is written to PNG files in a temp folder first.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np


def _test_files(run: Path, limit: int, tmp: Path) -> tuple[list[str], list[str]]:
    """Up to ``limit`` test images of the run as files (the originals, or PNGs of an in-memory data set), and their
    ids in the run's split table."""
    from PIL import Image

    from riskcl.data import load_source_images
    from riskcl.experiment.folder import RunFolder

    folder = RunFolder(run)
    test = folder.splits()
    test = test.loc[test["split"] == "test"].head(limit)
    paths, ids = [str(p) for p in test["path"]], [str(i) for i in test["id"]]
    if all(os.path.isfile(p) for p in paths):
        return paths, ids
    cfg = folder.read_config()
    images = load_source_images(cfg.data.name, cfg.data.root, paths, **cfg.data.options)
    out = []
    for i, im in enumerate(images):
        out.append(str(tmp / f"test_{i:05d}.png"))
        Image.fromarray(im).save(out[-1])
    return out, ids


def ceiling(export: Path, images: list[np.ndarray], batch: int, repeat: int) -> tuple[dict, np.ndarray]:
    """The bare session (ONNX Runtime's default threads) on decoded images, and its probabilities (the reference
    predict's rows are checked against)."""
    from riskcl.deploy.scoring import ExportedModel, group_by_shape

    model = ExportedModel(export)
    model.batch_size = batch
    batches = [[images[i] for i in idx[s:s + batch]] for idx in group_by_shape(images).values()
               for s in range(0, len(idx), batch)]
    model.probabilities(batches[0])  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        for b in batches:
            model.session.run(["probabilities"], {"images": np.stack(b)})
    seconds = time.perf_counter() - start
    return ({"images": len(images) * repeat, "seconds": round(seconds, 3),
             "images_per_s": round(len(images) * repeat / seconds, 1), "runtime": model.runtime},
            model.probabilities(images))


def predict_end_to_end(export: Path, files: list[str], batch: int, tmp: Path, reference: np.ndarray,
                       run: Path, ids: list[str], repeat: int) -> dict:
    """Steady-state throughput of riskcl predict's pipeline (decode, score, rows, CSV written and synced) with the
    session already open as predict opens it (the median of ``repeat`` passes over ``files``), the wall time of
    the whole call (session creation included) beside it, and its parity with the bare session's probabilities
    (``reference``, in ``files`` order) and with the run's own saved test predictions (PyTorch's, at the export's
    operating point)."""
    from riskcl.deploy.scoring import (PredictionCSV, csv_columns, decision_rows, open_scorer, predict_files,
                                       stream_predictions)

    scorer = open_scorer(export, batch_parallel=True)
    # warm-up: a batch for each scoring thread and one more (ONNX Runtime's first call on each is slower)
    stream_predictions(scorer, files[:batch * (scorer.batch_workers + 1)], PredictionCSV(
        tmp / "warm.csv", csv_columns(scorer.taxonomy), scorer.op, force=True), batch_size=batch)
    passes = []
    for k in range(repeat):  # as many passes as the ceiling's, the median kept (one pass varies by a tenth)
        sink = PredictionCSV(tmp / f"bench_predict_{k}.csv", csv_columns(scorer.taxonomy), scorer.op, force=True)
        rows: list[dict] = []
        start = time.perf_counter()
        summary = stream_predictions(scorer, files, sink, batch_size=batch, collect=rows)
        passes.append(time.perf_counter() - start)
    seconds = float(np.median(passes))
    start = time.perf_counter()
    predict_files(export, files, tmp / "bench_call.csv", batch_size=batch, collect=False, force=True)
    call = time.perf_counter() - start
    expected = decision_rows(reference, scorer.taxonomy, scorer.op, names=files)
    from riskcl.experiment.folder import RunFolder

    saved = RunFolder(run).predictions("test")
    logits_of = dict(zip((str(i) for i in saved["ids"]), saved["logits"]))
    ran = decision_rows(scorer.op.probabilities(np.stack([logits_of[i] for i in ids])), scorer.taxonomy, scorer.op,
                        names=files)
    return {"images": summary.scored, "seconds": round(seconds, 3), "images_per_s": round(summary.scored / seconds, 1),
            "passes_images_per_s": [round(summary.scored / p, 1) for p in passes],
            "batches_at_once": scorer.batch_workers, "unreadable": len(summary.unreadable),
            "whole_call_seconds": round(call, 3),
            "decisions_as_bare_session": [r["decision"] for r in rows] == [r["decision"] for r in expected],
            "decisions_as_run_predictions": [r["decision"] for r in rows] == [r["decision"] for r in ran],
            "max_abs_p_malignant_difference": float(max(abs(r["p_malignant"] - e["p_malignant"])
                                                        for r, e in zip(rows, expected)))}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _load(port: int, bodies: list[tuple[bytes, str]], clients: int, requests: int, token: str | None = None) -> dict:
    """A closed loop: ``clients`` threads, each with its own keep-alive connection, ``requests`` in all."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def connect() -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.connect()  # no Nagle delay between the request's header and body (as browsers and urllib3 do)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def client() -> None:
        conn = connect()
        while True:
            with lock:
                k = next(counter, None)
            if k is None:
                break
            body, ctype = bodies[k % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body, {"Content-Type": ctype, **(
                    {"Authorization": f"Bearer {token}"} if token else {})})
                resp = conn.getresponse()
                payload = resp.read()
                ok = resp.status == 200 and b'"decision"' in payload
            except (OSError, http.client.HTTPException) as exc:
                ok, payload = False, str(exc).encode()
                conn.close()
                conn = connect()
            with lock:
                latencies.append(time.perf_counter() - t0)
                if not ok:
                    errors.append(payload[:200].decode(errors="replace"))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    p50, p95, p99 = (float(np.percentile(ms, q)) for q in (50, 95, 99))
    return {"clients": clients, "requests": len(latencies), "seconds": round(seconds, 3),
            "images_per_s": round(len(latencies) / seconds, 1), "p50_ms": round(p50, 1), "p95_ms": round(p95, 1),
            "p99_ms": round(p99, 1), "p99_over_p50": round(p99 / p50, 2), "errors": len(errors),
            "first_error": errors[0] if errors else None}


@contextlib.contextmanager
def _server(export: Path, threads: int | None, secure: bool, work: Path):
    """``(port, token, process)`` of ``riskcl serve EXPORT`` in its own process; ``secure``: with a token file and
    the decision log (in ``work``), else neither."""
    port = _free_port()
    token = None
    cmd = [sys.executable, "-m", "riskcl", "serve", str(export), "--port", str(port)]
    if secure:
        from riskcl.deploy.access import add_token

        token = add_token(work / "tokens.json", "bench")
        cmd += ["--tokens", str(work / "tokens.json"), "--log", str(work / "decisions.jsonl")]
    else:
        cmd += ["--log", ""]  # no log: the record's cost is what (d) measures
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the service did not start: {proc.stdout.read()[-2000:]}") from None
                time.sleep(0.5)
        yield port, token, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def service_load(export: Path, files: list[str], requests: int, levels: tuple[int, ...], threads: int | None) -> dict:
    """The service (no tokens, no log) under a closed loop at each level, and its memory before and after."""
    with tempfile.TemporaryDirectory(prefix="riskcl-bench-") as work, \
            _server(export, threads, False, Path(work)) as (port, token, proc):
        bodies = [_multipart(Path(f).read_bytes(), Path(f).name) for f in files]
        # Warm-up at every level: the first batches of each size allocate ONNX Runtime's arenas, and the first
        # concurrent requests start the server's worker threads; memory is measured from there on.
        for c in levels:
            _load(port, bodies, c, min(25 * c, requests), token)
        rss_before = _rss_mb(proc.pid)
        runs = []
        for c in levels:
            runs.append(_load(port, bodies, c, requests, token))
            runs[-1]["rss_after_mb"] = round(_rss_mb(proc.pid), 1)
        rss_after = _rss_mb(proc.pid)
        return {"levels": runs, "requests_total": requests * len(levels), "rss_before_mb": round(rss_before, 1),
                "rss_after_mb": round(rss_after, 1), "rss_growth": round(rss_after / rss_before - 1, 4)}


def trust_cost(export: Path, files: list[str], requests: int, threads: int | None, clients: int = 4,
               rounds: int = 3) -> dict:
    """The cost of trust: two services, one with tokens and the decision log, one with neither, loaded in turn
    (``rounds`` times each at ``clients`` clients, so that the machine's drift falls on both alike); the medians."""
    with tempfile.TemporaryDirectory(prefix="riskcl-bench-") as plain_dir, \
            tempfile.TemporaryDirectory(prefix="riskcl-bench-") as secure_dir, \
            _server(export, threads, False, Path(plain_dir)) as plain, \
            _server(export, threads, True, Path(secure_dir)) as secure:
        bodies = [_multipart(Path(f).read_bytes(), Path(f).name) for f in files]
        for port, token, _ in (plain, secure):
            _load(port, bodies, clients, min(25 * clients, requests), token)
        runs: dict[str, list[dict]] = {"plain": [], "secure": []}
        for _ in range(rounds):
            for name, (port, token, _) in (("plain", plain), ("secure", secure)):
                runs[name].append(_load(port, bodies, clients, requests, token))
        logged = (Path(secure_dir) / "decisions.jsonl").read_bytes().count(b"\n")
    median = {name: {key: float(np.median([r[key] for r in rs])) for key in ("images_per_s", "p50_ms", "p99_ms")}
              for name, rs in runs.items()}
    return {"clients": clients, "rounds": rounds, "requests_per_round": requests, **{
        f"{name}_{key}": value for name, m in median.items() for key, value in m.items()},
        "errors": sum(r["errors"] for rs in runs.values() for r in rs), "decisions_logged": logged,
        "throughput_cost": round(1 - median["secure"]["images_per_s"] / median["plain"]["images_per_s"], 3)}


def run(run_dir: str, export: str | None = None, batch: int = 32, images: int = 512, requests: int = 2000,
        levels: tuple[int, ...] = (1, 4, 16), repeat: int = 3, threads: int | None = None) -> dict:
    from riskcl.data import decode_rgb

    run_path = Path(run_dir)
    export_path = Path(export) if export else run_path / "export"
    if not (export_path / "riskcl_export.json").is_file():
        from riskcl.deploy.export import export_run

        export_run(run_path, export_path, "onnx")
    with tempfile.TemporaryDirectory(prefix="riskcl-bench-") as tmp:
        files, ids = _test_files(run_path, images, Path(tmp))
        decoded = [decode_rgb(f) for f in files]
        a, reference = ceiling(export_path, decoded, batch, repeat)
        b = predict_end_to_end(export_path, files, batch, Path(tmp), reference, run_path, ids, repeat)
        c = service_load(export_path, files, requests, levels, threads)
        d = trust_cost(export_path, files, requests, threads)
    at4 = next((r for r in c["levels"] if r["clients"] == 4), None)
    cost = d["throughput_cost"]
    meta = json.loads((export_path / "riskcl_export.json").read_text())
    return {
        "bench": "infer", "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "model": meta["run"].get("model"), "dataset": meta["run"].get("dataset"), "tta": meta["run"].get("tta"),
        "image_sizes": sorted({f"{im.shape[1]}x{im.shape[0]}" for im in decoded})[:5], "batch": batch,
        "a_ceiling": a, "b_predict": b, "b_over_a": round(b["images_per_s"] / a["images_per_s"], 3), "c_service": c,
        "d_tokens_and_log_at_4_clients": d,
        "targets": {"b_over_a_at_least_0.8": b["images_per_s"] >= 0.8 * a["images_per_s"],
                    "predict_decides_as_the_bare_session": b["decisions_as_bare_session"],
                    "predict_decides_as_the_run_predicted": b["decisions_as_run_predictions"],
                    "no_errors": all(r["errors"] == 0 for r in c["levels"]) and d["errors"] == 0,
                    "p99_within_3x_p50_at_4_clients": bool(at4 and at4["p99_ms"] <= 3 * at4["p50_ms"]),
                    "memory_growth_under_5pct": c["rss_growth"] < 0.05,
                    "record_costs_under_10pct_at_4_clients": cost < 0.10},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a finished run folder (its test split is the load)")
    p.add_argument("--export", default=None, help="its ONNX export (default RUN/export; made when missing)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--images", type=int, default=512, help="test images used")
    p.add_argument("--requests", type=int, default=2000, help="requests per load level")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--repeat", type=int, default=3, help="passes over the images for the ceiling")
    p.add_argument("--threads", type=int, default=None, help="the service's intra-op threads")
    a = p.parse_args()
    print(json.dumps(run(a.run, a.export, a.batch, a.images, a.requests, tuple(a.clients), a.repeat, a.threads)))


if __name__ == "__main__":
    main()
