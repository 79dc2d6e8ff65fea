"""DICOM in (riskcl.data.dicom): pixels as the modality stores them (rescale, window, MONOCHROME1, colour,
compressed transfer syntaxes, multi-frame policy), bad files named; and no patient data in anything riskcl writes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _standins import PHI, write_dicom
from conftest import BRAIN_MRI, needs_brain_mri
from riskcl.cli import main
from riskcl.data import decode_rgb
from riskcl.data.decoding import BadImageError, decode_bytes
from riskcl.data.dicom import DicomPolicy

pydicom = pytest.importorskip("pydicom", reason="the DICOM tests need pydicom (pip install 'riskcl[dicom]')")


def test_greyscale_goes_through_the_modality_lut_the_window_and_monochrome1(tmp_path):
    ramp = np.tile(np.arange(0, 4000, 50, dtype=np.uint16), (16, 1))  # 16 x 80, stored values 0..3950
    plain = decode_rgb(write_dicom(tmp_path / "a.dcm", ramp))
    assert plain.shape == (16, 80, 3) and plain[0, 0, 0] == 0 and plain[0, -1, 0] == 255  # its own range
    # rescale slope / intercept change nothing after the own-range scaling ...
    rescaled = decode_rgb(write_dicom(tmp_path / "b.dcm", ramp, RescaleSlope=2, RescaleIntercept=-1024))
    np.testing.assert_array_equal(rescaled, plain)
    # ... but a window in the header does: values beyond it saturate (centre 1000, width 400 on HU = 2x - 1024)
    windowed = decode_rgb(write_dicom(tmp_path / "c.dcm", ramp, RescaleSlope=2, RescaleIntercept=-1024,
                                      WindowCenter=1000, WindowWidth=400))
    hu = 2 * ramp[0].astype(float) - 1024
    assert (windowed[0, hu < 800, 0] == 0).all() and (windowed[0, hu > 1200, 0] == 255).all()
    assert 0 < windowed[0, np.argmin(np.abs(hu - 1000)), 0] < 255
    none = decode_rgb(write_dicom(tmp_path / "d.dcm", ramp, WindowCenter=1000, WindowWidth=400),
                      DicomPolicy(window="none"))
    np.testing.assert_array_equal(none, plain)
    mine = decode_rgb(write_dicom(tmp_path / "e.dcm", ramp), DicomPolicy(window=[500, 100]))
    assert mine[0, ramp[0] < 450, 0].max() == 0 and mine[0, ramp[0] > 550, 0].min() == 255
    inverted = decode_rgb(write_dicom(tmp_path / "f.dcm", ramp, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(inverted, 255 - plain)


def test_colour_compressed_and_extensionless_files(tmp_path):
    from pydicom.data import get_testdata_file

    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_rgb(write_dicom(tmp_path / "rgb.dcm", rgb)), rgb)
    raw = decode_rgb(get_testdata_file("MR_small.dcm"))
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):  # lossless: the very same pixels
        np.testing.assert_array_equal(decode_rgb(get_testdata_file(name)), raw)
    assert decode_rgb(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")).shape == (100, 100, 3)
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "IM0001")  # a PACS export's name: no extension
    assert decode_rgb(tmp_path / "IM0001").shape == (128, 128, 3)
    assert decode_bytes((tmp_path / "IM0001").read_bytes(), "upload").shape == (128, 128, 3)


def test_multi_frame_follows_the_policy_and_bad_files_are_named(tmp_path, monkeypatch):
    frames = np.stack([np.full((12, 12), v, np.uint16) for v in (10, 20, 30)])
    frames[1, 0, 0] = 0  # the middle frame is the one with a dark pixel
    path = tmp_path / "multi.dcm"
    write_dicom(path, frames[0], frames=3)
    ds = pydicom.dcmread(path)
    ds.PixelData = frames.tobytes()
    ds.save_as(path)
    middle = decode_rgb(path)
    assert middle[0, 0, 0] == 0 and middle[5, 5, 0] == 255
    with pytest.raises(BadImageError, match=r"multi-frame image \(3 frames\) refused"):
        decode_rgb(path, DicomPolicy(frames="refuse"))
    from pydicom.data import get_testdata_file

    with pytest.raises(BadImageError, match="no pixel data"):
        decode_rgb(get_testdata_file("rtplan.dcm"))
    full = (tmp_path / "multi.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(full[:len(full) // 2])
    with pytest.raises(BadImageError, match="cut.dcm: DICOM: .*(truncated|not a readable)"):
        decode_rgb(tmp_path / "cut.dcm")
    monkeypatch.setenv("RISKCL_MAX_PIXELS", "100")
    with pytest.raises(BadImageError, match="refused: image of 12 x 12 pixels .* refused before decoding"):
        decode_rgb(path)
    with pytest.raises(ValueError, match="data.dicom.frames"):
        DicomPolicy.from_config({"frames": "first"})


def _spellings(value: str) -> set[str]:
    out = {value, value.lower(), value.upper(), value.replace("^", " "), value.replace("^", ", ")}
    if value.isdigit() and len(value) == 8:
        out |= {f"{value[:4]}-{value[4:6]}-{value[6:]}", f"{value[6:]}.{value[4:6]}.{value[:4]}"}
    return {s for s in out if len(s) >= 5}


@needs_brain_mri
def test_no_patient_data_in_anything_riskcl_writes(tmp_path, monkeypatch):
    """DICOM files carrying made-up identifying values in every such element go through train, predict (CSV and
    decision log), serve (an upload, and its decision log), card and report; no byte riskcl wrote holds any of
    those values in any common spelling."""
    from fastapi.testclient import TestClient

    from riskcl.deploy.serve import ServiceOptions, create_app

    root = tmp_path / "dicom"
    for c in ("glioma", "notumor"):
        for k, src in enumerate(sorted((BRAIN_MRI / "Training" / c).glob("*.jpg"))[:24]):
            grey = np.asarray(Image.open(src).convert("L").resize((48, 48)))
            write_dicom(root / c / f"{c}_{k:03d}.dcm", grey.astype(np.uint16) * 16)
    (tmp_path / "tax.yaml").write_text("name: t\nbenign: [notumor]\nmalignant: [glioma]\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"name: dicom\nepochs: 1\nprogress: false\ndata: {{name: folder, root: {root}, image_size: 16, "
                   f"options: {{taxonomy: {tmp_path / 'tax.yaml'}}}}}\nmodel: {{name: resnet10t, pretrained: false}}\n")
    out = tmp_path / "written"
    run = out / "run"
    assert main(["train", str(cfg), "--out", str(run), "--quiet"]) == 0
    assert main(["calibrate", str(run), "--alpha", "0.5", "--method", "crc", "--allow-uncertified"]) == 0
    files = sorted(str(p) for p in root.rglob("*.dcm"))
    assert main(["predict", str(run), *files[:6], "--out", str(out / "p.csv"), "--log", str(out / "p.jsonl"),
                 "--quiet"]) == 0
    client = TestClient(create_app(run, options=ServiceOptions(log=str(out / "s.jsonl")), allow_uncertified=True))
    answer = client.post("/predict", files={"file": ("upload.dcm", Path(files[0]).read_bytes(), "application/dicom")})
    assert answer.status_code == 200 and answer.json()["decision"] in ("refer", "clear")
    assert main(["card", str(run), "--allow-uncertified"]) == 0
    assert main(["report", str(run.parent), "--out", str(out / "report"), "--bootstrap", "10"]) == 0
    monkeypatch.chdir(tmp_path)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) > 20
    for p in written:
        data = p.read_bytes()
        for value in PHI.values():
            for spelling in _spellings(value):
                assert spelling.encode() not in data, (str(p), spelling)
    assert json.loads((out / "s.jsonl").read_text().splitlines()[0])["image"]["hmac_sha256"]
