"""One operating point everywhere (riskcl.decision.OperatingPoint): the numbers calibration certified are the numbers
predict, the service and the exported model compute; an uncertified calibration fails; the clinical cost is 0 for a
correct decision."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _tiny import tiny
from riskcl.cli import main
from riskcl.decision import OperatingPoint
from riskcl.deploy.export import OUTPUTS, export_run
from riskcl.deploy.scoring import predict_files
from riskcl.deploy.serve import create_app
from riskcl.experiment import RunFolder, calibrate_run, run_experiment
from riskcl.experiment.calibrate import UncertifiedError, operating_point
from riskcl.metrics import malignant_probability, mean_cost
from riskcl.taxonomy import Taxonomy, loss_weight_matrix, resolve_cost_matrix


# --- the dataclass ----------------------------------------------------------------------------------------------
def test_probabilities_apply_the_temperature_and_group_thresholds_their_fallback():
    op = OperatingPoint(threshold=0.4, method="ltt", temperature=2.0, alpha=0.1, delta=0.1, certified=True,
                        split="calib", by="sex", groups={"f": {"threshold": 0.2}}, fallback=0.3)
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    e = np.exp([1.0, 0.0])  # logits / T
    assert op.probabilities(logits)[0] == pytest.approx(e / e.sum())
    assert op.thresholds(["f", "m"]).tolist() == [0.2, 0.3]
    assert op.thresholds(None) == 0.4  # no group known: the pooled threshold
    tax = Taxonomy("t", ("b", "m"), (0, 1))
    probs = np.array([[0.75, 0.25], [0.75, 0.25]])   # p(malignant) 0.25: refer at 0.2, clear at 0.3
    assert op.decide(probs, tax, ["f", "m"]).tolist() == [1, 0]
    back = OperatingPoint.from_dict(json.loads(json.dumps(op.to_dict())))
    assert back == op and back.groups == op.groups and "per 'sex' group" in op.describe()


@pytest.mark.parametrize("kwargs,match", [({"threshold": 1.5}, "threshold"), ({"temperature": 0.0}, "temperature"),
                                          ({"tta": "rotate"}, "tta"), ({"method": "guess"}, "method")])
def test_bad_operating_points_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OperatingPoint(**kwargs)


# --- the clinical cost --------------------------------------------------------------------------------------------
def test_clinical_cost_is_zero_for_a_correct_decision_and_the_loss_keeps_the_papers_weights():
    tax = Taxonomy("t", ("b1", "b2", "m1"), (0, 0, 1))
    cost = resolve_cost_matrix(tax, 5, 20, within=0.5)
    assert cost.tolist() == [[0, 0.5, 5], [0.5, 0, 5], [20, 20, 0]]
    assert mean_cost(np.array([0, 1, 2]), np.array([0, 1, 2]), cost) == 0.0  # all correct costs nothing
    assert np.diag(loss_weight_matrix(cost)).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="no error would cost anything"):
        resolve_cost_matrix(tax, matrix=np.zeros((3, 3)))


# --- a run with flip TTA, calibrated with a temperature ------------------------------------------------------------
@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
    """A tiny run trained with `tta: flip`, calibrated by CRC after temperature scaling."""
    out = tmp_path_factory.mktemp("runs") / "tta"
    run_experiment(tiny(tta="flip"), out)
    cal = calibrate_run(out, alpha=0.2, method="crc", temperature=True)
    assert cal["certified"] and cal["temperature"] != 1.0 and cal["tta"] == "flip"
    return out


@pytest.fixture(scope="module")
def test_images(tta_run, tmp_path_factory):
    """The run's first 40 test images as PNG files, with their ids."""
    folder = RunFolder(tta_run)
    from riskcl.data import load_source_images

    cfg = folder.read_config()
    test = folder.splits()
    test = test.loc[test["split"] == "test"].head(40)
    arrays = load_source_images(cfg.data.name, cfg.data.root, test["path"].tolist(), **cfg.data.options)
    d = tmp_path_factory.mktemp("png")
    paths = []
    for i, arr in zip(test["id"], arrays):
        paths.append(d / f"{i}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths, test["id"].tolist()


def _saved(folder: RunFolder, ids: list[str], op: OperatingPoint) -> np.ndarray:
    saved = folder.predictions("test")
    row = {str(i): k for k, i in enumerate(saved["ids"])}
    return op.probabilities(saved["logits"][[row[str(i)] for i in ids]])


def test_predict_serve_and_export_reproduce_the_numbers_calibration_saw(tta_run, test_images, tmp_path):
    folder = RunFolder(tta_run)
    tax = folder.taxonomy()
    op = operating_point(folder)
    assert op.tta == "flip" and op.temperature != 1.0 and op.method == "crc"
    paths, ids = test_images
    expected = malignant_probability(_saved(folder, ids, op), tax)
    # predict (no flag: the calibrated point is the run's point)
    rows, used, _ = predict_files(tta_run, [str(p) for p in paths])
    assert used == op
    got = np.array([r["p_malignant"] for r in rows])
    assert np.abs(got - expected).max() < 1e-5
    assert [r["decision"] == "refer" for r in rows] == (expected >= op.threshold).tolist()
    # the service
    with TestClient(create_app(tta_run)) as client:
        for p, e in zip(paths[:8], expected[:8]):
            body = client.post("/predict", files={"file": (p.name, p.read_bytes(), "image/png")}).json()
            assert body["p_malignant"] == pytest.approx(e, abs=1e-5) and body["threshold"] == op.threshold
    # the exported graph holds the TTA and the temperature, and its parity check used the saved predictions
    meta = export_run(tta_run, tmp_path / "export", check_limit=64)
    refs = [c["reference"] for c in meta["parity"]["checks"]]
    assert any("saved test predictions" in r for r in refs) and meta["parity"]["decision_flips"] == 0
    assert meta["operating_point"]["temperature"] == op.temperature and meta["operating_point"]["tta"] == "flip"
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "export" / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == [o["name"] for o in meta["outputs"]] == list(OUTPUTS)
    batch = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    p_mal = session.run(["p_malignant"], {"images": batch})[0]
    assert np.abs(p_mal - expected).max() < 1e-4


def test_the_decisions_reproduce_calibration_jsons_test_numbers(tta_run):
    folder = RunFolder(tta_run)
    cal, op, tax = folder.calibration(), operating_point(folder), folder.taxonomy()
    test = folder.predictions("test")
    labels = op.decide(op.probabilities(test["logits"]), tax)
    malignant = tax.superclass[test["target"]] == 1
    missed = int(np.sum(malignant & (tax.superclass[labels] == 0)))
    assert missed == cal["test"]["type_ii"] and missed / malignant.sum() == pytest.approx(cal["test"]["cer"])


def test_every_command_says_which_point_it_used_and_takes_overrides(tta_run, test_images, capsys):
    paths, _ = test_images
    assert main(["predict", str(tta_run), str(paths[0])]) == 0
    out = capsys.readouterr()
    assert "operating point:" in out.err and "chosen by crc" in out.err and out.out.startswith("image,decision")
    assert main(["predict", str(tta_run), str(paths[0]), "--threshold", "0.9"]) == 0
    assert "threshold given by hand" in capsys.readouterr().err
    assert main(["predict", str(tta_run), str(paths[0]), "--default-rule"]) == 0
    assert "the default rule" in capsys.readouterr().err
    assert main(["evaluate", str(tta_run)]) == 0
    assert "operating point: refer when p(malignant) after temperature scaling" in capsys.readouterr().out


# --- failing safely -----------------------------------------------------------------------------------------------
def test_an_uncertified_calibration_fails_and_is_refused_downstream(tiny_copy, tmp_path, capsys):
    assert main(["calibrate", str(tiny_copy), "--alpha", "0.001"]) == 2
    err = capsys.readouterr().err
    assert "no threshold could be certified" in err and "smallest alpha this calibration set can certify" in err
    assert not RunFolder(tiny_copy).file("calibration").exists()  # nothing written
    smallest = float(err.split("can certify is ")[1].split(".")[0] + "." + err.split("can certify is ")[1]
                     .split(".")[1][:4])
    assert main(["calibrate", str(tiny_copy), "--alpha", str(round(smallest + 0.01, 3))]) == 0  # it really can
    assert main(["calibrate", str(tiny_copy), "--alpha", "0.001", "--allow-uncertified"]) == 0
    assert "NOT CERTIFIED" in capsys.readouterr().out
    with pytest.raises(UncertifiedError, match="--allow-uncertified"):
        export_run(tiny_copy, tmp_path / "e", check_limit=8)
    with pytest.raises(UncertifiedError):
        create_app(tiny_copy)
    assert main(["card", str(tiny_copy), "--bootstrap", "20"]) == 2
    meta = export_run(tiny_copy, tmp_path / "e", check_limit=8, allow_uncertified=True)
    assert meta["operating_point"]["certified"] is False
    assert "NOT CERTIFIED" in (tmp_path / "e" / "README.md").read_text()
    with TestClient(create_app(tiny_copy, allow_uncertified=True)) as client:
        model = client.get("/model").json()
        assert model["certified"] is False and "NOT CERTIFIED" in model["operating_point_text"]
    assert main(["card", str(tiny_copy), "--bootstrap", "20", "--allow-uncertified"]) == 0
    assert "NOT CERTIFIED" in (tiny_copy / "MODEL_CARD.md").read_text()


# --- the export folder ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory):
    """``(folder, metadata)`` of one ONNX export of the tiny run; read it, never write it."""
    out = tmp_path_factory.mktemp("exports") / "export"
    return out, export_run(tiny_run[0], out, check_limit=16)


def test_the_export_folder_documents_itself_and_hashes_every_file(tiny_export):
    import hashlib

    out, meta = tiny_export
    readme = (out / "README.md").read_text()
    assert "Outputs, in the order the graph returns them" in readme and "1. `p_malignant`" in readme
    for name, digest in meta["files_sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert set(meta["files_sha256"]) == {"model.onnx", "decode.py"}
    on_disk = json.loads((out / "riskcl_export.json").read_text())
    assert [o["name"] for o in on_disk["outputs"]] == list(OUTPUTS)  # the graph's order, not alphabetical


def test_an_interrupted_export_leaves_the_previous_one_whole(tiny_run, tmp_path, monkeypatch):
    import riskcl.deploy.export as export

    out = tmp_path / "export"
    first = export_run(tiny_run[0], out, "torchscript", check_limit=8)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # a kill after the model was written, before the metadata

    monkeypatch.setattr(export, "file_sha256", killed)
    with pytest.raises(KeyboardInterrupt):
        export_run(tiny_run[0], out, "torchscript", check_limit=8)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no temp folder left
    assert first["weights_sha256"] == RunFolder(tiny_run[0]).weights_sha256()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        export_run(tiny_run[0], tmp_path / "mine", "torchscript", check_limit=8)


# --- recorded facts -----------------------------------------------------------------------------------------------
def test_version_is_one_number_and_threads_are_recorded(tiny_run):
    from importlib.metadata import version

    import riskcl

    assert riskcl.__version__ == version("riskcl") == "0.4.0"
    folder, metrics = RunFolder(tiny_run[0]), tiny_run[1]
    history = folder.history()
    assert "threads" in history.columns and (history["threads"] >= 1).all()
    assert metrics["run"]["threads"] == int(history["threads"].iloc[0])
    assert metrics["run"]["riskcl"] == "0.4.0"
    assert np.diag(np.asarray(metrics["run"]["cost_matrix"])).tolist() == [0.0] * 4


@pytest.mark.parametrize("kind", ["uint16", "float32"])
def test_the_shipped_decoder_keeps_16_bit_and_float_parity(tiny_run, tiny_export, tmp_path, kind):
    """Pillow's convert('RGB') clips 16-bit and float images; the export folder's decode.py scales them as riskcl
    does, so the exported model gives riskcl predict's number."""
    import importlib.util

    import onnxruntime as ort

    out = tiny_export[0]
    rng = np.random.default_rng(0)
    if kind == "uint16":
        arr, name = (rng.random((40, 48)) * 4000 + 1000).astype(np.uint16), "scan.png"
    else:
        arr, name = (rng.random((40, 48)) * 7.5 - 2).astype(np.float32), "scan.tif"
    path = tmp_path / name
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode in ("I;16", "F")
    spec = importlib.util.spec_from_file_location("decode", out / "decode.py")
    decode = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(decode)
    session = ort.InferenceSession(str(out / "model.onnx"))
    p_mal = session.run(["p_malignant"], {"images": decode.decode_image(str(path))[None]})[0][0]
    (row,), *_ = predict_files(tiny_run[0], [str(path)])
    assert p_mal == pytest.approx(row["p_malignant"], abs=1e-5)


# --- the input check ----------------------------------------------------------------------------------------------
def test_the_input_check_flags_images_unlike_the_calibration_data(tiny_copy, tmp_path):
    from riskcl.experiment.input_check import check_images, load_input_check, split_distances

    folder = RunFolder(tiny_copy)
    check = load_input_check(tiny_copy)  # fitted now and saved in the run folder
    assert folder.input_check() is not None and check.n_fit > 0 and check.n_threshold > 0
    test = split_distances(folder, "test", check)
    assert np.mean(test > check.threshold) < 0.1  # data like the calibration set: rarely flagged
    rng = np.random.default_rng(0)
    odd = [np.full((16, 16, 3), 128, np.uint8), (rng.random((16, 16, 3)) * 255).astype(np.uint8)]
    distances = check_images(folder.load_model(), check, odd, 16)
    assert (distances > check.threshold).all()  # a flat grey square and pure noise are flagged
    with TestClient(create_app(tiny_copy)) as client:
        buf = tmp_path / "grey.png"
        Image.fromarray(odd[0]).save(buf)
        body = client.post("/predict", files={"file": ("grey.png", buf.read_bytes(), "image/png")}).json()
        assert body["unusual"] is True and body["input_distance"] > body["input_threshold"]
        assert "flagged unusual" in client.get("/model").json()["input_check"]


def test_parity_with_the_saved_predictions_binds_on_cpu_and_is_reported_for_gpu_runs(tiny_copy, tmp_path):
    """Saved test logits that no longer match what the model computes fail a CPU run's export; a run that predicted
    on a GPU (bf16 autocast) gets the comparison reported, not enforced."""
    from riskcl.deploy.export import ExportParityError

    folder = RunFolder(tiny_copy)
    preds = folder.predictions("test")
    np.savez(folder.prediction_file("test"), **{**preds, "logits": preds["logits"] + np.float32(0.05) *
                                                 np.arange(preds["logits"].shape[1], dtype=np.float32)})
    with pytest.raises(ExportParityError, match="saved test predictions"):
        export_run(tiny_copy, tmp_path / "cpu", "torchscript", check_limit=16)
    metrics = json.loads((tiny_copy / "metrics.json").read_text())
    metrics["run"]["device"] = "cuda:0"
    (tiny_copy / "metrics.json").write_text(json.dumps(metrics))
    meta = export_run(tiny_copy, tmp_path / "gpu", "torchscript", check_limit=16)
    saved = meta["parity"]["checks"][0]
    assert "saved test predictions" in saved["reference"] and "informational" in saved
    assert saved["max_abs_diff_p_malignant"] > 1e-4 >= meta["parity"]["max_abs_diff_p_malignant"]
