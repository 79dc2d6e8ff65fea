"""DICOM in (riskcl.data.dicom): pixels as the modality stores them (rescale, window, MONOCHROME1, colour,
compressed transfer syntaxes, multi-frame policy), bad files named; and no patient data in anything riskcl writes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _standins import PHI, VL_PHOTOGRAPHIC, write_dicom
from conftest import BRAIN_MRI
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


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory):
    """Brain MRI images (24 glioma, 24 no tumour) as MR DICOM files carrying made-up identifying values, and a
    small run trained on them (calibrated, uncertified at alpha 0.5 by CRC: the tests need decisions, not a
    guarantee)."""
    if not BRAIN_MRI.is_dir():
        pytest.skip(f"Brain Tumor MRI data not found at {BRAIN_MRI} (set RISKCL_SHARED_DATA)")
    base = tmp_path_factory.mktemp("dicom")
    root = base / "images"
    for c in ("glioma", "notumor"):
        for k, src in enumerate(sorted((BRAIN_MRI / "Training" / c).glob("*.jpg"))[:24]):
            grey = np.asarray(Image.open(src).convert("L").resize((48, 48)))
            write_dicom(root / c / f"{c}_{k:03d}.dcm", grey.astype(np.uint16) * 16)
    (base / "tax.yaml").write_text("name: t\nbenign: [notumor]\nmalignant: [glioma]\n")
    cfg = base / "cfg.yaml"
    cfg.write_text(f"name: dicom\nepochs: 1\nprogress: false\ndata: {{name: folder, root: {root}, image_size: 16, "
                   f"options: {{taxonomy: {base / 'tax.yaml'}}}}}\nmodel: {{name: resnet10t, pretrained: false}}\n")
    run = base / "runs" / "run"
    assert main(["train", str(cfg), "--out", str(run), "--quiet"]) == 0
    assert main(["calibrate", str(run), "--alpha", "0.5", "--method", "crc", "--allow-uncertified"]) == 0
    return run, sorted(str(p) for p in root.rglob("*.dcm"))


def test_no_patient_data_in_anything_riskcl_writes(dicom_run, tmp_path, monkeypatch):
    """DICOM files carrying made-up identifying values in every such element go through train, predict (CSV and
    decision log), serve (an upload, and its decision log), card and report; no byte riskcl wrote holds any of
    those values in any common spelling."""
    from fastapi.testclient import TestClient

    from riskcl.deploy.serve import ServiceOptions, create_app

    run, files = dicom_run
    out = tmp_path / "written"
    out.mkdir()
    assert main(["predict", str(run), *files[:6], "--out", str(out / "p.csv"), "--log", str(out / "p.jsonl"),
                 "--quiet"]) == 0
    client = TestClient(create_app(run, options=ServiceOptions(log=str(out / "s.jsonl")), allow_uncertified=True))
    answer = client.post("/predict", files={"file": ("upload.dcm", Path(files[0]).read_bytes(), "application/dicom")})
    assert answer.status_code == 200 and answer.json()["decision"] in ("refer", "clear")
    assert main(["card", str(run), "--allow-uncertified"]) == 0
    assert main(["report", str(run.parent), "--out", str(out / "report"), "--bootstrap", "10"]) == 0
    monkeypatch.chdir(tmp_path)
    written = [p for d in (out, run) for p in d.rglob("*") if p.is_file()]
    assert len(written) > 20
    for p in written:
        data = p.read_bytes()
        for value in PHI.values():
            for spelling in _spellings(value):
                assert spelling.encode() not in data, (str(p), spelling)
    assert json.loads((out / "s.jsonl").read_text().splitlines()[0])["image"]["hmac_sha256"]


def _dciodvfy_errors(path: Path) -> list[str]:
    import subprocess

    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _sr_decision(ds) -> tuple[str, float | None, str]:
    """(decision code, p(malignant), referenced SOP Instance UID) read back from a riskcl SR with highdicom."""
    import highdicom as hd

    sr = hd.sr.ComprehensiveSR.from_dataset(ds) if not isinstance(ds, hd.sr.ComprehensiveSR) else ds
    group = sr.content.get_image_measurement_groups()[0]
    decision = group.get_qualitative_evaluations()[0].value.value
    p = [m.value for m in group.get_measurements() if m.name.value == "p-malignant"]
    return decision, (float(p[0]) if p else None), group.source_images[0].referenced_sop_instance_uid


def test_predict_writes_valid_dicom_results_that_say_what_the_csv_says(dicom_run, tmp_path):
    """predict --dicom-out: an SR (and a Secondary Capture of the saliency) per DICOM input, each valid by
    dciodvfy, read back by pydicom and highdicom; the SR's decision and p(malignant) equal the CSV's row and it
    references the source's study and instance; new UIDs; a PNG input gets no DICOM result, said so."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed; .ci/run installs it")
    run, files = dicom_run
    png = tmp_path / "plain.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(png)
    assert main(["predict", str(run), *files[:3], str(png), "--out", str(tmp_path / "p.csv"),
                 "--dicom-out", str(tmp_path / "dcm"), "--allow-uncertified", "--quiet"]) == 0
    rows = {r["image"]: r for r in __import__("csv").DictReader(open(tmp_path / "p.csv"))}
    written = sorted((tmp_path / "dcm").glob("*.dcm"))
    assert len(written) == 6  # an SR and a saliency capture per DICOM input; nothing for the PNG
    for path in written:
        assert _dciodvfy_errors(path) == [], path
        ds = pydicom.dcmread(path)
        source = pydicom.dcmread(next(f for f in files[:3] if Path(f).stem in path.name), stop_before_pixels=True)
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.SOPInstanceUID != source.SOPInstanceUID and ds.PatientID == source.PatientID
        if path.name.endswith("_sr.dcm"):
            decision, p, referenced = _sr_decision(ds)
            row = rows[next(f for f in files[:3] if Path(f).stem in path.name)]
            assert decision == row["decision"] and p == pytest.approx(float(row["p_malignant"]), abs=1e-6)
            assert referenced == source.SOPInstanceUID
            text = " ".join(str(e.value) for e in ds.iterall() if e.keyword == "TextValue")
            assert "model SHA-256 " in text and "Research use only" in text and "operating point" in text
        else:
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.pixel_array.shape[-1] == 3


def test_a_segmentation_model_writes_a_segmentation_on_the_source_grid(tmp_path):
    """A segmentation run's --dicom-out: an SR, a binary Segmentation whose frame equals the mask PNG predict
    wrote (on the source's own rows x columns), and a capture of the outline; all valid by dciodvfy."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed; .ci/run installs it")
    import highdicom as hd

    from riskcl.config import config_from_dict
    from riskcl.experiment import run_experiment

    cfg = config_from_dict({
        "name": "seg", "task": "segmentation", "epochs": 1, "progress": False,
        "data": {"name": "seg_demo", "image_size": 32, "options": {"scale": 0.1}, "calib_fraction": 0.2},
        "model": {"name": "resnet10t", "arch": "unet", "pretrained": False,
                  "options": {"decoder_channels": [32, 16, 8, 8, 4]}},
        "loss": {"name": "rcl-pixel"}, "optim": {"batch_size": 16, "lr": 0.003}})
    run = tmp_path / "seg"
    run_experiment(cfg, run)
    rgb = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    rgb[10:30, 15:40] = (200, 60, 60)
    source = write_dicom(tmp_path / "in" / "lesion.dcm", rgb, sop_class=VL_PHOTOGRAPHIC)
    assert main(["predict", str(run), str(source), "--out", str(tmp_path / "p.csv"), "--dicom-out",
                 str(tmp_path / "dcm"), "--quiet"]) in (0, 3)
    row = next(__import__("csv").DictReader(open(tmp_path / "p.csv")))
    kinds = {p.name.rsplit("_", 1)[1]: p for p in (tmp_path / "dcm").glob("*.dcm")}
    assert set(kinds) == {"sr.dcm", "seg.dcm", "sc.dcm"}
    for path in kinds.values():
        assert _dciodvfy_errors(path) == [], path
    seg = hd.seg.segread(kinds["seg.dcm"])
    frame = seg.get_pixels_by_source_instance([pydicom.dcmread(source).SOPInstanceUID], segment_numbers=[1])
    mask = np.asarray(Image.open(row["mask"])) > 0
    assert 0 < mask.mean() < 1  # an outline to compare, not an empty or full mask
    assert np.asarray(frame).reshape(mask.shape).astype(bool).tolist() == mask.tolist()
    assert _sr_decision(pydicom.dcmread(kinds["sr.dcm"]))[0] == row["decision"]


# -- the DICOM node against a real PACS ------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """Debian's Orthanc on local ports, with its own storage and a configuration that knows riskcl's node."""

    def __init__(self, folder: Path, node_port: int) -> None:
        self.folder, self.http, self.dicom = folder, _free_port(), _free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "riskcl-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [], "SaveJobs": False, "StableAge": 1,
            "DicomModalities": {"riskcl": ["RISKCL", "127.0.0.1", node_port]}}))
        self.process = None

    def start(self) -> "Orthanc":
        import subprocess
        import time

        import httpx

        self.process = subprocess.Popen([shutil.which("Orthanc"), str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=open(self.folder / "orthanc.log", "ab"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url("/system"), timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        pytest.skip(f"Orthanc did not start (see {self.folder / 'orthanc.log'})")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http}{path}"

    def upload(self, path: str) -> str:
        import httpx

        r = httpx.post(self.url("/instances"), content=Path(path).read_bytes(), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["ID"]

    def instances(self, modality: str) -> list[str]:
        import httpx

        r = httpx.post(self.url("/tools/find"), json={"Level": "Instance", "Query": {"Modality": modality}},
                       timeout=30)
        return r.json()

    def file(self, instance: str):
        import io

        import httpx

        return pydicom.dcmread(io.BytesIO(httpx.get(self.url(f"/instances/{instance}/file"), timeout=30).content))


def _wait(check, seconds: float = 60.0):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    return check()


@pytest.fixture(scope="module")
def pacs(dicom_run, tmp_path_factory):
    """Orthanc and riskcl's node (accepting ORTHANC only, sending results back to it), started once."""
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc (Debian orthanc) is not installed; .ci/run installs it")
    from riskcl.deploy.dicom_node import DicomNode

    base = tmp_path_factory.mktemp("pacs")
    port = _free_port()
    orthanc = Orthanc(base / "orthanc", port).start()
    node = DicomNode(dicom_run[0], port=port, accept=["ORTHANC"], send_to=f"ORTHANC@127.0.0.1:{orthanc.dicom}",
                     spool=base / "spool", log=base / "node.jsonl", allow_uncertified=True,
                     retry_max=1.0).start()
    yield orthanc, node
    node.stop()
    orthanc.stop()


def test_a_pacs_sends_images_to_the_node_and_files_its_reports(pacs, dicom_run):
    """Images stored in Orthanc are sent to the node by Orthanc (C-STORE to a configured modality); the node's SRs
    come back into Orthanc, each referencing its image, with the decision `riskcl predict` makes of the same
    file; the node's decision log verifies."""
    import httpx

    from riskcl.deploy.decision_log import verify_log
    from riskcl.deploy.scoring import predict_files

    orthanc, node = pacs
    run, files = dicom_run
    chosen = files[:2] + files[-2:]  # two glioma, two no tumour
    ids = [orthanc.upload(f) for f in chosen]
    r = httpx.post(orthanc.url("/modalities/riskcl/store"), json={"Resources": ids, "Synchronous": True},
                   timeout=120)
    assert r.status_code == 200, r.text
    reports = _wait(lambda: len(orthanc.instances("SR")) >= 4 and orthanc.instances("SR"))
    assert reports and len(reports) == 4
    expected = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: row["decision"]
                for f, row in zip(chosen, predict_files(run, chosen, allow_uncertified=True).rows)}
    got = {}
    for instance in reports:
        decision, _, referenced = _sr_decision(orthanc.file(instance))
        got[referenced] = decision
    assert got == expected
    assert len(orthanc.instances("OT")) >= 4 or node.pictures is False  # the saliency captures came back too
    assert verify_log([node.service.log.path]).ok


def test_the_node_rejects_strangers_and_answers_bad_data_with_a_status(pacs):
    """A calling AE title the node does not accept is rejected at association; a dataset without pixels gets a
    DICOM failure status (0xC210) with a comment; the node goes on (a C-ECHO after it succeeds)."""
    from pydicom.data import get_testdata_file
    from pynetdicom import AE
    from pynetdicom.sop_class import RTPlanStorage, Verification

    _, node = pacs
    stranger = AE(ae_title="STRANGER")
    stranger.add_requested_context(Verification)
    assoc = stranger.associate("127.0.0.1", node.port, ae_title="RISKCL")
    assert not assoc.is_established and assoc.is_rejected
    friend = AE(ae_title="ORTHANC")
    friend.add_requested_context(RTPlanStorage)
    friend.add_requested_context(Verification)
    assoc = friend.associate("127.0.0.1", node.port, ae_title="RISKCL")
    assert assoc.is_established
    status = assoc.send_c_store(pydicom.dcmread(get_testdata_file("rtplan.dcm")))
    assert status.Status == 0xC210 and "no pixel data" in status.ErrorComment
    assert assoc.send_c_echo().Status == 0x0000
    # a burst: beyond max_associations at once, associations are rejected (transiently) instead of queued
    held = [assoc] + [friend.associate("127.0.0.1", node.port, ae_title="RISKCL")
                      for _ in range(node.max_associations - 1)]
    assert all(a.is_established for a in held)
    extra = friend.associate("127.0.0.1", node.port, ae_title="RISKCL")
    assert extra.is_rejected
    for a in held:
        a.release()


def test_results_wait_in_the_spool_while_the_pacs_is_down(pacs, dicom_run):
    """With Orthanc stopped, an image sent to the node is decided and its results wait in the spool (nothing
    lost); once Orthanc is back they are sent and filed."""
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    orthanc, node = pacs
    _, files = dicom_run
    before = len(orthanc.instances("SR"))
    orthanc.stop()
    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RISKCL")
    source = pydicom.dcmread(files[5])
    assert assoc.send_c_store(source).Status == 0x0000
    assoc.release()
    assert _wait(lambda: node.state.last_send_error is not None, 30)
    assert node.pending()  # kept
    orthanc.start()
    assert _wait(lambda: not node.pending(), 60)
    reports = _wait(lambda: len(orthanc.instances("SR")) > before and orthanc.instances("SR"), 30)
    assert any(_sr_decision(orthanc.file(i))[2] == source.SOPInstanceUID for i in reports)


def test_the_dicom_node_command(dicom_run, tmp_path, capsys, monkeypatch):
    """`riskcl dicom-node`: refuses to listen beyond loopback without --accept (exit 2, the reason); started, it
    answers a C-ECHO and, on SIGTERM, says what it did."""
    import signal
    import subprocess
    import sys

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    run, _ = dicom_run
    monkeypatch.chdir(tmp_path)
    assert main(["dicom-node", str(run), "--host", "0.0.0.0", "--allow-uncertified"]) == 2
    assert "without --accept any modality could send images" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # a refused start leaves no log, key or spool behind
    port = _free_port()
    node = subprocess.Popen([sys.executable, "-m", "riskcl", "dicom-node", str(run), "--port", str(port),
                             "--allow-uncertified", "--log", str(tmp_path / "d.jsonl"), "--spool",
                             str(tmp_path / "spool")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on 127.0.0.1:" in node.stdout.readline()
        ae = AE(ae_title="ANYONE")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="RISKCL")
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        node.send_signal(signal.SIGTERM)  # what a service manager sends (pytest-xdist's workers ignore SIGINT)
        out, err = node.communicate(timeout=60)
    assert node.returncode == 0 and "received 0, decided 0" in out, err
