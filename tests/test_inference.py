"""Inference at production speed: the ONNX Runtime service without PyTorch, dynamic batching, streaming prediction."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import demo_png
from riskcl.cli import main
from riskcl.deploy.batching import MicroBatcher
from riskcl.deploy.export import export_run
from riskcl.deploy.scoring import UNREADABLE, ExportedModel, expand_inputs, predict_files
from riskcl.deploy.serve import TriageService, create_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """``(run, export)``: a calibrated copy of the tiny run and its ONNX export."""
    base = tmp_path_factory.mktemp("infer")
    run = base / "run"
    shutil.copytree(tiny_run[0], run)
    assert main(["calibrate", str(run), "--alpha", "0.2", "--method", "crc"]) == 0
    export_run(run, base / "export", "onnx")
    return run, base / "export"


def _pngs(folder: Path, n: int, size: tuple[int, int] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = demo_png(folder, i)
        if size:
            Image.open(p).resize(size, Image.BICUBIC).save(p)
        out.append(p)
    return out


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_export_service_answers_like_the_run_service(exported, tmp_path):
    run, export = exported
    images = _pngs(tmp_path / "a", 4) + _pngs(tmp_path / "b", 2, (37, 23))
    with TestClient(create_app(run)) as by_run, TestClient(create_app(export)) as by_export:
        for path in images:
            upload = {"file": (path.name, path.read_bytes(), "image/png")}
            a, b = by_run.post("/predict", files=upload).json(), by_export.post("/predict", files=upload).json()
            for key in ("decision", "predicted", "superclass", "threshold"):
                assert a[key] == b[key], key
            assert b["p_malignant"] == pytest.approx(a["p_malignant"], abs=1e-5)
            for c, p in a["probabilities"].items():
                assert b["probabilities"][c] == pytest.approx(p, abs=1e-5)
            assert isinstance(a["unusual"], bool) and b["unusual"] is None  # the input check needs the run folder
        model = by_export.get("/model").json()
        assert model["saliency"] is False and "onnxruntime" in model["format"] and not model["input_check_available"]
        assert model["operating_point"]["method"] == "crc" and model["certified"]
        no_map = by_export.post("/explain", files={"file": ("x.png", images[0].read_bytes(), "image/png")})
        assert no_map.status_code == 501 and "serve the run folder" in no_map.json()["error"]
        bad = by_export.post("/predict", files={"file": ("x.png", b"not an image", "image/png")})
        assert bad.status_code == 415 and by_export.get("/health").json()["status"] == "ok"
        assert by_run.get("/model").json()["saliency"] is True


NO_TORCH = """
import json, sys
sys.modules["torch"] = None  # any import of torch now fails
from fastapi.testclient import TestClient
from riskcl.cli import main
from riskcl.deploy.serve import create_app
export, image, out = sys.argv[1:4]
with TestClient(create_app(export)) as c:
    body = c.post("/predict", files={"file": ("x.png", open(image, "rb").read(), "image/png")}).json()
code = main(["predict", export, image, "--out", out, "--quiet"])
print(json.dumps({"body": body, "code": code, "torch": [m for m in sys.modules if m.startswith("torch")
                                                      and sys.modules[m] is not None]}))
"""


def test_the_export_path_imports_no_torch(exported, tmp_path):
    run, export = exported
    (image,) = _pngs(tmp_path, 1)
    out = tmp_path / "p.csv"
    done = subprocess.run([sys.executable, "-c", NO_TORCH, str(export), str(image), str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["torch"] == []
    (row,), *_ = predict_files(run, [str(image)])
    assert result["body"]["decision"] == row["decision"]
    assert result["body"]["p_malignant"] == pytest.approx(row["p_malignant"], abs=1e-5)
    (written,) = _read(out)
    assert float(written["p_malignant"]) == pytest.approx(row["p_malignant"], abs=1e-5) and written["error"] == ""


def test_dynamic_batching_gives_each_client_its_own_answer(exported, tmp_path):
    _, export = exported
    service = TriageService(export, max_batch=8, max_wait_ms=200)
    arrays = [np.asarray(Image.open(p)) for p in _pngs(tmp_path, 12)]
    alone = ExportedModel(export).probabilities(arrays)  # one model, each image scored on its own
    start = threading.Barrier(12)

    def ask(k: int):
        start.wait()
        return service.predict(arrays[k], f"img{k}")

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(12)))
    assert [a["image"] for a in answers] == [f"img{k}" for k in range(12)]
    for k, a in enumerate(answers):
        np.testing.assert_allclose(list(a["probabilities"].values()), alone[k], atol=1e-5)
    assert service.batcher.items == 12 and service.batcher.batches < 12  # images really shared calls


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    sizes = []

    def score(items):
        sizes.append(len(items))
        if "poison" in items:
            raise ValueError("bad batch")
        return [x.upper() for x in items]

    batcher = MicroBatcher(score, max_batch=4, max_wait_ms=1)
    with pytest.raises(ValueError, match="bad batch"):
        batcher("poison")
    assert batcher("ok") == "OK"
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(batcher, list("abcdefgh"))) == list("ABCDEFGH")
    assert max(sizes) <= 4
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(score, max_batch=0)


def test_predict_streams_a_folder_skips_what_is_scored_and_reports_unreadable_files(exported, tmp_path, capsys):
    _, export = exported
    folder = tmp_path / "archive"
    good = _pngs(folder, 5) + _pngs(folder / "nested", 1, (30, 40))
    corrupt = folder / "zz_corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("not an image: never listed")
    out = tmp_path / "scores.csv"
    assert main(["predict", str(export), str(folder), "--out", str(out), "--batch-size", "2", "--quiet"]) == 3
    rows = _read(out)
    assert sorted(r["image"] for r in rows) == sorted(map(str, [*good, corrupt]))
    (bad,) = [r for r in rows if r["decision"] == UNREADABLE]
    assert bad["image"] == str(corrupt) and "cannot decode" in bad["error"] and bad["p_malignant"] == ""
    reference, *_ = predict_files(export, [str(p) for p in good])
    by_image = {r["image"]: r for r in rows}
    for ref in reference:
        assert float(by_image[ref["image"]]["p_malignant"]) == pytest.approx(ref["p_malignant"], abs=1e-9)
    assert "1 unreadable" in capsys.readouterr().out

    # A rerun skips the scored images and retries the unreadable one (now repaired): no duplicate rows.
    Image.open(good[0]).save(corrupt, format="JPEG")
    capsys.readouterr()
    assert main(["predict", str(export), str(folder), "--out", str(out), "--quiet"]) == 0
    assert "6 already in" in capsys.readouterr().out
    rows = _read(out)
    assert len(rows) == 7 and len({r["image"] for r in rows}) == 7
    assert all(r["decision"] in ("refer", "clear") for r in rows)

    # A kill mid-line leaves a torn last row: it is dropped and scored again.
    text = out.read_text()
    out.write_text(text[:-25])
    assert main(["predict", str(export), str(folder), "--out", str(out), "--quiet"]) == 0
    assert _read(out) == rows

    # Another operating point never mixes into the same CSV.
    assert main(["predict", str(export), str(folder), "--out", str(out), "--threshold", "0.99", "--quiet"]) == 2
    assert "another --out" in capsys.readouterr().err
    assert _read(out) == rows


def test_predict_scores_batches_at_once_in_input_order_as_the_bare_session_does(exported, tmp_path):
    """predict on an export scores several batches at once (one single-threaded model call each): the rows and the
    decision log stay in input order, and every probability is the bare ONNX Runtime session's (its default
    threads), image by image."""
    import onnxruntime as ort

    from riskcl.data import decode_rgb
    from riskcl.deploy.decision_log import verify_log

    _, export = exported
    folder = tmp_path / "many"
    files = _pngs(folder, 9) + _pngs(folder / "odd", 3, (30, 40))  # two image sizes: separate graph calls
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    paths = [str(p) for p in files[:5]] + [str(corrupt)] + [str(p) for p in files[5:]]
    log = tmp_path / "decisions.jsonl"
    result = predict_files(export, paths, tmp_path / "p.csv", batch_size=2, threads=3, log=log)
    assert [r["image"] for r in result.rows] == paths
    assert [r["image"] for r in _read(tmp_path / "p.csv")] == paths
    assert result.rows[5]["decision"] == UNREADABLE

    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads((export / "riskcl_export.json").read_text())
    malignant = [c for c, level in zip(meta["classes"], meta["levels"]) if level > 0]
    decided = [r for r in result.rows if r["decision"] != UNREADABLE]
    for row in decided:
        probs, = session.run(["probabilities"], {"images": decode_rgb(row["image"])[None]})
        p_mal = float(sum(p for c, p in zip(meta["classes"], probs[0]) if c in malignant))
        assert row["p_malignant"] == pytest.approx(p_mal, abs=1e-6)
        assert row["decision"] == ("refer" if p_mal >= row["threshold"] else "clear")

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["p_malignant"] for line in lines] == [r["p_malignant"] for r in decided]
    assert verify_log([log]).ok


def test_a_prediction_csv_is_resumed_only_by_the_model_and_point_that_began_it(exported, tiny_run, tmp_path, capsys):
    """Two models at the same threshold, a swapped model, a lost record or an edited row: refused, never mixed."""
    run, export = exported
    images = [str(p) for p in _pngs(tmp_path / "img", 4)]
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), *images[:2], "--out", str(out), "--threshold", "0.5", "--quiet"]) == 0
    record = json.loads((tmp_path / "p.csv.riskcl.json").read_text())
    assert len(record["model_sha256"]) == 64 and record["operating_point"]["threshold"] == 0.5
    # another model (the same run with one bias changed) at the very same threshold
    other = tmp_path / "other"
    shutil.copytree(tiny_run[0], other)
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(other / "model.safetensors"))
    key = next(k for k in weights if k.endswith("fc.bias"))
    weights[key] = weights[key] + 1.0
    save_file(weights, str(other / "model.safetensors"))
    capsys.readouterr()
    assert main(["predict", str(other), *images, "--out", str(out), "--threshold", "0.5", "--quiet"]) == 2
    assert "scored by another model" in capsys.readouterr().err
    # the same run resumes
    assert main(["predict", str(run), *images, "--out", str(out), "--threshold", "0.5", "--quiet"]) == 0
    assert len(_read(out)) == 4
    # an edited decision, then a lost record
    rows = _read(out)
    rows[1]["decision"] = "clear" if rows[1]["decision"] == "refer" else "refer"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    assert main(["predict", str(run), *images, "--out", str(out), "--threshold", "0.5", "--quiet"]) == 2
    assert "the file was edited" in capsys.readouterr().err
    (tmp_path / "p.csv.riskcl.json").unlink()
    assert main(["predict", str(run), *images, "--out", str(out), "--threshold", "0.5", "--quiet"]) == 2
    assert "missing or unreadable" in capsys.readouterr().err
    # the export of the run is another file (another SHA-256): it starts its own CSV
    assert main(["predict", str(export), *images, "--out", str(tmp_path / "e.csv"), "--quiet"]) == 0


def _nan_run(tiny_run, dst):
    """A copy of the tiny run whose classifier bias is NaN: every probability it gives is NaN."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(tiny_run[0], dst)
    weights = load_file(str(dst / "model.safetensors"))
    key = next(k for k in weights if k.endswith("fc.bias"))
    weights[key] = np.full_like(weights[key], np.nan)
    save_file(weights, str(dst / "model.safetensors"))
    return dst


def test_a_non_finite_probability_is_never_decided(tiny_run, tmp_path, capsys):
    """predict: a row with decision 'error' and exit 3; serve: 422; an ensemble with such a member: the same; the
    decision rules themselves refuse NaN."""
    from riskcl.decision import decide
    from riskcl.experiment.ensemble import make_ensemble
    from riskcl.taxonomy import Taxonomy

    bad = _nan_run(tiny_run, tmp_path / "nan")
    images = [str(p) for p in _pngs(tmp_path / "img", 2)]
    out = tmp_path / "p.csv"
    assert main(["predict", str(bad), *images, "--out", str(out), "--quiet"]) == 3
    assert "2 refused" in capsys.readouterr().out
    rows = _read(out)
    assert [r["decision"] for r in rows] == ["error", "error"] and all("non-finite" in r["error"] for r in rows)
    assert all(r["p_malignant"] == "" for r in rows)
    client = TestClient(create_app(bad))
    answer = client.post("/predict", files={"file": ("a.png", open(images[0], "rb").read(), "image/png")})
    assert answer.status_code == 422 and "non-finite" in answer.json()["error"]
    assert client.get("/health").json() == {"status": "ok"}  # and it keeps serving
    make_ensemble([tiny_run[0], bad], tmp_path / "ens")
    rows = predict_files(tmp_path / "ens", images).rows
    assert [r["decision"] for r in rows] == ["error", "error"]
    tax = Taxonomy("t", ("nevus", "mel"), (0, 1))
    with pytest.raises(ValueError, match="non-finite score is never decided"):
        decide([[np.nan, np.nan]], tax)


def test_inputs_expand_from_globs_and_bad_inputs_are_named(exported, tmp_path, capsys):
    _, export = exported
    pngs = _pngs(tmp_path / "g", 3)
    assert expand_inputs([str(tmp_path / "g" / "*.png"), str(pngs[0])]) == sorted(map(str, pngs))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.dcm")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        expand_inputs([str(tmp_path / "empty")])
    missing = str(tmp_path / "gone.png")
    result = predict_files(export, [missing, str(pngs[0])])
    assert [r["decision"] for r in result.rows][0] == UNREADABLE and "not found" in result.rows[0]["error"]
    assert result.summary.unreadable == [missing] and result.summary.scored == 1
    assert main(["predict", str(export), str(pngs[0]), "--default-rule"]) == 2
    assert "--default-rule cannot undo it" in capsys.readouterr().err
    # Without --out the CSV goes to standard output, the log to standard error.
    assert main(["predict", str(export), str(pngs[1]), "--quiet"]) == 0
    captured = capsys.readouterr()
    (row,) = list(csv.DictReader(io.StringIO(captured.out)))
    assert row["image"] == str(pngs[1]) and "operating point" in captured.err


def test_app_factory_for_uvicorn_workers(exported, monkeypatch):
    from riskcl.deploy.serve import app_from_env

    monkeypatch.delenv("RISKCL_SERVE_MODEL", raising=False)
    with pytest.raises(ValueError, match="RISKCL_SERVE_MODEL"):
        app_from_env()
    monkeypatch.setenv("RISKCL_SERVE_MODEL", str(exported[1]))
    monkeypatch.setenv("RISKCL_SERVE_THREADS", "1")
    assert app_from_env().state.service.scorer.kind == "export"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RISKCL_SKIP_INSTALL_TEST") == "1", reason="RISKCL_SKIP_INSTALL_TEST=1")
def test_the_serve_install_needs_no_torch(exported, tmp_path):
    """A fresh venv with riskcl (--no-deps) and the `serve` extra's requirements: no torch, and it serves."""
    from riskcl.requirements import extra_requirements

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, *extra_requirements("serve"), "httpx"], capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0 and "Could not find a version" in done.stderr + done.stdout:
        pytest.skip(f"the package index is unreachable: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, timeout=600, capture_output=True)
    py = str(venv / "bin" / "python")
    assert subprocess.run([py, "-c", "import torch"], capture_output=True).returncode != 0
    (image,) = _pngs(tmp_path, 1)
    served = subprocess.run([py, "-c", NO_TORCH, str(exported[1]), str(image), str(tmp_path / "p.csv")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert served.returncode == 0, served.stderr[-2000:]
    result = json.loads(served.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["body"]["decision"] in ("refer", "clear")
    reqs = subprocess.run([py, "-m", "riskcl.requirements", "serve"], capture_output=True, text=True, cwd=tmp_path)
    assert "onnxruntime" in reqs.stdout


def test_the_inference_benchmark_runs_in_small_form(exported):
    """benchmarks/bench_infer.py with small counts, so that it cannot rot (the full figures: benchmarks/RESULTS.md)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_infer

    run, export = exported
    r = bench_infer.run(str(run), str(export), batch=8, images=16, requests=12, levels=(1, 4), repeat=1)
    assert r["a_ceiling"]["images_per_s"] > 0 and r["b_predict"]["images"] == 16
    assert [level["clients"] for level in r["c_service"]["levels"]] == [1, 4]
    assert all(level["requests"] == 12 and level["errors"] == 0 for level in r["c_service"]["levels"])
    assert set(r["targets"]) == {"b_over_a_at_least_0.8", "no_errors", "p99_within_3x_p50_at_4_clients",
                                 "record_costs_under_10pct_at_4_clients", "memory_growth_under_5pct",
                                 "predict_decides_as_the_bare_session", "predict_decides_as_the_run_predicted"}
    assert r["targets"]["predict_decides_as_the_bare_session"] and r["b_predict"]["batches_at_once"] >= 1
    assert r["targets"]["predict_decides_as_the_run_predicted"]
    secure = r["d_tokens_and_log_at_4_clients"]
    # authenticated and recorded, every one (the warm-up's 12 and three rounds of 12)
    assert secure["rounds"] == 3 and secure["errors"] == 0 and secure["decisions_logged"] == 12 + 3 * 12
