"""Image + clinical metadata fusion: the encoding (training-split statistics only, unknown categories, missing
values), the refusal of label-derived inputs, each head's shapes and gradients, metadata dropout, and a fusion run
end to end (no-metadata predictions, export with a second input checked against ONNX Runtime, predict and serve
with and without metadata)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from _browser import CHROMIUM
from _standins import make_isic
from riskcl.config import ConfigError, config_from_dict
from riskcl.data.encode_metadata import encode_row
from riskcl.data.encoding import MetadataEncoding, check_input_columns
from riskcl.models import FusionNet, MetadataOnlyNet, create_model


def test_the_encoding_uses_training_statistics_and_handles_unknown_and_missing_values():
    train = {"age": ["20", "40", "NA", "60"], "site": ["back", "face", "back", ""]}
    enc = MetadataEncoding.fit(train, ["age", "site"])
    assert [c.kind for c in enc.columns] == ["numeric", "categorical"]
    mean, std = np.mean([20, 40, 60]), np.std([20, 40, 60])
    assert enc.columns[0].mean == pytest.approx(mean) and enc.columns[0].std == pytest.approx(std)
    assert enc.feature_names == ["age", "age=missing", "site=back", "site=face", "site=unknown"]
    row = enc.encode_row({"age": "80", "site": "face"})
    np.testing.assert_allclose(row, [(80 - mean) / std, 0, 0, 1, 0], rtol=1e-6)
    # missing, unseen and absent all encode as unknown; an all-missing row is the missing row
    np.testing.assert_array_equal(enc.encode_row({"age": None, "site": "scalp"}), [0, 1, 0, 0, 1])
    np.testing.assert_array_equal(enc.encode_row({}), enc.missing_row())
    # statistics come from the table it was fitted on only: another split's values change nothing
    again = MetadataEncoding.fit({"age": train["age"] + ["1000"], "site": train["site"] + ["leg"]}, ["age", "site"])
    assert again.columns[0].mean != enc.columns[0].mean and "leg" in again.columns[1].categories
    # the standalone encoder an export ships gives the same vectors, from the saved JSON
    saved = json.loads(json.dumps(enc.to_dict()))
    for r in ({"age": "33", "site": "back"}, {"site": "nowhere"}, {}):
        np.testing.assert_allclose(encode_row(saved, r), enc.encode_row(r), rtol=1e-6)
    assert MetadataEncoding.from_dict(saved) == enc


def test_dirty_training_metadata_are_named_not_encoded_silently():
    """One "45 years" among numbers, an age of 1e9, negative ages: refused or counted, never absorbed."""
    ages = [str(a) for a in range(20, 80, 3)]
    with pytest.raises(ValueError, match=r"'age': 20 training values are numbers but 1 are not \(\['45 years'\]"):
        MetadataEncoding.fit({"age": ages + ["45 years"]}, ["age"])
    with pytest.warns(UserWarning, match=r"1 training value\(s\) are impossible \(\['45 years'\]"):
        enc = MetadataEncoding.fit({"age": ages + ["45 years"]}, ["age"], {"age": {"kind": "numeric"}})
    assert enc.columns[0].kind == "numeric" and enc.dim == 2
    with pytest.raises(ValueError, match=r"implausible training value\(s\) \[1000000000.0\]"):
        MetadataEncoding.fit({"age": ages + ["1e9"]}, ["age"])
    with pytest.warns(UserWarning, match="impossible"):
        enc = MetadataEncoding.fit({"age": ages + ["1e9", "-5", "inf"]}, ["age"], {"age": {"range": [0, 120]}})
    real = np.asarray(ages, float)
    assert enc.columns[0].mean == pytest.approx(real.mean()) and enc.columns[0].std == pytest.approx(real.std())
    assert (enc.columns[0].low, enc.columns[0].high) == (0, 120)
    # without a declared range: the training range widened by its span, never below 0 when no value is
    free = MetadataEncoding.fit({"age": ages}, ["age"])
    assert free.columns[0].low == 0 and free.columns[0].high == pytest.approx(77 + 57)
    with pytest.raises(ConfigError, match="range"):
        config_from_dict({"data": {"name": "demo"}, "model": {"metadata": ["age"],
                                                               "metadata_spec": {"age": {"range": [5, 1]}}}})
    with pytest.raises(ConfigError, match="not one of model.metadata"):
        config_from_dict({"data": {"name": "demo"}, "model": {"metadata": ["age"], "metadata_spec": {"sex": {}}}})


@pytest.mark.parametrize("value", ["1e300", "-1e300", "inf", "nan ", "-5", "1e9", "45 years"])
def test_a_metadata_value_the_model_cannot_read_is_refused_by_riskcl_and_by_the_shipped_encoder(value):
    from riskcl.data.encode_metadata import MetadataValueError

    enc = MetadataEncoding.fit({"age": ["20", "40", "60"]}, ["age"], {"age": {"range": [0, 120]}})
    if value.strip() == "nan":  # a missing value, not a bad one
        np.testing.assert_array_equal(enc.encode_row({"age": value}), enc.missing_row())
        return
    with pytest.raises(MetadataValueError, match=r"metadata 'age' = .* expected a number in \[0, 120\]"):
        enc.encode_row({"age": value})
    with pytest.raises(MetadataValueError):
        encode_row(json.loads(json.dumps(enc.to_dict())), {"age": value})
    # riskcl's own data: counted and encoded as missing (a warning names the split)
    with pytest.warns(UserWarning, match=r"'test' split .*\(age: 1\)"):
        rows = enc.encode({"age": [value, "30"]}, split="test")
    np.testing.assert_array_equal(rows[0], enc.missing_row())
    assert np.isfinite(rows).all()


def test_impossible_isic_ages_are_unknown_and_counted(tmp_path):
    from riskcl.data.isic import age_bin, index_isic2018

    assert [age_bin(v) for v in (-5, 1e9, float("inf"), "nan", 29.9, 30, 120)] == \
        ["unknown"] * 4 + ["<30", "30-44", "75+"]
    root = make_isic(tmp_path / "isic", n_lesions=7, per_lesion=1, clinical=True)
    meta = root / "HAM10000_metadata.csv"
    lines = meta.read_text().splitlines()
    head = lines[0].split(",")
    cells = lines[1].split(",")
    cells[head.index("age")] = "-5"
    meta.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    index = index_isic2018(root)
    assert index.table["age"].iloc[0] == "unknown"
    assert any("1 impossible age(s)" in p and "-5" in p for p in index.problems)


def test_label_derived_columns_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="histopathology confirmation goes with malignancy"):
        check_input_columns(["age", "dx_type"], ["age", "dx_type"])
    with pytest.raises(ValueError, match="derived from the label"):
        check_input_columns(["dx"], ["dx"])
    with pytest.raises(ValueError, match="'weight' is not a metadata column"):
        check_input_columns(["weight"], ["age"])
    with pytest.raises(ConfigError, match="histopathology"):
        config_from_dict({"data": {"name": "demo"}, "model": {"metadata": ["dx_type"]}})
    with pytest.raises(ConfigError, match="metadata-only"):
        config_from_dict({"data": {"name": "demo"}, "model": {"name": "metadata-only"}})


@pytest.mark.parametrize("head", ["late", "film"])
def test_each_fusion_head_gives_logits_and_gradients_to_image_and_metadata(head):
    torch.manual_seed(0)
    backbone = create_model("resnet10t", 0, pretrained=False)
    net = FusionNet(backbone, meta_dim=5, num_classes=4, head=head, hidden=8, missing_row=[0, 1, 0, 0, 1])
    x, meta = torch.randn(3, 3, 16, 16, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    out = net(x, meta)
    assert out.shape == (3, 4)
    out.sum().backward()
    assert x.grad.abs().sum() > 0 and meta.grad is not None
    if head == "late":
        assert meta.grad.abs().sum() > 0
    # film starts as the identity: the metadata first act through their gradient on the modulation
    assert torch.isfinite(meta.grad).all()
    # no metadata sent = the missing row
    net.eval()
    torch.testing.assert_close(net(x), net(x, net.missing_row.expand(3, -1)))
    ref = MetadataOnlyNet(5, 4, [0, 1, 0, 0, 1])
    torch.testing.assert_close(ref(x, meta), ref.linear(meta))


def test_metadata_dropout_replaces_whole_rows_in_training_only():
    net = FusionNet(create_model("resnet10t", 0, pretrained=False), 3, 2, "late", 4, [9.0, 9.0, 9.0], 0.5)
    seen = []
    net.meta_mlp.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    x, meta = torch.zeros(400, 3, 8, 8), torch.zeros(400, 3)
    torch.manual_seed(1)
    net.train()(x, meta)
    rows = seen[-1]
    dropped = (rows == 9.0).all(1)
    assert ((rows == 0) | (rows == 9.0)).all() and ((rows == 9.0).all(1) | (rows == 0).all(1)).all()
    assert 0.4 < dropped.float().mean() < 0.6
    net.eval()(x, meta)
    assert (seen[-1] == 0).all()


@pytest.fixture(scope="module")
def fusion_run(tmp_path_factory):
    from riskcl.experiment import run_experiment

    root = make_isic(tmp_path_factory.mktemp("isic") / "isic", n_lesions=70, per_lesion=2, clinical=True)
    cfg = config_from_dict({"name": "fusion", "epochs": 2, "progress": False,
                            "data": {"name": "isic2018", "root": str(root), "image_size": 16},
                            "model": {"name": "resnet10t", "pretrained": False, "metadata": ["age", "sex"],
                                      "fusion": "film", "metadata_dropout": 0.2},
                            "optim": {"batch_size": 32, "lr": 0.003}})
    out = tmp_path_factory.mktemp("fusion") / "run"
    run_experiment(cfg, out)
    return out, root


def test_a_fusion_run_saves_its_encoding_and_its_no_metadata_predictions(fusion_run):
    from riskcl.experiment import RunFolder
    from riskcl.experiment.folder import NO_METADATA

    run, _ = fusion_run
    folder = RunFolder(run)
    enc = folder.metadata_encoding()
    assert enc.column_names == ["age", "sex"]
    train = folder.splits().query("split == 'train'")
    assert set(enc.columns[1].categories) == set(train["sex"].astype(str)) - {"unknown"} == {"female", "male"}
    assert len(enc.columns[0].categories) >= 3  # age bins of the adapter, categorical
    m = folder.metrics()
    assert m["run"]["metadata_inputs"] == ["age", "sex"] and "cer" in m[NO_METADATA]
    assert folder.predictions(NO_METADATA)["logits"].shape == folder.predictions("test")["logits"].shape


def test_fusion_export_predict_and_serve_with_and_without_metadata(fusion_run, tmp_path):
    import onnxruntime as ort
    from fastapi.testclient import TestClient

    from riskcl.deploy.export import export_run
    from riskcl.deploy.predict import RunModel
    from riskcl.deploy.scoring import predict_files
    from riskcl.deploy.serve import create_app
    from riskcl.experiment import RunFolder

    run, root = fusion_run
    meta = export_run(run, tmp_path / "export", check_limit=30)
    assert meta["parity"]["decision_flips"] == 0 and meta["parity"]["max_abs_diff_p_malignant"] <= 1e-4
    assert meta["metadata_input"]["columns"] == ["age", "sex"]
    assert (tmp_path / "export" / "encode_metadata.py").is_file()
    # independently: ONNX Runtime with the second input against the run folder's PyTorch model
    test = RunFolder(run).splits().query("split == 'test'").head(5)
    from riskcl.data import decode_rgb

    images = [decode_rgb(p) for p in test["path"]]
    rows = [{"age": a, "sex": s} for a, s in zip(test["age"].astype(str), test["sex"].astype(str))]
    session = ort.InferenceSession(str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    encoded = np.stack([encode_row(meta["metadata_input"]["encoding"], r) for r in rows]).astype(np.float32)
    onnx_probs = session.run(["probabilities"], {"images": np.stack(images), "metadata": encoded})[0]
    np.testing.assert_allclose(onnx_probs, RunModel(run).probabilities(images, rows), atol=1e-5)
    # predict: a metadata CSV for some images; the others are scored with their metadata missing
    csv_path = tmp_path / "meta.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "age", "sex"])
        for p, r in list(zip(test["path"], rows))[:3]:
            w.writerow([p, r["age"], r["sex"]])
    for target in (run, tmp_path / "export"):
        with_meta = predict_files(target, list(test["path"]), metadata=csv_path).rows
        without = predict_files(target, list(test["path"])).rows
        expected = RunModel(run).probabilities(images, rows[:3] + [{}, {}])[:, 0]
        np.testing.assert_allclose([r[f"p_{RunFolder(run).taxonomy().classes[0]}"] for r in with_meta], expected,
                                   atol=1e-5)
        assert with_meta[4]["p_malignant"] == pytest.approx(without[4]["p_malignant"], abs=1e-6)
    # serve: the optional `metadata` field, refused when it names another column
    client = TestClient(create_app(tmp_path / "export"))
    body = open(test["path"].iloc[0], "rb").read()
    plain = client.post("/predict", files={"file": ("a.jpg", body, "image/jpeg")}).json()
    given = client.post("/predict", files={"file": ("a.jpg", body, "image/jpeg")},
                        data={"metadata": json.dumps(rows[0])}).json()
    assert plain["metadata_used"] == {"age": None, "sex": None} and given["metadata_used"] == rows[0]
    assert given["p_malignant"] == pytest.approx(float(RunModel(run).probabilities(images[:1], rows[:1])[0][
        RunFolder(run).taxonomy().superclass == 1].sum()), abs=1e-5)
    bad = client.post("/predict", files={"file": ("a.jpg", body, "image/jpeg")}, data={"metadata": '{"dx": "mel"}'})
    assert bad.status_code == 422 and "does not read" in bad.json()["error"]


def test_a_fusion_model_decides_each_request_at_the_point_certified_for_what_it_carries(fusion_run, tmp_path):
    """Calibration certifies a point with the metadata and one with them masked; the masked point holds its
    guarantee on the calibration split's masked predictions (recomputed here in numpy), and predict and serve
    decide a request without metadata at it, one with some fields missing without a guarantee, and say which."""
    import shutil

    from fastapi.testclient import TestClient

    from riskcl.deploy.scoring import predict_files
    from riskcl.deploy.serve import create_app
    from riskcl.experiment import RunFolder, calibrate_run
    from riskcl.experiment.folder import CALIB_NO_METADATA

    run, _ = fusion_run
    shutil.copytree(run, tmp_path / "run")
    run = tmp_path / "run"
    out = calibrate_run(run, alpha=0.3, method="crc", allow_uncertified=True)
    folder = RunFolder(run)
    tax = folder.taxonomy()
    masked = folder.predictions(CALIB_NO_METADATA)
    assert set(out["inputs"]) == {"complete", "none"} and out["inputs"]["complete"]["threshold"] == out["threshold"]
    t_none = out["inputs"]["none"]["threshold"]
    p_mal = np.exp(masked["logits"].astype(np.float64))
    p_mal = (p_mal / p_mal.sum(1, keepdims=True))[:, tax.superclass == 1].sum(1)
    malignant = tax.superclass[masked["target"]] == 1
    lesions = masked["groups"][malignant]  # a lesion is missed when any of its malignant images is
    # (the threshold is one of these scores: compared with a rounding margin)
    missed = [p_mal[malignant][lesions == g].min() < t_none - 1e-12 for g in np.unique(lesions)]
    assert np.mean(missed) == pytest.approx(out["inputs"]["none"]["calibration_cer"])
    if out["inputs"]["none"]["certified"]:
        assert np.mean(missed) <= 0.3
    test = folder.splits().query("split == 'test'").head(3)
    paths = list(test["path"])
    meta = tmp_path / "meta.csv"
    age = folder.metadata_encoding().columns[0].categories[0]
    meta.write_text(f"image,age,sex\n{paths[0]},{age},female\n{paths[1]},,male\n")
    with pytest.warns(UserWarning):
        rows = predict_files(run, paths, metadata=meta, allow_uncertified=True).rows
    by = {r["image"]: r for r in rows}
    assert by[paths[2]]["inputs"] == "none" and by[paths[2]]["threshold"] == pytest.approx(t_none)
    assert by[paths[1]]["inputs"] == "partial" and by[paths[1]]["certified"] == "no"
    assert by[paths[0]]["inputs"] == "complete" and by[paths[0]]["threshold"] == pytest.approx(out["threshold"])
    client = TestClient(create_app(run, allow_uncertified=True))
    body = open(paths[2], "rb").read()
    answer = client.post("/predict", files={"file": ("a.jpg", body, "image/jpeg")}).json()
    assert answer["metadata_inputs"] == "none" and answer["threshold"] == pytest.approx(t_none)
    assert "requests without metadata" in answer["operating_point"]["how"]
    answer = client.post("/predict", files={"file": ("a.jpg", body, "image/jpeg")},
                         data={"metadata": json.dumps({"sex": "male"})}).json()
    assert answer["metadata_inputs"] == "partial" and not answer["operating_point"]["certified"]
    assert "NOT CERTIFIED for requests with some metadata columns missing" in answer["operating_point"]["how"]
    explained = client.post("/explain", files={"file": ("a.jpg", body, "image/jpeg")})  # was a 500
    assert explained.status_code == 200 and "clinical data treated as missing" in explained.headers["X-Saliency-Note"]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium); .ci/run installs it")
def test_the_page_lists_age_bins_in_order_and_spaces_its_clinical_fields(fusion_run, tmp_path):
    from _browser import screenshot_page
    from riskcl.experiment import RunFolder

    run, _ = fusion_run
    image = RunFolder(run).splits().query("split == 'test'")["path"].iloc[0]
    shown = screenshot_page(run, image, tmp_path / "page.png")
    ages, sexes = shown["meta_options"]
    assert ages == ["unknown", "<30", "30-44", "45-59", "60-74", "75+"] and sexes == ["unknown", "female", "male"]
    assert not shown["meta_overlap"] and not shown["probabilities_hidden"]


def test_an_ensemble_of_fusion_runs_reads_the_metadata_too(fusion_run, tmp_path):
    from dataclasses import replace

    from riskcl.deploy.export import export_run
    from riskcl.experiment import RunFolder, run_experiment
    from riskcl.experiment.ensemble import make_ensemble
    from riskcl.experiment.folder import NO_METADATA

    run, _ = fusion_run
    cfg = RunFolder(run).read_config()
    other = tmp_path / "seed1"
    run_experiment(replace(cfg, seed=1), other)
    metrics = make_ensemble([run, other], tmp_path / "ens")
    folder = RunFolder(tmp_path / "ens")
    assert folder.metadata_encoding() == RunFolder(run).metadata_encoding() and NO_METADATA in metrics
    meta = export_run(tmp_path / "ens", tmp_path / "export", check_limit=20)
    assert meta["metadata_input"] and meta["parity"]["decision_flips"] == 0
    image_only = tmp_path / "image-only"
    run_experiment(replace(cfg, epochs=1, model=replace(cfg.model, metadata=[])), image_only)
    with pytest.raises(ValueError, match="other clinical metadata"):
        make_ensemble([run, image_only], tmp_path / "ens2")


def _encoding(**columns):
    from riskcl.data.encoding import MetadataEncoding

    return MetadataEncoding.fit(columns, list(columns))


def test_the_metadata_csv_finds_images_by_path_or_name_and_refuses_two_different_rows(tmp_path):
    from riskcl.deploy.scoring import metadata_rows

    enc = _encoding(age=[40, 50, 60], sex=["male", "female", "female"])
    path = tmp_path / "meta.csv"
    path.write_text("image,age,sex,dx\n/a/x.jpg,40,male,mel\ny.jpg,,female,nv\ny.jpg,,female,nv\n")
    with pytest.warns(UserWarning, match="1 of 3 image"):
        rows = metadata_rows(["/elsewhere/x.jpg", "/b/y.jpg", "z.jpg"], path, enc)
    assert rows == [{"age": "40", "sex": "male"}, {"age": "", "sex": "female"}, {}]  # dx is never read
    path.write_text("image,age\nx.jpg,40\n/other/x.jpg,41\n")
    with pytest.raises(ValueError, match=r"line 3 gives /other/x.jpg .* keep one row per image"):
        metadata_rows(["x.jpg"], path, enc)
    path.write_text("file,age\nx.jpg,40\n")
    with pytest.raises(ValueError, match="expected a column 'image'"):
        metadata_rows(["x.jpg"], path, enc)


def test_a_metadata_csv_that_matches_nothing_says_so(tmp_path):
    """HAM10000's ids without extension, capitalised headers, Excel's byte-order mark and other spellings of a
    category are matched where unambiguous; what still does not match is counted in a warning, never silent."""
    from riskcl.deploy.scoring import metadata_rows

    enc = _encoding(age=[40, 50, 60], sex=["male", "female", "female"], site=["back", "face", "face"])
    path = tmp_path / "meta.csv"
    path.write_bytes("\ufeffImage,Age,SEX\nISIC_1,40,Male\nISIC_2,50,other\n".encode("utf-8"))
    with pytest.warns(UserWarning) as caught:
        rows = metadata_rows(["/data/ISIC_1.jpg", "/data/ISIC_2.jpg", "/data/ISIC_3.jpg"], path, enc)
    assert rows[:2] == [{"age": "40", "sex": "Male"}, {"age": "50", "sex": "other"}] and rows[2] == {}
    text = " ".join(str(w.message) for w in caught)
    assert "1 of 3 image(s) have no row" in text and "no column ['site']" in text
    assert "sex: 1 (it knows ['female', 'male'])" in text  # "other" is unseen; "Male" matched "male"
    assert enc.pattern(rows[0]) == "partial" and enc.pattern({}) == "none"
    assert enc.pattern({"age": 1, "sex": "FEMALE", "site": " back "}) == "complete"
    np.testing.assert_array_equal(enc.encode_row({"sex": "Male"}), enc.encode_row({"sex": "male"}))


def test_the_metadata_only_reference_is_a_logistic_regression_on_the_encoding_alone(fusion_run, tmp_path):
    """Its test logits are the saved linear layer applied to the saved encoding of each image's metadata (plain
    numpy: the pixels play no part); it has no image to fuse, so no no-metadata scoring and no fusion head."""
    from safetensors.numpy import load_file

    from riskcl.cli import main
    from riskcl.decision import softmax
    from riskcl.experiment import RunFolder, run_experiment
    from riskcl.experiment.folder import NO_METADATA
    from riskcl.report.collect import find_runs

    _, root = fusion_run
    cfg = config_from_dict({"name": "meta-only", "epochs": 3, "progress": False, "tta": "flip",
                            "data": {"name": "isic2018", "root": str(root), "image_size": 16},
                            "model": {"name": "metadata-only", "metadata": ["age", "sex"]},
                            "optim": {"batch_size": 32, "lr": 0.05}})
    out = tmp_path / "runs" / "meta-only"
    m = run_experiment(cfg, out)
    folder = RunFolder(out)
    test, enc = folder.predictions("test"), folder.metadata_encoding()
    x = enc.encode({"age": test["meta__age"], "sex": test["meta__sex"]})
    weights = load_file(str(out / "model.safetensors"))
    logits = x @ weights["linear.weight"].T + weights["linear.bias"]  # with TTA the run saves log-probabilities
    np.testing.assert_allclose(softmax(test["logits"]), softmax(logits), atol=1e-5)
    assert not folder.has_predictions(NO_METADATA) and NO_METADATA not in m and "fusion" not in m["run"]
    assert m["run"]["metadata_inputs"] == ["age", "sex"]
    (record,), _ = find_runs(tmp_path / "runs")
    assert record.method == "ce" and record.run["model"] == "metadata-only"  # flips of an unread image: no TTA
    assert main(["card", str(out), "--bootstrap", "20", "--out", str(tmp_path / "card.md")]) == 0
    card = (tmp_path / "card.md").read_text()
    assert "The model reads no image" in card and "logistic regression on the clinical inputs" in card
    assert "reads no image: there is no saliency to show" in card and "metadata-only reference reads no" in card
    # served: no input check or saliency (there is no image to check), and the answer follows the metadata alone
    from fastapi.testclient import TestClient

    from riskcl.deploy.serve import create_app

    client = TestClient(create_app(out))
    assert client.get("/model").json()["input_check_available"] is False
    body = open(folder.splits().query("split == 'test'")["path"].iloc[0], "rb").read()
    row = {"age": str(test["meta__age"][0]), "sex": str(test["meta__sex"][0])}
    answer = client.post("/predict", files={"file": ("a.jpg", body, "image/jpeg")}, data={"metadata": json.dumps(row)})
    expected = softmax(enc.encode({k: [v] for k, v in row.items()}) @ weights["linear.weight"].T
                       + weights["linear.bias"])[0]
    assert answer.status_code == 200 and answer.json()["p_malignant"] == pytest.approx(
        float(expected[RunFolder(out).taxonomy().superclass == 1].sum()), abs=1e-5)
    explain = client.post("/explain", files={"file": ("a.jpg", body, "image/jpeg")})
    assert explain.status_code == 501 and "reads no image" in explain.json()["error"]
    assert client.get("/health").status_code == 200
