"""End to end: run folders, resume, CLI commands, models and the engine."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from _tiny import tiny
from conftest import BRAIN_MRI, needs_brain_mri
from riskcl.cli import main
from riskcl.experiment import read_status, run_experiment
from riskcl.experiment.io import load_npz
from riskcl.metrics import safety_report
from riskcl.taxonomy import get_taxonomy

RUN_FILES = {"config.yaml", "history.csv", "metrics.json", "predictions.npz", "val_predictions.npz",
             "model.safetensors", "last.pt", "status.json", "splits.csv", "data.json"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny-ce"
    metrics = run_experiment(tiny(), out)
    return out, metrics


def test_run_folder_contract(tiny_run):
    out, metrics = tiny_run
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert read_status(out)["state"] == "finished"
    preds = load_npz(out / "predictions.npz")
    assert set(preds) == {"logits", "target", "ids", "groups"}
    recomputed = safety_report(torch.softmax(torch.as_tensor(preds["logits"]), 1), preds["target"],
                               get_taxonomy("demo"))
    for k, v in recomputed.items():
        assert metrics[k] == pytest.approx(v), k
    from riskcl.data import create_dataset

    test_ids = create_dataset("demo", split="test", image_size=16, scale=0.15, progress=False).ids
    assert list(preds["ids"]) == test_ids and len(test_ids) == metrics["n"]
    with open(out / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_cer", "val_f1_macro", "val_type_i", "val_type_ii"} <= set(rows[0])
    run = metrics["run"]
    assert run["dataset"] == "demo" and run["loss"] == "ce" and run["seed"] == 0 and run["device"] == "cpu"
    assert metrics["wall_time_s"] > 0


def test_rerun_of_finished_folder_does_nothing(tiny_run):
    out, metrics = tiny_run
    stamp = (out / "metrics.json").stat().st_mtime_ns
    assert run_experiment(tiny(), out) == metrics
    assert (out / "metrics.json").stat().st_mtime_ns == stamp


def test_folder_of_another_config_is_refused(tiny_run):
    out, _ = tiny_run
    with pytest.raises(ValueError, match="different config"):
        run_experiment(tiny(seed=5), out)


def test_resume_after_interruption_equals_uninterrupted(tmp_path, tiny_run, monkeypatch):
    import riskcl.experiment.run as run_mod

    _, full = tiny_run
    out = tmp_path / "resumed"
    real = run_mod.train_one_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stopped during the second epoch
        return real(*args, **kwargs)

    monkeypatch.setattr(run_mod, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny(), out)
    assert read_status(out)["state"] == "interrupted"
    assert run_mod.load_checkpoint(out / "last.pt")["epoch"] == 1
    monkeypatch.setattr(run_mod, "train_one_epoch", real)
    resumed = run_experiment(tiny(), out)
    assert np.array_equal(load_npz(out / "predictions.npz")["logits"],
                          load_npz(tiny_run[0] / "predictions.npz")["logits"])
    assert {k: v for k, v in resumed.items() if k != "wall_time_s"} == \
        {k: v for k, v in full.items() if k != "wall_time_s"}


def test_cli_evaluate_and_predict(tiny_run, tmp_path, capsys):
    out, metrics = tiny_run
    assert main(["evaluate", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cer"] == pytest.approx(metrics["cer"])
    # Predict real files: write two demo test images as PNGs.
    from PIL import Image

    from riskcl.data import create_dataset

    ds = create_dataset("demo", split="test", image_size=16, scale=0.15, progress=False, augment=False)
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.asarray(ds.images[ds.rows[i]])).save(p)
        paths.append(str(p))
    csv_path = tmp_path / "preds.csv"
    assert main(["predict", str(out), *paths, "--out", str(csv_path)]) == 0
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and set(rows[0]) >= {"image", "predicted", "superclass", "p_malignant", "p_nevus"}
    probs = np.array([[float(r[f"p_{c}"]) for c in ds.classes] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    logits = load_npz(out / "predictions.npz")["logits"][:2]
    np.testing.assert_allclose(probs, torch.softmax(torch.as_tensor(logits), 1).numpy(), atol=1e-4)
    assert main(["predict", str(out), str(tmp_path / "missing.png"), "--out", str(csv_path)]) == 2


def test_cli_help_for_every_command(capsys):
    from riskcl.cli import COMMANDS, build_parser

    build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: riskcl" in capsys.readouterr().out


def test_cli_train_with_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    import yaml

    from _tiny import TINY

    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["train", str(cfg), "epochs=1", "loss.name=rcl-proposed", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["run"]["loss"] == "rcl-proposed" and m["run"]["epochs"] == 1
    assert main(["train", str(cfg), "loss.nme=ce", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'loss.name'" in capsys.readouterr().err


@needs_brain_mri
@pytest.mark.slow
def test_brain_mri_cli_acceptance_command(tmp_path):
    out = tmp_path / "bm"
    assert main(["train", "configs/brain_mri_cpu.yaml", f"data.root={BRAIN_MRI}", "epochs=1", "--out", str(out),
                 "--quiet"]) == 0
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    m = json.loads((out / "metrics.json").read_text())
    preds = load_npz(out / "predictions.npz")
    assert m["n"] == 1311 and len(preds["ids"]) == 1311 and preds["ids"][0].startswith("Te-")
    r = safety_report(torch.softmax(torch.as_tensor(preds["logits"]), 1), preds["target"], get_taxonomy("brain_mri"))
    assert r["cer"] == pytest.approx(m["cer"]) and r["type_ii"] == m["type_ii"]
    imgs = [str(BRAIN_MRI / "Testing" / "glioma" / "Te-gl_0010.jpg"),
            str(BRAIN_MRI / "Testing" / "notumor" / "Te-no_0010.jpg")]
    assert main(["predict", str(out), *imgs, "--out", str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().strip().splitlines()) == 3


# --- models and engine -------------------------------------------------------------------------------------
def test_create_model_random_local_file_and_offline_errors(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from riskcl.models import WeightsUnavailableError, create_model

    m = create_model("resnet10t", 4, pretrained=False)
    assert m.riskcl_weights == "random" and m.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    # A local "pretrained" file with a 1000-class head: the head is dropped, the body loaded.
    donor = create_model("resnet10t", 1000, pretrained=False)
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(tmp_path / "w.safetensors"))
    m2 = create_model("resnet10t", 4, weights_path=tmp_path / "w.safetensors")
    assert torch.equal(m2.conv1[0].weight, donor.conv1[0].weight) and "new head" in m2.riskcl_weights
    torch.save(donor.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="safetensors"):
        create_model("resnet10t", 4, weights_path=tmp_path / "w.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="model.pretrained=false"):
        create_model("resnet10t", 4, pretrained=True)
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        m3 = create_model("resnet10t", 4, pretrained="auto")
    assert m3.riskcl_weights.startswith("random")
    with pytest.raises(ValueError, match="Unknown timm model"):
        create_model("resnet9000", 4, pretrained=False)


def test_engine_few_steps_reduces_loss():
    from riskcl.engine import predict_logits, train_one_epoch
    from riskcl.losses import create_loss
    from riskcl.models import create_model

    torch.manual_seed(0)
    x = torch.randn(64, 3, 16, 16)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = create_model("resnet10t", 2, pretrained=False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss = create_loss("ce")
    first = train_one_epoch(model, loader, loss, opt, torch.device("cpu"), progress=False)
    for _ in range(4):
        last = train_one_epoch(model, loader, loss, opt, torch.device("cpu"), progress=False, max_steps=3)
    assert last < first
    logits, target = predict_logits(model, loader, torch.device("cpu"), progress=False)
    assert logits.shape == (64, 2) and torch.equal(target, y)


def test_skipped_bad_images_are_listed_in_the_run_folder(tmp_path):
    from _standins import write_image

    from riskcl.config import config_from_dict
    from _tiny import TINY

    root = tmp_path / "data"
    for c in ("calm", "angry"):
        for i in range(12):
            write_image(root / c / f"{c}{i}.png", hash((c, i)) % 997, size=12)
    (root / "angry" / "angry3.png").write_bytes(b"")
    (tmp_path / "tax.yaml").write_text("name: t\nbenign: [calm]\nmalignant: [angry]\n")
    cfg = {**TINY, "epochs": 1, "data": {"name": "folder", "root": str(root), "image_size": 12,
                                         "val_fraction": 0.25, "test_fraction": 0.25,
                                         "options": {"taxonomy": str(tmp_path / "tax.yaml")}}}
    with pytest.raises(ValueError, match="angry3.png"):
        run_experiment(config_from_dict(cfg), tmp_path / "strict")
    cfg["data"]["on_bad_image"] = "skip"
    metrics = run_experiment(config_from_dict(cfg), tmp_path / "run")
    listed = (tmp_path / "run" / "skipped_images.txt").read_text()
    assert "angry3.png" in listed and "zero-byte" in listed
    assert metrics["run"]["n_train"] + metrics["run"]["n_val"] + metrics["n"] == 23
