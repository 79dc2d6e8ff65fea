"""Exported models (riskcl.deploy.export): ONNX Runtime and TorchScript decide exactly as riskcl does."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from conftest import demo_png
from riskcl.cli import main
from riskcl.data import decode_rgb
from riskcl.deploy.export import ExportParityError, export_run
from riskcl.deploy.scoring import predict_files


@pytest.fixture(scope="module")
def calibrated(tiny_run, tmp_path_factory):
    import shutil

    run = tmp_path_factory.mktemp("exp") / "run"
    shutil.copytree(tiny_run[0], run)
    assert main(["calibrate", str(run), "--alpha", "0.2", "--method", "crc"]) == 0
    return run


def _images(tmp_path, n, size):
    """Demo test images written as PNGs at another size (w, h): riskcl decodes and resizes them itself."""
    paths = []
    for i in range(n):
        p = demo_png(tmp_path, i)
        q = tmp_path / f"sized_{size[0]}x{size[1]}_{i}.png"
        Image.open(p).resize(size, Image.BICUBIC).save(q)
        paths.append(str(q))
    return paths


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_decides_exactly_as_riskcl_predict(calibrated, tmp_path, fmt):
    out = tmp_path / fmt
    meta = export_run(calibrated, out, fmt)
    cal = json.loads((calibrated / "calibration.json").read_text())
    assert meta["operating_point"]["threshold"] == cal["threshold"] and meta["operating_point"]["method"] == "crc"
    assert meta["parity"]["decision_flips"] == 0 and meta["parity"]["max_abs_diff_p_malignant"] <= 1e-4
    assert meta["classes"] == ["nevus", "keratosis", "melanoma", "carcinoma"]
    assert json.loads((out / "riskcl_export.json").read_text()) == json.loads(json.dumps(meta))
    if fmt == "onnx":
        props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
        assert json.loads(props["riskcl"])["weights_sha256"] == meta["weights_sha256"]
        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        run = lambda batch: session.run(None, {"images": batch})  # noqa: E731
    else:
        module = torch.jit.load(str(out / "model.pt"))
        run = lambda batch: [t.numpy() for t in module(torch.from_numpy(batch))]  # noqa: E731
    # Two image sizes, batch 7 and batch 1, through the exported file alone.
    for paths in (_images(tmp_path, 7, (41, 29)), _images(tmp_path, 1, (23, 57))):
        probs, p_mal, refer, label = run(np.stack([decode_rgb(p) for p in paths]))
        rows, *_ = predict_files(calibrated, paths, calibrated=True)
        assert probs.shape == (len(paths), 4) and refer.dtype == bool
        assert [r["decision"] == "refer" for r in rows] == refer.tolist()
        assert [r["predicted"] for r in rows] == [meta["classes"][k] for k in label]
        np.testing.assert_allclose(p_mal, [r["p_malignant"] for r in rows], atol=1e-5)


def test_uncalibrated_export_records_the_default_rule(tiny_run, tmp_path):
    meta = export_run(tiny_run[0], tmp_path / "e", "onnx", check_limit=16)
    op = meta["operating_point"]
    assert op["threshold"] == 0.5 and op["method"] == "default" and "not calibrated" in op["how"]
    assert op["rule"] == "superclass" and op["certified"] is False


def test_parity_failure_and_corrupt_runs_are_clear(calibrated, tmp_path, capsys, tiny_run):
    with pytest.raises(ExportParityError, match="does not decide as riskcl does.*nothing exported.*saved test "
                       "predictions"):
        export_run(calibrated, tmp_path / "strict", "torchscript", check_limit=8, tolerance=-1.0)
    assert not (tmp_path / "strict").exists()  # a model that fails parity is never shipped
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run[0], broken)
    (broken / "model.safetensors").write_bytes(b"junk")
    assert main(["export", str(broken), "--out", str(tmp_path / "x")]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    img = demo_png(tmp_path)
    assert main(["export", str(calibrated), "--out", str(tmp_path / "c"), "--format", "torchscript",
                 "--check-images", str(img)]) == 0
    assert "parity against riskcl predict" in capsys.readouterr().out


def test_the_docs_onnx_snippet_classifies_a_jpeg(calibrated, tmp_path, capsys):
    """docs/deploy.md's dozen lines, run as written (only the export folder and the image replaced), with nothing
    but onnxruntime, numpy and Pillow, decide as riskcl predict does."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    block = re.search(r"```python\n(import json, sys, numpy as np, onnxruntime as ort\n.*?)```", page,
                      re.S).group(1)
    assert len(block.strip().splitlines()) <= 12 and "riskcl" not in block.replace('"riskcl"', "")
    export_run(calibrated, tmp_path / "export", "onnx", check_limit=8)
    jpeg = tmp_path / "lesion.jpg"
    Image.open(demo_png(tmp_path)).save(jpeg, quality=95)
    image_line = 'sorted(Path("demo_images/melanoma").glob("*.png"))[0]'
    assert image_line in block
    code = block.replace("runs/first/export", str(tmp_path / "export")).replace(image_line, repr(str(jpeg)))
    exec(compile(code, "docs/deploy.md", "exec"), {})
    out = capsys.readouterr().out
    (row,), *_ = predict_files(calibrated, [str(jpeg)], calibrated=True)
    assert out.startswith(row["decision"].upper()) and row["predicted"] in out


def test_export_and_card_on_a_users_csv_data(tmp_path, capsys):
    """A user's own CSV data set (files at their own sizes): the parity check decodes the source files."""
    import pandas as pd
    import yaml

    from _standins import seed_of, write_image
    from _tiny import TINY

    root = tmp_path / "data"
    rows = []
    for c in ("calm", "angry"):
        for i in range(16):
            write_image(root / f"{c}{i}.png", seed_of(c, i), size=20 + i)  # many sizes
            rows.append({"path": f"{c}{i}.png", "label": c, "group": f"p{i // 2}{c}", "site": "ab"[i % 2]})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    cfg = {**TINY, "epochs": 1, "data": {"name": "csv", "root": str(root), "image_size": 12, "options": {
        "taxonomy": {"name": "t", "benign": ["calm"], "malignant": ["angry"]}, "metadata": ["site"]}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    meta = export_run(tmp_path / "run", tmp_path / "exp", "onnx")
    assert meta["parity"]["decision_flips"] == 0 and len(meta["parity"]["image_sizes"]) > 1
    assert main(["card", str(tmp_path / "run"), "--bootstrap", "20", "--export", str(tmp_path / "exp")]) == 0
    assert "parity on" in (tmp_path / "run" / "MODEL_CARD.md").read_text()


@pytest.fixture(scope="module")
def two_exports(calibrated, tiny_run, tmp_path_factory):
    """The calibrated run's ONNX export and the uncalibrated tiny run's (another operating point)."""
    base = tmp_path_factory.mktemp("exports")
    export_run(calibrated, base / "a", "onnx", check_limit=16)
    export_run(tiny_run[0], base / "b", "onnx", check_limit=16)
    return base / "a", base / "b"


def _tampered(src, dst, how):
    import shutil

    shutil.copytree(src, dst)
    meta_path = dst / "riskcl_export.json"
    meta = json.loads(meta_path.read_text())
    how(dst, meta)
    meta_path.write_text(json.dumps(meta))
    return dst


def _rehash(dst, meta):
    from riskcl.io import file_sha256

    meta["files_sha256"]["model.onnx"] = file_sha256(dst / "model.onnx")


TAMPERING = {
    "threshold edited": (lambda d, m: m["operating_point"].update(threshold=0.01), "`operating_point` differs"),
    "another run's model copied in": (lambda d, m: (d / "model.onnx").write_bytes(
        (d.parent / "b" / "model.onnx").read_bytes()), "not the file that was recorded"),
    "... and its hash recorded": (lambda d, m: ((d / "model.onnx").write_bytes(
        (d.parent / "b" / "model.onnx").read_bytes()), _rehash(d, m)), "differs from the one embedded"),
    "bytes flipped": (lambda d, m: (d / "model.onnx").write_bytes(
        (d / "model.onnx").read_bytes()[:-40] + bytes(40)), "not the file that was recorded"),
    "truncated, hash recorded": (lambda d, m: ((d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:999]),
                                               _rehash(d, m)), "ONNX Runtime cannot load it"),
    "a path outside the folder": (lambda d, m: m.update(file="../b/model.onnx"), "not a plain file name"),
    "decode.py changed": (lambda d, m: (d / "decode.py").write_text("print('hi')\n"), "decode.py: a file of the"),
    "no operating point": (lambda d, m: m.pop("operating_point"), r"no \['operating_point'\]"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_an_edited_or_swapped_export_is_never_scored_or_served(two_exports, tmp_path, capsys, case):
    """Every file is checked against its recorded SHA-256 and the JSON against the graph's own metadata, before
    predict or serve uses the folder: a refer must never become a clear through an edit."""
    from riskcl.deploy.serve import create_app

    how, match = TAMPERING[case]
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "b").symlink_to(two_exports[1])
    dst = _tampered(two_exports[0], tmp_path / "cases" / "a", how)
    img = demo_png(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        predict_files(dst, [img])
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        create_app(dst)
    assert main(["predict", str(dst), str(img)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 2
    assert predict_files(two_exports[0], [img]).rows[0]["decision"] in ("refer", "clear")  # the original still works


def test_an_export_folder_without_its_json_is_named_as_such(two_exports, tmp_path, capsys):
    import shutil

    shutil.copytree(two_exports[0], tmp_path / "e")
    (tmp_path / "e" / "riskcl_export.json").unlink()
    assert main(["predict", str(tmp_path / "e"), str(demo_png(tmp_path))]) == 2
    assert "holds an exported model but no riskcl_export.json" in capsys.readouterr().err
