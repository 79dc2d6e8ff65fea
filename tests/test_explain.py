"""Saliency (riskcl.deploy.explain) through pytorch-grad-cam: CNNs and ViTs, overlays, the Type II gallery."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import demo_png
from riskcl.cli import main
from riskcl.deploy.explain import saliency, target_layer
from riskcl.models import create_model
from riskcl.taxonomy import get_taxonomy

TAX = get_taxonomy("demo")


def _blob(size=32, where=(8, 16)):
    img = np.full((size, size, 3), 40, np.uint8)
    img[where[0]:where[1], where[0]:where[1]] = 220
    return img


@pytest.mark.parametrize("name,size", [("resnet10t", 64), ("vit_tiny_patch16_224", 224)])
def test_saliency_maps_for_cnns_and_vits(name, size):
    model = create_model(name, 4, pretrained=False).eval()
    layer, reshape = target_layer(model)
    assert (reshape is not None) == name.startswith("vit")
    images = [_blob(size, (size // 4, size // 2)), _blob(size, (size // 2, 3 * size // 4))]
    for target, classes in (("malignant", None), ("class", [0, 3])):
        maps = saliency(model, images, size, TAX, target, "gradcam", classes)
        assert maps.shape == (2, size, size) and np.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    with pytest.raises(ValueError, match="Unknown saliency method"):
        saliency(model, images, size, TAX, "malignant", "magic")


def test_explain_files_and_type_ii_gallery_in_report_and_card(tiny_copy, tmp_path, capsys):
    img = demo_png(tmp_path)
    assert main(["explain", str(tiny_copy), str(img), "--out", str(tmp_path / "ov")]) == 0
    for suffix in ("class", "malignant", "panel"):
        png = tmp_path / "ov" / f"{img.stem}_{suffix}.png"
        assert png.is_file() and Image.open(png).size[1] == 224
    assert main(["explain", str(tiny_copy), "--type-ii", "--cap", "3"]) == 0
    gallery = json.loads((tiny_copy / "gallery" / "gallery.json").read_text())
    metrics = json.loads((tiny_copy / "metrics.json").read_text())
    assert gallery["type_ii_total"] == metrics["type_ii"] and gallery["shown"] == min(3, metrics["type_ii"])
    for item in gallery["items"]:
        assert item["p_malignant"] < gallery["threshold"] and (tiny_copy / "gallery" / item["file"]).is_file()
    assert main(["report", str(tiny_copy.parent), "--out", str(tmp_path / "rep"), "--bootstrap", "20"]) == 0
    assert "Fatal errors (Type II) with saliency" in (tmp_path / "rep" / "REPORT.md").read_text()
    assert main(["card", str(tiny_copy), "--bootstrap", "20"]) == 0
    card = (tiny_copy / "MODEL_CARD.md").read_text()
    assert all(item["id"] in card for item in gallery["items"])
    assert main(["explain", str(tiny_copy)]) == 2 and "nothing to explain" in capsys.readouterr().err
