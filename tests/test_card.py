"""Model cards (riskcl.deploy.card): every number parsed back equals the run's files."""
from __future__ import annotations

import json
import re

import pytest

from riskcl.cli import main
from riskcl.deploy.card import build_card


def _table_after(md: str, heading: str) -> list[dict[str, str]]:
    part = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]  # this section only
    lines = [ln for ln in part.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip().strip("|"))]
        rows.append(dict(zip(header, cells)))
    return rows


def test_card_numbers_equal_metrics_and_calibration(tiny_copy, capsys):
    assert main(["calibrate", str(tiny_copy), "--alpha", "0.2", "--method", "crc"]) == 0
    assert main(["card", str(tiny_copy), "--bootstrap", "100"]) == 0
    md = (tiny_copy / "MODEL_CARD.md").read_text()
    metrics = json.loads((tiny_copy / "metrics.json").read_text())
    cal = json.loads((tiny_copy / "calibration.json").read_text())
    results = {r["metric"]: r for r in _table_after(md, "Test results")}
    key = {"sensitivity": "sensitivity", "specificity": "specificity", "CER": "cer", "F1-macro": "f1_macro",
           "accuracy": "accuracy", "AUROC": "auroc", "ECE": "ece"}
    for name, k in key.items():
        assert float(results[name]["at the default rule"]) == pytest.approx(metrics[k], abs=6e-5), name
        if k in cal["test"]:
            assert float(results[name]["at the operating point"]) == pytest.approx(cal["test"][k], abs=6e-5), name
        lo, hi = (float(v) for v in results[name]["95% CI"].strip("[]").split(","))
        assert lo <= float(results[name]["at the operating point"]) + 1e-4 and lo <= hi
    op = {r["item"]: r["value"] for r in _table_after(md, "Operating point")}
    assert float(op["threshold"]) == pytest.approx(cal["threshold"]) and op["method"] == "crc"
    assert f"{cal['n_calibration']} malignant" in op["calibration set"]
    missed = _table_after(md, "Fatal errors (Type II) at the operating point")
    assert len([r for r in missed if r.get("id")]) == cal["test"]["type_ii"]
    counts = {r["split"]: int(r["images"]) for r in _table_after(md, "Data")}
    assert counts["test"] == metrics["n"] and counts["calib"] == metrics["run"]["n_calib"]
    html = (tiny_copy / "model_card.html").read_text()
    assert html.count("data:image/png;base64,") >= 2  # figures inline: the HTML stands alone


def test_card_of_an_uncalibrated_run_says_so_and_corrupt_runs_fail_clearly(tiny_copy, capsys):
    path = build_card(tiny_copy, n_boot=50)
    assert "not calibrated" in path.read_text()
    (tiny_copy / "metrics.json").write_text("{")
    assert main(["card", str(tiny_copy)]) == 2
    assert "metrics.json" in capsys.readouterr().err


def test_the_card_is_a_safety_case(isic_copy, capsys):
    """Subgroups at the operating point, the data licence, a not-fit flag, the input check, one unit per rate."""
    assert main(["evaluate", str(isic_copy), "--by", "sex", "--bootstrap", "20"]) == 0
    capsys.readouterr()
    path = build_card(isic_copy, n_boot=20, min_sensitivity=0.99)  # a 1-epoch model: under this floor
    card = path.read_text()
    assert "## Subgroups at the operating point" in card and "By `sex`:" in card and "| female |" in card
    assert "CC BY-NC 4.0" in card
    assert "NOT FIT FOR USE at this operating point" in card and "under the floor of 99%" in card
    assert "## Input check" in card and "of images are flagged" in card
    assert "Every rate counts images" in card
    html = (path.parent / "model_card.html").read_text()
    assert "**" not in html and "<b>NOT FIT FOR USE" in html
    build_card(isic_copy, n_boot=20, min_sensitivity=0.0, min_specificity=0.0)
    assert "NOT FIT FOR USE" not in path.read_text()


def test_saliency_has_a_spatial_grid_at_small_input_sizes(tiny_run, tmp_path):
    import numpy as np
    from PIL import Image

    from conftest import demo_png
    from riskcl.deploy.explain import BLANK_NOTE, blank_map_note, saliency
    from riskcl.experiment import RunFolder

    folder = RunFolder(tiny_run[0])
    image = np.asarray(Image.open(demo_png(tmp_path)).convert("RGB"))
    (cam,) = saliency(folder.load_model(), [image], 16, folder.taxonomy(), "malignant")
    assert float(np.ptp(cam)) > 0 and blank_map_note(cam) == ""  # 16 px: the last stage is 1 x 1, a blank map
    assert blank_map_note(np.zeros((16, 16))) == BLANK_NOTE
