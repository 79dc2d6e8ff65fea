"""Models trained elsewhere (riskcl adopt): a plain PyTorch model with its own preprocessing (BGR, 0-255, its own
mean and std, a size riskcl does not use) exported by torch.onnx.export, and a scikit-learn predictions table,
become run folders that calibrate, export, predict, serve and document like any run; every refusal is named."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from riskcl.cli import main
from riskcl.experiment import RunFolder

SIZE = (28, 36)           # the model's input (height, width): a size riskcl's own configs never use
MEAN, STD = [100.0, 110.0, 120.0], [60.0, 55.0, 50.0]  # in the 0..255 range, BGR order


def _image(rng, angry: bool, shape) -> np.ndarray:
    """A noisy image; an 'angry' one has a red square (in RGB) somewhere: what the model must learn to see."""
    h, w = shape
    arr = rng.integers(40, 140, (h, w, 3)).astype(np.uint8)
    if angry:
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        arr[y:y + h // 2, x:x + w // 2, 0] = 230
    return arr


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """``(root, config path, model.onnx)``: a folder data set of JPEGs of many sizes, and a model trained on it by a
    plain PyTorch loop with its own preprocessing, exported to ONNX by torch.onnx.export."""
    base = tmp_path_factory.mktemp("elsewhere")
    root = base / "data"
    rng = np.random.default_rng(0)
    for c in ("calm", "angry"):
        for i in range(140):
            shape = (int(rng.integers(30, 60)), int(rng.integers(30, 70)))
            path = root / c / f"{c}{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(rng, c == "angry", shape)).save(path, quality=95)
    (base / "tax.yaml").write_text("name: t\nbenign: [calm]\nmalignant: [angry]\n")
    # Their own training: BGR, raw 0..255, their mean and std, 28 x 36, a plain loop (not riskcl's trainer).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                        nn.Linear(128, 2))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    xs, ys = [], []
    for label, c in enumerate(("angry", "calm")):  # their class order: angry first
        for p in sorted((root / c).glob("*.jpg")):
            im = Image.open(p).convert("RGB").resize((SIZE[1], SIZE[0]), Image.BILINEAR)
            xs.append(np.asarray(im)[..., ::-1].copy())
            ys.append(label)
    x = (torch.tensor(np.stack(xs)).permute(0, 3, 1, 2).float() - mean) / std
    y = torch.tensor(ys)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    model = base / "model.onnx"
    torch.onnx.export(net.eval(), (torch.zeros(2, 3, *SIZE),), str(model), input_names=["x"], output_names=["y"],
                      dynamic_shapes=({0: torch.export.Dim("n", min=1, max=1024)},), dynamo=True)
    cfg = {"name": "adopted", "data": {"name": "folder", "root": str(root), "image_size": 16, "calib_fraction": 0.3,
                                       "test_fraction": 0.25, "val_fraction": 0.1,
                                       "options": {"taxonomy": str(base / "tax.yaml")}},
           "adopt": {"classes": ["angry", "calm"], "output": "logits", "input_size": list(SIZE), "layout": "nchw",
                     "channels": "bgr", "scale": 255, "mean": MEAN, "std": STD, "resize": "stretch"},
           "progress": False}
    (base / "adopt.yaml").write_text(yaml.safe_dump(cfg))
    return root, base / "adopt.yaml", model


@pytest.fixture(scope="module")
def adopted(elsewhere, tmp_path_factory):
    _, config, model = elsewhere
    out = tmp_path_factory.mktemp("adopted") / "run"
    assert main(["adopt", str(model), "--config", str(config), "--out", str(out), "--quiet"]) == 0
    return out


def test_adopted_predictions_are_the_model_on_its_declared_input(elsewhere, adopted):
    """The saved test logits equal ONNX Runtime on the images preprocessed by hand in numpy (BGR, 0-255, mean,
    std, riskcl's resize), in the taxonomy's class order."""
    import onnxruntime as ort

    from riskcl.data import decode_rgb
    from riskcl.data.images import resize_images

    _, _, model = elsewhere
    folder = RunFolder(adopted)
    test = folder.predictions("test")
    assert folder.adopted()["kind"] == "onnx" and folder.adopted()["sha256"] == folder.weights_sha256()
    assert folder.taxonomy().classes == ("calm", "angry")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for k in range(5):
        rgb = decode_rgb(test["paths"][k])
        resized = resize_images(torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), *SIZE)[0].numpy()
        x = (resized[::-1] - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
        out = session.run(None, {"x": x[None].astype(np.float32)})[0][0]
        np.testing.assert_allclose(test["logits"][k], out[[1, 0]], atol=1e-5)
    m = folder.metrics()
    assert m["run"]["adopted"]["preprocessing"].startswith("riskcl's antialiased bilinear resize to 28 x 36, BGR")
    assert not folder.file("history").is_file() and not folder.file("weights").is_file()


def test_calibrate_and_export_decide_as_certified_on_native_size_jpegs(adopted, tmp_path, capsys):
    import onnxruntime as ort

    from riskcl.data import decode_rgb
    from riskcl.decision import softmax, threshold_decision
    from riskcl.metrics import safety_report

    run = tmp_path / "run"
    shutil.copytree(adopted, run)
    assert main(["calibrate", str(run), "--alpha", "0.1"]) == 0
    cal = json.loads((run / "calibration.json").read_text())
    assert cal["certified"] and cal["method"] == "ltt"
    assert main(["export", str(run), "--out", str(run / "export")]) == 0
    meta = json.loads((run / "export" / "riskcl_export.json").read_text())
    assert meta["parity"]["decision_flips"] == 0 and meta["parity"]["max_abs_diff_p_malignant"] <= 1e-5
    folder = RunFolder(run)
    test = folder.predictions("test")
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = np.stack([session.run(["probabilities"], {"images": decode_rgb(p)[None]})[0][0] for p in test["paths"]])
    np.testing.assert_allclose(probs, softmax(test["logits"]), atol=1e-5)  # native-size JPEGs, one graph
    refer = np.stack([session.run(["refer"], {"images": decode_rgb(p)[None]})[0][0] for p in test["paths"]])
    tax = folder.taxonomy()
    labels = threshold_decision(probs, tax, cal["threshold"])
    report = safety_report(probs, test["target"], tax, labels=labels)
    assert (report["type_i"], report["type_ii"]) == (cal["test"]["type_i"], cal["test"]["type_ii"])
    assert refer.tolist() == (labels == tax.classes.index("angry")).tolist()
    # predict and serve the adopted run, and its export without PyTorch: the same decisions
    capsys.readouterr()
    assert main(["predict", str(run), *test["paths"][:4], "--out", str(tmp_path / "a.csv"), "--quiet"]) == 0
    assert main(["predict", str(run / "export"), *test["paths"][:4], "--out", str(tmp_path / "b.csv"), "--quiet"]) == 0
    a, b = (list(csv.DictReader(open(tmp_path / f))) for f in ("a.csv", "b.csv"))
    assert [r["decision"] for r in a] == [r["decision"] for r in b]
    np.testing.assert_allclose([float(r["p_malignant"]) for r in a], [float(r["p_malignant"]) for r in b], atol=1e-5)


def test_the_declaration_is_used_not_ignored(elsewhere, adopted, tmp_path):
    _, config, model = elsewhere
    out = tmp_path / "rgb"
    assert main(["adopt", str(model), "--config", str(config), "adopt.channels=rgb", "--out", str(out),
                 "--quiet"]) == 0
    right, wrong = (RunFolder(p).predictions("test")["logits"] for p in (adopted, out))
    assert np.abs(right - wrong).max() > 1e-2


def test_the_card_says_trained_elsewhere(adopted, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(adopted, run)
    assert main(["card", str(run)]) == 0
    card = (run / "MODEL_CARD.md").read_text()
    assert "trained elsewhere" in card and RunFolder(run).adopted()["sha256"] in card
    assert "BGR" in card and "cannot know" in card


@pytest.mark.parametrize("override,match", [
    (["adopt.input_size=[32, 32]"], r"has shape \[.*'n', 3, 28, 36\], but the declaration .* gives \(N, 3, 32, 32\)"),
    (["adopt.layout=nhwc"], "but the declaration"),
    (["adopt.classes=[angry, calm, unsure]"], r"\['unsure'\] is not a class of the data set's taxonomy"),
    (["adopt.classes=[angry]"], r"lacks \['calm'\]"),
    (["adopt.output=probs"], "declared as probabilities .* do not sum to 1"),
    (["tta=flip"], "set tta: none"),
])
def test_a_model_that_contradicts_its_declaration_is_refused(elsewhere, tmp_path, capsys, override, match):
    import re

    _, config, model = elsewhere
    assert main(["adopt", str(model), "--config", str(config), *override, "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and "Traceback" not in err


def _features(paths) -> np.ndarray:
    """Simple image features: the mean of each channel and the share of strongly red pixels."""
    from riskcl.data import decode_rgb

    out = []
    for p in paths:
        im = decode_rgb(p).astype(float)
        out.append([*im.mean((0, 1)) / 255, float((im[..., 0] > 200).mean())])
    return np.array(out)


@pytest.fixture(scope="module")
def sklearn_table(elsewhere, tmp_path_factory):
    """A study's predictions table: a scikit-learn logistic regression on simple features of every image."""
    from sklearn.linear_model import LogisticRegression

    root, _, _ = elsewhere
    paths = sorted(root.rglob("*.jpg"))
    x, y = _features(paths), np.array([p.parent.name == "angry" for p in paths], dtype=int)
    clf = LogisticRegression().fit(x[::2], y[::2])  # fitted on half the images: a study's own split
    proba = clf.predict_proba(x)
    table = tmp_path_factory.mktemp("table") / "preds.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "p_calm", "p_angry"])
        for p, (pc, pa) in zip(paths, proba):
            w.writerow([p.name, f"{pc:.10f}", f"{pa:.10f}"])
    return table


def test_a_predictions_table_adopts_and_its_certified_cer_is_what_numpy_says(elsewhere, sklearn_table, tmp_path,
                                                                           capsys):
    _, config, _ = elsewhere
    out = tmp_path / "table"
    over = ["adopt.output=probs", "adopt.classes=[calm, angry]", "adopt.class_columns=[p_calm, p_angry]"]
    assert main(["adopt", str(sklearn_table), "--config", str(config), *over, "--out", str(out), "--quiet"]) == 0
    assert main(["calibrate", str(out), "--alpha", "0.1"]) == 0
    cal = json.loads((out / "calibration.json").read_text())
    test = RunFolder(out).predictions("test")
    rows = {r["image"]: float(r["p_angry"]) for r in csv.DictReader(sklearn_table.open())}
    p_angry = np.array([rows[Path(p).name] for p in test["paths"]])
    angry = test["target"] == 1
    assert cal["test"]["cer"] == pytest.approx(np.mean(p_angry[angry] < cal["threshold"]))
    # a table has no model: what needs one says so in one sentence
    for args in (["export", str(out), "--out", str(tmp_path / "e")], ["predict", str(out), test["paths"][0]],
                 ["serve", str(out), "--port", "8765"], ["explain", str(out), test["paths"][0], "--out",
                                                          str(tmp_path / "o")]):
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "adopted from a table of predictions: there is no model to run" in err and err.count("\n") == 1


def _edited_table(src: Path, dst: Path, edit) -> Path:
    rows = list(csv.DictReader(src.open()))
    rows = edit(rows)
    with dst.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dst


TABLE_CASES = {
    "duplicate ids": (lambda rows: rows + rows[:1], "names 1 image\\(s\\) twice"),
    "an id the data do not have": (lambda rows: rows + [{**rows[0], "image": "nowhere.jpg"}],
                                   "does not have, e.g. 'nowhere.jpg'"),
    "rows missing for a split": (lambda rows: rows[:40], "has no row for"),
    "probabilities that do not sum to 1": (lambda rows: [{**r, "p_calm": "0.9", "p_angry": "0.9"} for r in rows],
                                           "do not sum to 1"),
    "a NaN score": (lambda rows: [{**r, "p_angry": "nan"} if k == 3 else r for k, r in enumerate(rows)],
                    "NaN or infinite"),
    "a split column that puts one group in two splits": (
        lambda rows: [{**r, "split": ("train", "val", "calib", "test")[k % 4], "lesion": "L1" if k < 8 else f"L{k}"}
                      for k, r in enumerate(rows)], "group 'L1' .* lies in two splits"),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_a_table_that_cannot_be_trusted_is_refused(elsewhere, sklearn_table, tmp_path, capsys, case):
    import re

    _, config, _ = elsewhere
    edit, match = TABLE_CASES[case]
    table = _edited_table(sklearn_table, tmp_path / "t.csv", edit)
    over = ["adopt.output=probs", "adopt.classes=[calm, angry]", "adopt.class_columns=[p_calm, p_angry]"]
    if "split column" in case:
        over += ["adopt.split_column=split", "adopt.group_column=lesion"]
    assert main(["adopt", str(table), "--config", str(config), *over, "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert "Traceback" not in err and not (tmp_path / "x" / "metrics.json").exists()
    wrong = ["adopt.output=probs", "adopt.classes=[calm, angry]", "adopt.class_columns=[p_benign, p_angry]"]
    assert main(["adopt", str(sklearn_table), "--config", str(config), *wrong, "--out", str(tmp_path / "y"),
                 "--quiet"]) == 2
    assert "no class column(s) ['p_benign']" in capsys.readouterr().err


# --- riskcl inside other training loops ------------------------------------------------------------------------
from conftest import BRAIN_MRI, needs_brain_mri  # noqa: E402


def _brain_subset(tmp_path: Path, per_class: int = 40) -> tuple[Path, list[tuple[str, int]]]:
    """A CSV data set of some Brain Tumor MRI training images (read in place), for loops that are not riskcl's."""
    from riskcl.taxonomy import get_taxonomy

    classes = get_taxonomy("brain_mri").classes
    rows = []
    for label, c in enumerate(classes):
        rows += [(str(p), label) for p in sorted((BRAIN_MRI / "Training" / c).glob("*.jpg"))[:per_class]]
    root = tmp_path / "brain"
    root.mkdir()
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([(p, classes[y]) for p, y in rows])
    return root, rows


def _adopt_config(tmp_path: Path, root: Path, **adopt) -> Path:
    from riskcl.taxonomy import get_taxonomy

    cfg = {"name": "loop", "progress": False,
           "data": {"name": "csv", "root": str(root), "image_size": 16, "val_fraction": 0.2, "test_fraction": 0.3,
                    "calib_fraction": 0.3, "options": {"taxonomy": "brain_mri", "allow_outside_root": True}},
           "adopt": {"classes": list(get_taxonomy("brain_mri").classes), "input_size": 32, **adopt}}
    path = tmp_path / "adopt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@needs_brain_mri
def test_a_lightning_module_trains_with_riskcls_loss_and_metric_and_is_adopted(tmp_path):
    """A tiny LightningModule whose loss is riskcl.RiskCalibratedLoss and whose validation metric is
    riskcl.SafetyReport trains a few steps; Lightning's own to_onnx exports it; riskcl adopts it."""
    import lightning as L

    import riskcl

    root, rows = _brain_subset(tmp_path)
    tax = riskcl.get_taxonomy("brain_mri")

    def batches():
        x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((32, 32)))).permute(2, 0, 1)
                         for p, _ in rows]).float() / 255
        y = torch.tensor([label for _, label in rows])
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                     nn.Flatten(), nn.Linear(32, 4))
            self.loss = riskcl.RiskCalibratedLoss(riskcl.severity_matrix(tax, 5, 20))
            self.safety = riskcl.SafetyReport(tax)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return self.loss(self(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.safety.update(torch.softmax(self(x), 1), y)

        def on_validation_epoch_end(self):
            self.log("val_cer", self.safety.compute()["cer"])
            self.safety.reset()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    module = Module()
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2)
    trainer.fit(module, batches(), batches())
    assert 0 <= trainer.callback_metrics["val_cer"] <= 1
    model = tmp_path / "lightning.onnx"
    module.to_onnx(str(model), torch.zeros(1, 3, 32, 32), input_names=["x"], dynamo=False,
                   dynamic_axes={"x": {0: "n"}})
    out = tmp_path / "run"
    assert main(["adopt", str(model), "--config", str(_adopt_config(tmp_path, root)), "--out", str(out),
                 "--quiet"]) == 0
    folder = RunFolder(out)
    assert folder.adopted()["kind"] == "onnx" and folder.predictions("test")["logits"].shape[1] == 4


@needs_brain_mri
def test_a_monai_loop_with_monais_network_and_transforms_is_adopted(tmp_path):
    """MONAI's Classifier and transforms, riskcl's loss in a plain loop; MONAI's convert_to_onnx exports it; riskcl
    adopts it as one grey channel in 0..1 (what ScaleIntensityRange gave the network)."""
    from monai.networks.nets import Classifier
    from monai.networks.utils import convert_to_onnx
    from monai.transforms import Compose, Resize, ScaleIntensityRange

    import riskcl

    root, rows = _brain_subset(tmp_path)
    tax = riskcl.get_taxonomy("brain_mri")
    transform = Compose([Resize((32, 32)), ScaleIntensityRange(a_min=0, a_max=255, b_min=0, b_max=1)])
    x = torch.stack([torch.as_tensor(transform(np.asarray(Image.open(p).convert("L"), np.float32)[None]))
                     for p, _ in rows]).float()
    y = torch.tensor([label for _, label in rows])
    net = Classifier(in_shape=(1, 32, 32), classes=4, channels=(4, 8), strides=(2, 2))
    loss_fn = riskcl.create_loss("rcl-proposed", taxonomy=tax)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(5):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    model = tmp_path / "monai.onnx"
    convert_to_onnx(net.eval(), [torch.zeros(1, 1, 32, 32)], input_names=["x"], output_names=["y"],
                    dynamic_axes={"x": {0: "n"}}, filename=str(model), use_trace=True)
    out = tmp_path / "run"
    cfg = _adopt_config(tmp_path, root, channels="gray", scale=1)
    assert main(["adopt", str(model), "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert main(["calibrate", str(out), "--alpha", "0.5", "--method", "crc", "--allow-uncertified"]) == 0
    assert RunFolder(out).adopted()["preprocessing"].startswith("riskcl's antialiased bilinear resize to 32 x 32, GRAY")


def test_evaluate_report_and_serve_take_an_adopted_run_as_any_run(elsewhere, adopted, tiny_run, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from riskcl.deploy.serve import create_app

    root, _, _ = elsewhere
    run = tmp_path / "study" / "adopted"
    shutil.copytree(adopted, run)
    assert main(["evaluate", str(run), "--data-root", str(root)]) == 0
    assert "all 280 images" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--decision-curve"]) == 0
    shutil.copytree(tiny_run[0], tmp_path / "study" / "trained")
    assert main(["report", str(tmp_path / "study"), "--out", str(tmp_path / "rep"), "--bootstrap", "20"]) == 0
    md = (tmp_path / "rep" / "REPORT.md").read_text()
    assert "trained elsewhere" in md and "adopted:model.onnx" in md
    client = TestClient(create_app(run))
    image = RunFolder(run).predictions("test")["paths"][0]
    answer = client.post("/predict", files={"file": ("a.jpg", open(image, "rb").read(), "image/jpeg")}).json()
    assert answer["decision"] in ("refer", "clear")
    assert client.get("/model").json()["saliency"] is False
    explained = client.post("/explain", files={"file": ("a.jpg", open(image, "rb").read(), "image/jpeg")})
    assert explained.status_code == 501 and "trained elsewhere" in explained.json()["error"]
