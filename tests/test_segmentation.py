"""Segmentation as a task: pixel losses (against MONAI and by hand), metrics (against MONAI), the guarantee on the
missed share of the lesion (conformal risk control checked over 1,000 re-splits), masks (bad ones named), the
shared augmentation, and the verbs end to end on generated data."""
from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _browser import CHROMIUM
from _standins import make_isic_seg, write_mask
from conftest import ISIC_SAMPLE, needs_isic
from riskcl.config import ConfigError, config_from_dict
from riskcl.data import create_datasets
from riskcl.data.augment import augment, augment_masks, sample_params
from riskcl.data.masks import decode_mask, resize_mask
from riskcl.decision.segmentation import control_fnr, fnr_curves, resplit_check
from riskcl.losses import create_loss, list_losses
from riskcl.metrics.segmentation import hd95, per_image_metrics
from riskcl.taxonomy import get_taxonomy

monai = pytest.importorskip("monai")
SEG_LOSSES = list_losses("segmentation")
LESION = get_taxonomy("lesion")


def _maps(n=4, size=12, seed=0, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, 1, size, size, generator=g) * scale).to(dtype)
    target = (torch.rand(n, size, size, generator=g) < 0.3).long()
    return logits, target


# --- losses ---------------------------------------------------------------------------------------------------
def test_segmentation_losses_are_registered_for_their_task_only():
    assert set(SEG_LOSSES) == {"bce", "dice", "bce-dice", "tversky", "focal-tversky", "rcl-pixel"}
    assert not set(SEG_LOSSES) & set(list_losses("classification"))


@pytest.mark.parametrize("alpha,beta", [(0.3, 0.7), (0.7, 0.3), (0.5, 0.5), (0.1, 0.9)])
def test_tversky_equals_monai_with_beta_weighing_false_negatives(alpha, beta):
    from monai.losses import TverskyLoss

    x, y = _maps(seed=int(alpha * 10))
    ours = create_loss("tversky", alpha=alpha, beta=beta)(x, y)
    ref = TverskyLoss(sigmoid=True, alpha=alpha, beta=beta)(x, y[:, None].double())
    torch.testing.assert_close(ours, ref.to(ours.dtype))
    # beta weighs the misses: with beta > alpha, missing 2 of 4 lesion pixels costs more than 2 false pixels
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0] = 1
    missed, extra = torch.full((1, 1, 4, 4), -20.0), torch.full((1, 1, 4, 4), -20.0)
    missed[0, 0, 0, :2] = 20.0
    extra[0, 0, 0], extra[0, 0, 1, :2] = 20.0, 20.0
    loss = create_loss("tversky", alpha=0.3, beta=0.7)
    assert float(loss(missed, target)) > float(loss(extra, target))


def test_dice_and_bce_equal_monai_and_torch():
    from monai.losses import DiceLoss

    x, y = _maps(seed=5)
    torch.testing.assert_close(create_loss("dice")(x, y), DiceLoss(sigmoid=True)(x, y[:, None].double()))
    torch.testing.assert_close(create_loss("bce")(x, y), F.binary_cross_entropy_with_logits(x, y[:, None].double()))
    torch.testing.assert_close(create_loss("bce-dice")(x, y), create_loss("bce")(x, y) + create_loss("dice")(x, y))


def test_focal_tversky_is_the_power_of_the_tversky_loss_per_image():
    x, y = _maps(seed=7)
    per_image = torch.stack([create_loss("tversky")(x[i:i + 1], y[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(create_loss("focal-tversky", gamma=0.75)(x, y), (per_image ** 0.75).mean())


def test_pixel_risk_loss_by_hand():
    # one image, 4 pixels: lesion called lesion, lesion missed, background called lesion, background right
    x = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]], dtype=torch.float64)
    y = torch.tensor([[[1, 1], [0, 0]]])
    bce = F.binary_cross_entropy_with_logits(x, y[:, None].double(), reduction="none").flatten()
    expected = (bce * torch.tensor([1.0, 20.0, 5.0, 1.0], dtype=torch.float64)).mean()
    torch.testing.assert_close(create_loss("rcl-pixel", lambda1=5, lambda2=20)(x, y), expected)
    # from the run's cost section when the loss has no lambdas of its own
    cost = np.array([[0.0, 5.0], [20.0, 0.0]])
    torch.testing.assert_close(create_loss("rcl-pixel", taxonomy=LESION, cost=cost)(x, y), expected)
    # unit severities: plain BCE
    torch.testing.assert_close(create_loss("rcl-pixel", lambda1=1, lambda2=1)(x, y), bce.mean())


@pytest.mark.parametrize("name", SEG_LOSSES)
def test_every_segmentation_loss_passes_a_gradient_check(name):
    x, y = _maps(n=2, size=5, seed=3)
    x = x + torch.sign(x) * 0.05  # keep logits away from 0, where the risk loss's weights switch
    x.requires_grad_(True)
    loss = create_loss(name, taxonomy=LESION, cost=np.array([[0.0, 5.0], [20.0, 0.0]]))
    assert torch.autograd.gradcheck(lambda z: loss(z, y), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", SEG_LOSSES)
def test_every_segmentation_loss_is_finite_on_extreme_logits(name):
    x, y = _maps(seed=2, scale=1e4, dtype=torch.float32)
    x.requires_grad_(True)
    value = create_loss(name)(x, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


def test_segmentation_losses_refuse_bad_masks():
    x, _ = _maps()
    with pytest.raises(ValueError, match="only 0 .background. and 1"):
        create_loss("dice")(x, torch.full((4, 12, 12), 2))
    with pytest.raises(ValueError, match="shape"):
        create_loss("dice")(x, torch.zeros(4, 10, 12))


# --- metrics --------------------------------------------------------------------------------------------------
def _random_masks(n=12, size=32, seed=0):
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(seed)
    t = np.zeros((n, size, size), bool)
    for i in range(n):
        y0, x0 = rng.integers(2, size // 2, 2)
        t[i, y0:y0 + rng.integers(4, size // 2), x0:x0 + rng.integers(4, size // 2)] = True
    p = np.stack([binary_dilation(m, iterations=int(rng.integers(0, 3))) for m in t])
    p[rng.random(p.shape) < 0.02] = True
    p[:, : size // 8] = False  # cut some lesions: under-segmentation
    return p, t


def test_dice_and_hd95_equal_monai():
    from monai.metrics import compute_dice, compute_hausdorff_distance

    p, t = _random_masks()
    ours = per_image_metrics(p, t)
    pt, tt = torch.from_numpy(p)[:, None].float(), torch.from_numpy(t)[:, None].float()
    np.testing.assert_allclose(ours["dice"], compute_dice(pt, tt).flatten().numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours["hd95"], compute_hausdorff_distance(pt, tt, percentile=95).flatten().numpy(),
                               rtol=1e-5)


def test_metrics_by_hand_including_empty_images():
    t = np.zeros((3, 4, 4), bool)
    p = np.zeros((3, 4, 4), bool)
    t[0, :2, :2] = True          # 4 lesion pixels; 1 found, plus 1 false pixel
    p[0, 0, 0] = p[0, 3, 3] = True
    p[1, 0, 0] = True            # no lesion, one false pixel
    m = per_image_metrics(p, t)  # image 2: no lesion, nothing predicted
    assert m["fnr"][0] == 0.75 and m["missed_half"][0] == 1.0 and m["over_rate"][0] == 0.5
    assert m["dice"][0] == pytest.approx(2 / (2 + 1 + 3)) and m["jaccard"][0] == pytest.approx(1 / 5)
    assert m["thresholded_jaccard"][0] == 0.0  # below ISIC's 0.65
    assert np.isnan(m["fnr"][1]) and m["dice"][1] == 0.0 and np.isnan(m["hd95"][1])
    assert m["dice"][2] == 1.0 and m["jaccard"][2] == 1.0 and m["over_rate"][2] == 0.0
    assert hd95(p[0], p[0]) == 0.0


# --- the guarantee --------------------------------------------------------------------------------------------
def _fixed_predictions(n=1200, size=10, seed=0):
    """Probability maps of varying quality: lesion pixels score around a per-image level."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, size, size)) < rng.uniform(0.1, 0.6, (n, 1, 1))
    level = rng.uniform(0.3, 0.9, (n, 1, 1))
    probs = np.where(masks, rng.beta(2, 2, masks.shape) * level + (1 - level) * 0.5,
                     rng.beta(1, 4, masks.shape))
    return probs.astype(np.float32), masks


def test_crc_bounds_the_mean_missed_lesion_share_over_1000_resplits():
    probs, masks = _fixed_predictions()
    grid = np.linspace(0, 1, 1001)
    losses, _ = fnr_curves(probs, masks, grid)  # every image has a lesion here
    rng = np.random.default_rng(1)
    alpha, n_cal, realised = 0.1, 300, []
    for _ in range(1000):
        perm = rng.permutation(len(losses))
        cal, test = losses[perm[:n_cal]], losses[perm[n_cal:]]
        risk = cal.mean(0)
        ok = n_cal / (n_cal + 1) * risk + 1 / (n_cal + 1) <= alpha
        k = np.flatnonzero(ok).max()
        realised.append(test[:, k].mean())
    realised = np.asarray(realised)
    mc = 3 * realised.std() / np.sqrt(len(realised))
    assert realised.mean() <= alpha + mc
    assert realised.mean() > alpha - 0.03  # and not trivially conservative
    # the library functions agree with the hand-written rule above
    r = control_fnr("crc", probs[perm[:n_cal]], masks[perm[:n_cal]], alpha)
    assert r.threshold == pytest.approx(grid[k]) and r.certified
    check = resplit_check(probs, masks, alpha, n_cal, n_splits=1000, seed=1)
    assert check["mean_realised_fnr"] == pytest.approx(realised.mean())


def test_ltt_holds_with_probability_one_minus_delta():
    probs, masks = _fixed_predictions(n=900, seed=2)
    rng = np.random.default_rng(3)
    alpha, delta, violations = 0.15, 0.1, 0
    for _ in range(60):
        perm = rng.permutation(len(probs))
        r = control_fnr("ltt", probs[perm[:300]], masks[perm[:300]], alpha, delta)
        test_losses, _ = fnr_curves(probs[perm[300:]], masks[perm[300:]], np.array([r.threshold]))
        violations += test_losses.mean() > alpha
    assert violations / 60 <= delta + 0.1


def test_images_without_lesion_are_left_out_and_groups_average():
    probs, masks = _fixed_predictions(n=40)
    masks[:10] = False
    r = control_fnr("crc", probs, masks, 0.2)
    assert r.n_calibration == 30 and r.unit == "image"
    groups = np.repeat(np.arange(20), 2)
    assert control_fnr("crc", probs, masks, 0.2, groups=groups).unit == "lesion"
    with pytest.raises(ValueError, match="lesion pixels"):
        control_fnr("crc", probs, np.zeros_like(masks), 0.2)


# --- masks and data -------------------------------------------------------------------------------------------
def test_bad_masks_are_named(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(grey)
    with pytest.raises(ValueError, match=r"grey.png: not a binary mask"):
        decode_mask(grey)
    wide = write_mask(tmp_path / "wide.png", 0, (40, 10))
    with pytest.raises(ValueError, match=r"wide.png: mask of 40 x 10 pixels has another aspect ratio"):
        decode_mask(wide, (30, 40))
    with pytest.raises(ValueError, match="mask file not found"):
        decode_mask(tmp_path / "none.png")
    assert decode_mask(write_mask(tmp_path / "ones.png", 1, (8, 8), values=(0, 1))).any()


def test_a_palette_mask_is_read_through_its_palette(tmp_path):
    """Index 0 painted white is the lesion, not the background; a palette with colours is refused."""
    index = np.zeros((8, 8), np.uint8)
    index[:2] = 1  # a 2-row band of index 1
    im = Image.fromarray(index, mode="P")
    im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 -> white, index 1 -> black
    im.save(tmp_path / "p.png")
    mask = decode_mask(tmp_path / "p.png")
    assert mask[2:].all() and not mask[:2].any()  # white (index 0) is the lesion
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 1 -> red
    im.save(tmp_path / "red.png")
    with pytest.raises(ValueError, match="red.png: a palette mask whose colours are not black and white"):
        decode_mask(tmp_path / "red.png")


def test_masks_follow_the_images_rule_on_links_leaving_the_data_root(tmp_path):
    from riskcl.data.segmentation import index_seg_folder

    root = tmp_path / "d"
    for i in range(3):
        write_mask(root / "images" / f"x{i}.png", i)
        write_mask(root / "masks" / f"x{i}.png", i)
    outside = write_mask(tmp_path / "elsewhere" / "secret.png", 9)
    (root / "masks" / "x1.png").unlink()
    (root / "masks" / "x1.png").symlink_to(outside)
    index = index_seg_folder(root)
    assert sorted(index.table["id"]) == ["x0", "x2"]
    assert any("x1.png" in p and "outside the data root" in p and "image x1.png is left out" in p
               for p in index.problems)
    assert sorted(index_seg_folder(root, allow_outside_root=True).table["id"]) == ["x0", "x1", "x2"]


def test_a_mask_three_times_its_image_is_resized_with_nearest_neighbour():
    big = np.zeros((450, 600), bool)
    big[90:270, 150:450] = True
    small = resize_mask(big, 50)          # the model's 50 x 50 grid
    assert set(np.unique(small)) <= {0, 1}
    rows, cols = np.nonzero(small)
    # output row i samples input row floor((i + 0.5) * 9): in [90, 270) for i = 10..29; columns: * 12, i = 12..36
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 29, 12, 36)


def test_missing_and_bad_masks_error_or_are_skipped_and_listed(tmp_path):
    root = make_isic_seg(tmp_path / "d", "task1", n=30)
    gt = root / "ISIC2018_Task1_Training_GroundTruth"
    (gt / "ISIC_0000003_segmentation.png").unlink()
    Image.fromarray(np.full((24, 24), 7, np.uint8)).save(gt / "ISIC_0000004_segmentation.png")
    with pytest.raises(ValueError, match=r"(?s)2 bad mask\(s\).*ISIC_0000003_segmentation.png: mask file not found"):
        create_datasets("isic2018_seg", root, image_size=8, progress=False, cache_dir=tmp_path / "c")
    data = create_datasets("isic2018_seg", root, image_size=8, progress=False, cache_dir=tmp_path / "c",
                           on_bad_image="skip")
    assert sum(len(d) for d in data.datasets.values()) == 28
    assert any("not a binary mask" in r for r in data.info["skipped"].values())


def test_augmentation_moves_a_mask_exactly_as_its_image():
    masks = torch.zeros(6, 16, 16, dtype=torch.uint8)
    masks[:, 3:9, 4:13] = 1
    images = masks[:, None].float().repeat(1, 3, 1, 1)
    params = sample_params(6, torch.Generator().manual_seed(0))
    moved_images, moved_masks = augment(images, params), augment_masks(masks, params)
    assert torch.equal(moved_images[:, 0].round().to(torch.uint8), moved_masks)
    assert moved_masks.dtype == torch.uint8 and set(moved_masks.unique().tolist()) <= {0, 1}


def test_config_refuses_a_loss_or_data_of_another_task():
    base = {"task": "segmentation", "data": {"name": "seg_demo"}, "loss": {"name": "dice"}}
    config_from_dict(base)
    with pytest.raises(ConfigError, match="a loss of the run's task .segmentation."):
        config_from_dict({**base, "loss": {"name": "ce"}})
    with pytest.raises(ConfigError, match="set `task: classification`"):
        config_from_dict({**base, "data": {"name": "demo"}})
    with pytest.raises(ConfigError, match="select_metric"):
        config_from_dict({**base, "select_metric": "cer"})
    with pytest.raises(ConfigError, match="model.arch"):
        config_from_dict({"model": {"arch": "unet"}})


# --- the verbs on generated data ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    from riskcl.experiment import run_experiment

    cfg = config_from_dict({
        "name": "seg", "task": "segmentation", "epochs": 2, "progress": False,
        "data": {"name": "seg_demo", "image_size": 32, "options": {"scale": 0.1}, "calib_fraction": 0.2},
        "model": {"name": "resnet10t", "arch": "unet", "pretrained": False,
                  "options": {"decoder_channels": [32, 16, 8, 8, 4]}},
        "loss": {"name": "rcl-pixel"}, "optim": {"batch_size": 16, "lr": 0.003}})
    out = tmp_path_factory.mktemp("seg") / "run"
    run_experiment(cfg, out)
    return out


def test_a_segmentation_run_writes_masks_reports_and_resumes_finished(seg_run):
    from riskcl.experiment import run_experiment
    from riskcl.experiment.folder import RunFolder

    folder = RunFolder(seg_run)
    m = folder.metrics()
    assert m["run"]["task"] == "segmentation" and m["run"]["classes"] == ["background", "lesion"]
    for key in ("dice", "jaccard", "thresholded_jaccard", "fnr", "missed_half", "over_rate", "hd95"):
        assert 0 <= m[key] <= (1 if key != "hd95" else 64), key
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi, key
    test = folder.predictions("test")
    assert test["logits"].shape == test["target"].shape == (m["run"]["n_test"], 32, 32)
    # the report is the metric functions applied to the saved maps
    probs = 1 / (1 + np.exp(-test["logits"]))
    ref = per_image_metrics(probs >= 0.5, test["target"])
    assert m["dice"] == pytest.approx(ref["dice"].mean(), abs=1e-3)
    assert set(folder.history().columns) >= {"val_dice", "val_fnr", "val_missed_half"}
    assert run_experiment(folder.read_config(), seg_run) == m  # finished: nothing redone


def test_calibrate_and_evaluate_a_segmentation_run(seg_run, capsys):
    from riskcl.cli import main

    assert main(["calibrate", str(seg_run), "--alpha", "0.2", "--method", "crc"]) == 0
    out = capsys.readouterr().out
    assert "pixel threshold p(lesion) >=" in out and "expected missed share of the lesion" in out
    assert "images whose masks hold lesion pixels" in out and "lesions with a lesion" not in out
    cal = json.loads((seg_run / "calibration.json").read_text())
    assert cal["task"] == "segmentation" and cal["certified"]
    # the calibration split's missed share at the threshold obeys CRC's inequality
    n = cal["n_calibration"]
    assert n / (n + 1) * cal["calibration_cer"] + 1 / (n + 1) <= 0.2 + 1e-9
    assert main(["evaluate", str(seg_run)]) == 0
    out = capsys.readouterr().out
    assert "a pixel is lesion when p(lesion) >=" in out and "missed lesion" in out
    report = json.loads((seg_run / "eval_test.json").read_text())
    assert report["operating_point"]["threshold"] == cal["threshold"]
    assert report["operating_point"]["fnr"] == pytest.approx(cal["test"]["fnr"], abs=2e-3)



def _images(tmp_path, n=4):
    from riskcl.data.segmentation import index_seg_demo

    idx = index_seg_demo(size=40, scale=0.01, seed=9)
    paths = []
    for i in range(n):  # several sizes and aspect ratios: the masks come back at each image's own size
        path = tmp_path / f"lesion{i}.png"
        Image.fromarray(idx.images[i]).resize((40 + 9 * i, 30 + 4 * i)).save(path)
        paths.append(path)
    return paths


def test_predict_writes_a_mask_and_an_outline_per_image_and_a_csv(seg_run, tmp_path):
    import csv

    from riskcl.cli import main

    paths = _images(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(seg_run), str(tmp_path / "lesion*.png"), str(tmp_path / "broken.png"),
                 "--out", str(out), "--quiet"]) == 3  # one unreadable input
    rows = {r["image"]: r for r in csv.DictReader(out.open())}
    assert rows[str(tmp_path / "broken.png")]["decision"] == "unreadable"
    for p in paths:
        r = rows[str(p)]
        assert r["decision"] in ("segmented", "refer")
        mask = np.asarray(Image.open(r["mask"]))
        w, h = Image.open(p).size
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert int(r["lesion_px"]) == int((mask == 255).sum())
        assert Path(r["mask"].replace("_mask.png", "_outline.png")).is_file() and p.stem in r["mask"]
    # a rerun resumes: nothing scored twice
    assert main(["predict", str(seg_run), str(tmp_path / "lesion*.png"), "--out", str(out), "--quiet"]) == 0
    assert sum(1 for _ in csv.DictReader(out.open())) == len(paths)


def test_inputs_with_one_stem_never_overwrite_each_others_masks(seg_run, tmp_path):
    import csv

    from riskcl.cli import main

    (tmp_path / "src").mkdir()
    src = _images(tmp_path / "src", 3)
    inputs = []
    for folder, ext, k in (("a", "jpg", 0), ("a", "png", 1), ("b", "jpg", 2)):
        (tmp_path / folder).mkdir(exist_ok=True)
        path = tmp_path / folder / f"x.{ext}"
        Image.open(src[k]).save(path)
        inputs.append(path)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(seg_run), *map(str, inputs), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len({r["mask"] for r in rows}) == 3
    for r in rows:  # each mask file is its own image's (its shape, and its area as the row says)
        w, h = Image.open(r["image"]).size
        mask = np.asarray(Image.open(r["mask"]))
        assert mask.shape == (h, w) and int(r["lesion_px"]) == int((mask == 255).sum())


def test_export_outputs_probability_maps_and_masks_at_the_input_size(seg_run, tmp_path):
    import onnxruntime as ort

    from riskcl.deploy.export import export_run
    from riskcl.deploy.predict import RunModel
    from riskcl.deploy.segmentation import to_image_grid

    meta = export_run(seg_run, tmp_path / "export", check_limit=12)
    p = meta["parity"]
    assert p["max_abs_diff_p_lesion"] <= 1e-4 and p["mask_pixel_flips"] == 0
    assert [o["name"] for o in meta["outputs"]] == ["p_lesion", "mask"] and meta["task"] == "segmentation"
    # independently: ONNX Runtime on images of other sizes against the run folder's PyTorch model
    session = ort.InferenceSession(str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    run = RunModel(seg_run)
    for path in _images(tmp_path):
        image = np.array(Image.open(path).convert("RGB"))
        p_onnx, mask = session.run(["p_lesion", "mask"], {"images": image[None]})
        ref = to_image_grid(run.probabilities([image])[0], *image.shape[:2])
        assert p_onnx.shape == mask.shape == (1, *image.shape[:2])
        assert np.abs(p_onnx[0] - ref).max() <= 1e-4
        tie = np.abs(ref - run.op.threshold) <= 1e-4
        assert not ((mask[0] != (ref >= run.op.threshold)) & ~tie).any()


def test_card_serve_and_report_of_a_segmentation_run(seg_run, tmp_path):
    from fastapi.testclient import TestClient

    from riskcl.cli import main
    from riskcl.deploy.serve import create_app

    assert main(["calibrate", str(seg_run), "--alpha", "0.25", "--method", "ltt", "--delta", "0.2"]) == 0
    assert main(["card", str(seg_run), "--bootstrap", "50", "--out", str(tmp_path / "card.md")]) == 0
    card = (tmp_path / "card.md").read_text()
    assert "missed share of the lesion" in card and "Worst under-segmented test images" in card
    assert "misses at most 25% of the lesion per" in card and "p(malignant)" not in card
    client = TestClient(create_app(seg_run))
    assert client.get("/model").json()["task"] == "segmentation"
    path = _images(tmp_path, 1)[0]
    answer = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert answer.status_code == 200 and answer.json()["decision"] in ("segmented", "refer")
    assert answer.json()["threshold"] == pytest.approx(json.loads((seg_run / "calibration.json").read_text())[
        "threshold"])
    outline = client.post("/explain", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert outline.status_code == 200 and outline.headers["content-type"] == "image/png"
    assert client.post("/predict", files={"file": ("x.png", b"nope", "image/png")}).status_code == 415
    assert client.get("/health").status_code == 200  # still serving
    assert main(["report", str(seg_run.parent), "--out", str(tmp_path / "report"), "--bootstrap", "50"]) == 0
    report = (tmp_path / "report" / "REPORT.md").read_text()
    assert "Dice and under-segmentation" in report and "rcl-pixel" in report
    assert (tmp_path / "report" / "figures" / "dice_vs_missed_seg_demo_resnet10t.png").is_file()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium); .ci/run installs it")
def test_the_served_page_in_headless_chromium_outlines_what_riskcl_predict_says(seg_run, tmp_path):
    from _browser import screenshot_page
    from riskcl.deploy.scoring import predict_files

    image = _images(tmp_path, 1)[0]
    shown = screenshot_page(seg_run, image, tmp_path / "seg_page.png")
    (row,), *_ = predict_files(seg_run, [str(image)])  # the same operating point the server uses
    assert shown["decision"] == ("REVIEW" if row["decision"] == "refer" else "OUTLINED")
    assert shown["overlay_alt"] == "the lesion's outline" and shown["preview"] and "p(lesion)" in shown["op"]
    if row["lesion_px"]:
        assert f"({row['lesion_px']} pixels)" in shown["summary"] and f"{row['threshold']:.4f}" in shown["summary"]
    else:
        assert shown["summary"] == "No lesion found at the operating threshold."
    assert "p(malignant)" not in shown["summary"] + shown["op"]
    # its own page: no class probabilities, the outline titled as such, a notice about what an outline can miss
    assert shown["probabilities_hidden"] and shown["overlay_title"] == "Lesion outline"
    assert "outline can miss part of the lesion" in shown["notice"] and "CLEAR" not in shown["notice"]


def test_subgroups_and_a_threshold_per_group(seg_run, tmp_path):
    import shutil

    from riskcl.experiment.subgroups import calibrate_by_group, evaluate_subgroups

    run = tmp_path / "run"
    shutil.copytree(seg_run, run, ignore=shutil.ignore_patterns("last.pt"))
    result = evaluate_subgroups(run, "kind", n_boot=50)
    assert {g["group"] for g in result["groups"]} == {"nevus", "keratosis", "melanoma", "carcinoma"}
    assert sum(g["n"] for g in result["groups"]) == result["n"]
    cal = calibrate_by_group(run, "kind", alpha=0.3, method="crc")
    assert set(cal["groups"]) <= {"nevus", "keratosis", "melanoma", "carcinoma"}
    for g in cal["groups"].values():
        assert 0 <= g["threshold"] <= 1


@needs_isic
def test_real_ham10000_masks_are_read_resized_and_cached_as_their_files_say():
    data = create_datasets("isic2018_seg", ISIC_SAMPLE, image_size=8, progress=False)  # the cache test_splits made
    test = data.datasets["test"]
    assert data.info["group_unit"].startswith("lesion")
    for i in range(0, len(test), max(1, len(test) // 5)):
        mask_file = test.table["mask"].iloc[i]
        raw = np.asarray(Image.open(mask_file)) > 0
        assert raw.shape == (450, 600)
        assert np.array_equal(test.gather_masks([i])[0], resize_mask(raw, 8))
