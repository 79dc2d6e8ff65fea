"""Regression tests for what a blind run and an adversarial user broke (issue 10): every case either succeeds
correctly or exits non-zero with one line naming the culprit, never a traceback, never a corrupted result."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from _standins import seed_of, write_image
from _tiny import TINY
from conftest import demo_png
from riskcl.cli import main
from riskcl.config import ConfigError, config_from_dict, load_config
from riskcl.experiment import RunFolder


def cli(args, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def _tiny_yaml(tmp_path, **extra) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "epochs": 1, **extra}))
    return path


def _folder_data(root: Path, n: int = 10, size: int = 12) -> Path:
    for c in ("calm", "angry"):
        for i in range(n):
            write_image(root / c / f"{c}{i}.png", seed_of(c, i), size=size)
    (root.parent / "tax.yaml").write_text("name: t\nbenign: [calm]\nmalignant: [angry]\n")
    return root


def _folder_cfg(root: Path, **data) -> dict:
    return {**TINY, "epochs": 1, "data": {"name": "folder", "root": str(root), "image_size": 12,
                                          "options": {"taxonomy": str(root.parent / "tax.yaml")}, **data}}


# --- wrong results ---------------------------------------------------------------------------------------------
def test_evaluate_own_split_uses_splits_csv_and_other_data_is_one_evaluation_set(tmp_path, capsys):
    root = _folder_data(tmp_path / "data")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_folder_cfg(root)))
    assert cli(["train", cfg, "--out", tmp_path / "run", "--quiet"], capsys)[0] == 0
    folder = RunFolder(tmp_path / "run")
    rc, out, _ = cli(["evaluate", tmp_path / "run", "--split", "val", "--json"], capsys)
    assert rc == 0 and "own 'val' split" in out
    report = __import__("json").loads(out[out.index("{"):])
    assert report["n"] == len(folder.predictions("val")["ids"])
    assert report["cer"] == pytest.approx(folder.metrics()["val"]["cer"])
    other = tmp_path / "other"
    shutil.copytree(root, other)
    rc, out, _ = cli(["evaluate", tmp_path / "run", "--data-root", other, "--split", "val"], capsys)
    assert rc == 0 and "all 20 images of" in out and "as one evaluation set" in out


def test_unfinished_runs_are_refused_unless_asked(tmp_path, capsys, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    RunFolder(run).mark("interrupted")
    (run / "metrics.json").unlink()
    img = demo_png(tmp_path)
    for args in (["evaluate", run], ["predict", run, img, "--out", tmp_path / "p.csv"]):
        rc, _, err = cli(args, capsys)
        assert rc == 2 and "not a finished run" in err and "--allow-unfinished" in err
    before = sorted(p.name for p in run.iterdir())
    rc, out, _ = cli(["evaluate", run, "--allow-unfinished"], capsys)
    best = RunFolder(run).weights_epoch()
    assert rc == 0 and "unfinished" in out and f"from epoch {best} of 2" in out
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written into the unfinished folder
    rc, out, _ = cli(["predict", run, img, "--out", tmp_path / "p.csv", "--allow-unfinished"], capsys)
    assert rc == 0 and f"from epoch {best}" in out


def test_val_fraction_is_honoured_within_one_group():
    from riskcl.data.splits import carve_groups

    rng = np.random.default_rng(0)
    groups = np.arange(600) // 2  # two images per patient, one diagnosis per patient
    labels = rng.integers(0, 3, 300)[groups]
    for f in (0.1, 0.15, 0.4, 0.7, 0.9):
        held = carve_groups(labels, groups, {"val": f}, seed=1) == "val"
        for c in range(3):
            n_c = (labels == c).sum()
            assert abs(held[labels == c].sum() - f * n_c) <= 2 + 1e-9, (f, c)  # within one group (2 images)
        assert set(groups[held]).isdisjoint(groups[~held])


# --- damaged run folders -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage,command,culprit", [
    ("weights_truncated", "evaluate", "model.safetensors"),
    ("weights_garbage", "predict", "model.safetensors"),
    ("config_yaml", "evaluate", "config.yaml"),
    ("predictions_zip", "calibrate", "predictions.npz"),
    ("calibration_key", "predict-calibrated", "calibration.json"),
    ("calibration_type", "predict-calibrated", "calibration.json"),
    ("metrics_json", "evaluate", "metrics.json"),
    ("status_json", "evaluate", "status.json"),
])
def test_damaged_run_folders_name_the_file(tmp_path, capsys, tiny_run, damage, command, culprit):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    w = run / "model.safetensors"
    if damage == "weights_truncated":
        w.write_bytes(w.read_bytes()[:200])
    elif damage == "weights_garbage":
        w.write_bytes(b"not safetensors at all" * 10)
    elif damage == "config_yaml":
        (run / "config.yaml").write_text("name: [unclosed\n  seed: {\n")
    elif damage == "predictions_zip":
        (run / "calib_predictions.npz").write_bytes(b"PK\x03\x04 broken zip")
    elif damage in ("calibration_key", "calibration_type"):
        assert main(["calibrate", str(run), "--alpha", "0.3"]) == 0
        cal = __import__("json").loads((run / "calibration.json").read_text())
        if damage == "calibration_key":
            del cal["threshold"]
        else:
            cal["threshold"] = "high"
        (run / "calibration.json").write_text(__import__("json").dumps(cal))
        capsys.readouterr()
    elif damage == "metrics_json":
        (run / "metrics.json").write_text('{"cer": 0.1, ')
    elif damage == "status_json":
        (run / "status.json").write_text("{not json")
    img = demo_png(tmp_path)
    args = {"evaluate": ["evaluate", run], "predict": ["predict", run, img, "--out", tmp_path / "p.csv"],
            "calibrate": ["calibrate", run, "--alpha", "0.3"],
            "predict-calibrated": ["predict", run, img, "--out", tmp_path / "p.csv", "--calibrated"]}[command]
    rc, _, err = cli(args, capsys)
    assert rc == 2 and culprit in err, err


def test_one_damaged_run_is_skipped_by_the_report(tmp_path, capsys, tiny_run):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run[0], runs / "good")
    shutil.copytree(tiny_run[0], runs / "bad")
    (runs / "bad" / "predictions.npz").write_bytes(b"garbage")
    rc, out, _ = cli(["report", runs, "--out", tmp_path / "rep", "--bootstrap", "20"], capsys)
    assert rc == 0
    md = (tmp_path / "rep" / "REPORT.md").read_text()
    assert "bad: skipped, damaged" in md and "predictions.npz" in md and "good" in md


# --- configs -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,match", [
    ("base: 5\n", r"`base` = 5: expected the path of one YAML file"),
    ("base: [a.yaml, b.yaml]\n", r"`base` = \['a.yaml', 'b.yaml'\]"),
    ("", "empty .*expected a YAML mapping"),
    ("# only a comment\n", "empty .*expected a YAML mapping"),
    ("loss: {name: focal, params: {gamma: abc}}\n", r"gamma.*'abc'"),
    ("loss: {name: focal, params: {alpha: [1]}}\n", r"alpha"),
    ("loss: {name: ls, params: {epsilon: high}}\n", r"epsilon|label_smoothing"),
    ("loss: {name: expected-cost, params: {weight: x}}\n", r"weight.*'x'"),
    ("data: {name: demo, num_folds: 0, fold: 0}\n", r"data.num_folds"),
    ("data: {name: demo, num_folds: 3}\n", r"data.num_folds.*data.fold"),
    ("seed: 99999999999999999999999\n", r"`seed`"),
    ("cost: {lambda2: -1}\n", r"cost.lambda2"),
    ("cost: {matrix: [[1, 2], [3, 1]]}\n", r"`cost`.*shape"),
])
def test_bad_config_files_name_key_and_value(tmp_path, capsys, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)
    rc, _, err = cli(["train", path, "--out", tmp_path / "never"], capsys)
    assert rc == 2 and str(path) in err
    assert not (tmp_path / "never").exists()


def test_config_corner_cases_that_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(TINY).replace("lr: 0.003", "lr: 1e-4"))  # PyYAML reads 1e-4 as a string
    assert isinstance(yaml.safe_load(path.read_text())["optim"]["lr"], str)
    assert load_config(path).optim.lr == pytest.approx(1e-4)
    assert load_config(path, ["cost.lambda1=2", "cost.lambda2=40"]).cost.lambda2 == 40.0
    with pytest.raises(ConfigError, match="is a folder; expected a YAML file"):
        load_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


# --- paths -------------------------------------------------------------------------------------------------------
def test_out_paths_that_are_files_are_named(tmp_path, capsys):
    cfg = _tiny_yaml(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        rc, _, err = cli(["train", cfg, "--out", out, "--quiet"], capsys)
        assert rc == 2 and "is a file" in err and str(afile) in err
    rc, _, err = cli(["train", cfg, f"data.cache_dir={afile}", "--out", tmp_path / "r"], capsys)
    assert rc == 2 and "data.cache_dir" in err


def test_predict_out_paths(tmp_path, capsys, tiny_run):
    img = demo_png(tmp_path)
    outdir = tmp_path / "adir"
    outdir.mkdir()
    rc, _, err = cli(["predict", tiny_run[0], img, "--out", outdir], capsys)
    assert rc == 2 and str(outdir) in err and "is a folder" in err
    assert list(outdir.iterdir()) == []  # no leftover temp file
    missing = tmp_path / "nope" / "p.csv"
    rc, _, err = cli(["predict", tiny_run[0], img, "--out", missing], capsys)
    assert rc == 2 and str(missing) in err and ".tmp" not in err
    assert not list(tmp_path.glob(".*tmp*"))


# --- images ------------------------------------------------------------------------------------------------------
def _bomb(path: Path) -> Path:
    Image.new("1", (20000, 10000)).save(path)  # 200 megapixels in a few KB
    assert path.stat().st_size < 100_000
    return path


def test_decompression_bomb_is_a_bad_image_everywhere(tmp_path, capsys, tiny_run):
    root = _folder_data(tmp_path / "data")
    _bomb(root / "calm" / "calm0.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_folder_cfg(root)))
    rc, _, err = cli(["train", cfg, "--out", tmp_path / "strict", "--quiet"], capsys)
    assert rc == 2 and "calm0.png" in err and "decompression bomb" in err
    cfg.write_text(yaml.safe_dump(_folder_cfg(root, on_bad_image="skip")))
    assert cli(["train", cfg, "--out", tmp_path / "skip", "--quiet"], capsys)[0] == 0
    assert "calm0.png" in (tmp_path / "skip" / "skipped_images.txt").read_text()
    rc, out, _ = cli(["data", "check", "folder", "--root", root, "--option", f"taxonomy={root.parent / 'tax.yaml'}"],
                     capsys)
    assert rc == 1 and "calm0.png" in out and "decompression bomb" in out
    rc, out, _ = cli(["predict", tiny_run[0], root / "calm" / "calm0.png", "--out", tmp_path / "p.csv"], capsys)
    assert rc == 3 and "calm0.png" in out and "decompression bomb" in (tmp_path / "p.csv").read_text()


def test_odd_file_names_and_symlinks_are_named_and_listed(tmp_path, capsys):
    root = _folder_data(tmp_path / "data")
    raw = os.fsencode(root / "angry") + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    write_image(Path(os.fsdecode(raw)), 5, size=12)
    outside = tmp_path / "outside.png"
    write_image(outside, 6, size=12)
    (root / "calm" / "link_out.png").symlink_to(outside)
    (root / "calm" / "dangling.png").symlink_to(tmp_path / "gone.png")
    rc, out, _ = cli(["data", "check", "folder", "--root", root, "--option", f"taxonomy={root.parent / 'tax.yaml'}",
                      "--json"], capsys)
    report = __import__("json").loads(out)
    dropped = " ".join(report["dropped"])
    assert "not valid UTF-8" in dropped and "caf\\xe9.png" in dropped
    assert "link_out.png" in dropped and "outside the data root" in dropped
    assert "dangling.png" in dropped and "dangling symlink" in dropped
    assert sum(s["n"] for s in report["splits"].values()) == 20  # the three files are left out, nothing else


# --- set-up failures and leftovers ---------------------------------------------------------------------------------
def test_failed_setup_can_be_corrected_into_the_same_folder(tmp_path, capsys):
    cfg = _tiny_yaml(tmp_path)
    out = tmp_path / "run"
    rc, _, err = cli(["train", cfg, "model.name=resnet10x", "--out", out], capsys)
    assert rc == 2 and "resnet10x" in err and not out.exists()  # checked before the folder is made
    root = _folder_data(tmp_path / "data")
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(_folder_cfg(root)))
    (root / "calm" / "calm1.png").write_bytes(b"")
    rc, _, err = cli(["train", broken, "--out", out, "--quiet"], capsys)
    assert rc == 2 and "calm1.png" in err and RunFolder(out).state == "failed"
    write_image(root / "calm" / "calm1.png", 7, size=12)  # fixed data; the same command now runs
    rc, out_text, _ = cli(["train", broken, "data.on_bad_image=skip", "--out", out, "--quiet"], capsys)
    assert rc == 0 and RunFolder(out).state == "finished" and "never finished an epoch" in out_text


def _children(pid: int) -> list[int]:
    kids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_cache_build_leaves_no_worker_and_no_temp_file(tmp_path, sig):
    root = tmp_path / "many"
    for c in ("calm", "angry"):
        for i in range(400):
            write_image(root / c / f"{c}{i}.png", i, size=256)
    (tmp_path / "tax.yaml").write_text("name: t\nbenign: [calm]\nmalignant: [angry]\n")
    cache = tmp_path / "cache"
    env = {**os.environ, "RISKCL_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "riskcl", "data", "check", "folder", "--root", str(root), "--option",
           f"taxonomy={tmp_path / 'tax.yaml'}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    for _ in range(300):
        workers = _children(proc.pid)
        if len(workers) >= 2 and list(cache.glob("images/*.tmp*")):
            break
        time.sleep(0.05)
    assert workers, "the cache build never started its workers"
    proc.send_signal(sig)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and "Z" not in (Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[:1] or ["Z"])]
    assert not alive, f"decoding workers {alive} survived their parent"
    assert list(cache.glob("images/*.tmp*"))  # the killed build left its temp file ...
    subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    assert not list(cache.glob("images/*.tmp*"))  # ... and the next run removed it


def test_stale_checkpoint_temp_of_a_dead_process_is_removed(tmp_path, capsys):
    cfg = _tiny_yaml(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".last.pt.tmp{dead.pid}"
    stale.write_bytes(b"\0" * 1000)
    assert cli(["train", cfg, "--out", out, "--quiet"], capsys)[0] == 0
    assert not stale.exists()


# --- noise ---------------------------------------------------------------------------------------------------------
def test_no_noise_and_uniform_file_modes(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    img = demo_png(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["predict", str(run), str(img), "--out", str(tmp_path / "p.csv")]) == 0
        assert main(["calibrate", str(run), "--alpha", "0.3"]) == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in tiny_run[0].iterdir() if p.is_file() and p.name != ".lock"}
    assert len(set(modes.values())) == 1, modes  # model.safetensors like every other file
    assert pd.read_csv(tmp_path / "p.csv").shape[0] == 1


def test_config_from_dict_rejects_a_config_without_keys():
    with pytest.raises(ConfigError):
        config_from_dict({"data": {"name": "demo", "val_fraction": 0.7}})  # with test and calib: no training data


# --- issue 21: what an adversarial user broke ---------------------------------------------------------------------
def test_pixel_limit_is_riskcls_own_and_checked_before_decoding(tmp_path, monkeypatch):
    """An 11000 x 11000 PNG (117 KB) passed Pillow's bomb check and took 6.9 GB: refused from its header."""
    import tracemalloc

    from riskcl.data import BadImageError, decode_bytes, decode_rgb

    big = tmp_path / "big.png"
    Image.new("L", (11000, 11000)).save(big, optimize=True)
    assert big.stat().st_size < 1_000_000
    tracemalloc.start()
    with pytest.raises(BadImageError, match=r"11000 x 11000 .*exceeds the limit of 50 megapixels"):
        decode_rgb(big)
    with pytest.raises(BadImageError, match="exceeds the limit"):
        decode_bytes(big.read_bytes(), "upload.png")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50_000_000  # nothing decoded (121 MB of pixels)
    monkeypatch.setenv("RISKCL_MAX_PIXELS", "100")
    with pytest.raises(BadImageError, match="limit of 0.0001 megapixels"):
        decode_rgb(demo_png(tmp_path))  # 16 x 16 = 256 pixels
    monkeypatch.setenv("RISKCL_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="RISKCL_MAX_PIXELS"):
        decode_rgb(demo_png(tmp_path))


def test_an_all_nan_image_is_refused_and_decode_errors_hold_no_python_reprs(tmp_path):
    from riskcl.data import BadImageError, decode_bytes, decode_rgb

    nan = tmp_path / "nan.tif"
    Image.fromarray(np.full((16, 16), np.nan, dtype=np.float32)).save(nan)
    with pytest.raises(BadImageError, match="no finite pixel value"):
        decode_rgb(nan)
    with pytest.raises(BadImageError) as info:
        decode_bytes(b"%PDF-1.4 not an image", "scan.pdf")
    assert "0x" not in str(info.value) and "BytesIO" not in str(info.value) and "scan.pdf" in str(info.value)
    folder = tmp_path / "x.jpg"
    folder.mkdir()
    with pytest.raises(BadImageError, match="folder"):
        decode_rgb(folder)


def test_predict_never_writes_a_file_unasked_and_never_overwrites_anything_else(tmp_path, capsys, tiny_run,
                                                                              monkeypatch):
    img = demo_png(tmp_path)
    monkeypatch.chdir(tmp_path)
    rc, out, _ = cli(["predict", tiny_run[0], img], capsys)
    assert rc == 0 and out.startswith("image,decision") and not (tmp_path / "predictions.csv").exists()
    original = img.read_bytes()
    rc, _, err = cli(["predict", tiny_run[0], img, "--out", img], capsys)
    assert rc == 2 and "not a riskcl prediction CSV" in err and img.read_bytes() == original
    metrics = Path(tiny_run[0]) / "metrics.json"
    before = metrics.read_bytes()
    rc, _, err = cli(["predict", tiny_run[0], img, "--out", metrics], capsys)
    assert rc == 2 and metrics.read_bytes() == before
    csv_out = tmp_path / "p.csv"
    assert cli(["predict", tiny_run[0], img, "--out", csv_out], capsys)[0] == 0
    assert cli(["predict", tiny_run[0], img, "--out", csv_out], capsys)[0] == 0  # its own CSV: replaced
    other = tmp_path / "notes.csv"
    other.write_text("a,b\n1,2\n")
    assert cli(["predict", tiny_run[0], img, "--out", other], capsys)[0] == 2
    assert cli(["predict", tiny_run[0], img, "--out", other, "--force"], capsys)[0] == 0


def test_explain_keeps_overlays_of_same_named_inputs_apart(tmp_path, capsys, tiny_run):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(demo_png(tmp_path, 0), a / "x.png")
    shutil.copy(demo_png(tmp_path, 1), b / "x.png")
    assert cli(["explain", tiny_run[0], a / "x.png", b / "x.png", "--out", tmp_path / "ov"], capsys)[0] == 0
    panels = sorted((tmp_path / "ov").glob("*_panel.png"))
    assert len(panels) == 2 and panels[0].read_bytes() != panels[1].read_bytes()


def test_a_csv_listing_one_file_twice(tmp_path):
    from riskcl.data.tabular import index_csv

    root = _folder_data(tmp_path / "data")
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    tax = root.parent / "tax.yaml"
    first = files[0]
    (root / "labels.csv").write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in files)
                                     + f"{first},{first.parent.name}\n")
    with pytest.warns(UserWarning, match="repeats .* it is used once"):
        index = index_csv(root, taxonomy=str(tax))
    assert len(index.table) == len(files)
    other = next(p.parent.name for p in files if p.parent.name != first.parent.name)
    (root / "labels.csv").write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in files)
                                     + f"{first},{other}\n")
    with pytest.raises(ValueError, match=rf"lines 2 and {len(files) + 2} list the same image .*conflicting labels"):
        index_csv(root, taxonomy=str(tax))


def test_data_check_keeps_every_option(tmp_path, capsys):
    root = _folder_data(tmp_path / "data")
    rc, out, err = cli(["data", "check", "folder", "--root", root, "--option", f"taxonomy={root.parent / 'tax.yaml'}",
                        "--option", "metadata_csv=nope.csv"], capsys)
    assert rc != 0 and "nope.csv" in out + err and "needs the option" not in out + err  # both options kept


def test_a_cost_matrix_that_makes_the_loss_vanish_is_refused():
    with pytest.raises(ConfigError, match="no error would cost anything"):
        config_from_dict(TINY, {"loss.name": "rcl", "cost.matrix": [[0] * 4] * 4})


def test_evaluate_warns_when_other_data_overlaps_the_training_split(tmp_path, capsys):
    root = _folder_data(tmp_path / "data")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_folder_cfg(root)))
    assert cli(["train", cfg, "--out", tmp_path / "run", "--quiet"], capsys)[0] == 0
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    rc, out, err = cli(["evaluate", tmp_path / "run", "--data-root", copy], capsys)
    assert rc == 0 and "were in the run's training split" in out + err


def test_sweeps_refuse_a_finished_run_of_another_config(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"overrides": TINY, "grid": {"seed": [0]}}))
    assert cli(["sweep", sweep, "--out", tmp_path / "runs", "--quiet"], capsys)[0] == 0
    rc, out, _ = cli(["sweep", sweep, "--out", tmp_path / "runs", "--quiet", "--set", "epochs=5",
                      "--set", "loss.name=focal"], capsys)
    assert rc == 1 and "1 failed" in out and "epochs: 2 -> 5" in out and "loss.name: 'ce' -> 'focal'" in out
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"overrides": TINY, "grid": {"optim.lr": [2, 2.0]}}))
    with pytest.raises(ConfigError, match="same run name"):
        from riskcl.experiment.sweep import load_sweep

        load_sweep(grid)


@pytest.mark.parametrize("args,match", [
    (["card", "RUN", "--bootstrap", "-5"], "--bootstrap"),
    (["report", "RUNS", "--targets", "1.5", "0"], "--targets"),
    (["explain", "RUN", "--type-ii", "--cap", "-1"], "--cap"),
    (["serve", "RUN", "--max-upload-mb", "0"], "--max-upload-mb"),
    (["serve", "RUN", "--max-upload-mb", "nan"], "--max-upload-mb"),
    (["serve", "RUN", "--port", "99999"], "--port"),
    (["serve", "RUN", "--method", "nosuch"], "nosuch"),
    (["export", "RUN", "--out", "OUT", "--allow-unfinished"], None),
])
def test_bad_numbers_on_the_command_line_are_named(tmp_path, capsys, tiny_run, args, match):
    args = [str(tiny_run[0]) if a == "RUN" else str(Path(tiny_run[0]).parent) if a == "RUNS" else
            str(tmp_path / "o") if a == "OUT" else a for a in args]
    if match is None:  # an option the command does not have is argparse's error, exit 2
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 2
        return
    rc, _, err = cli(args, capsys)
    assert rc == 2 and match in err and "internal error" not in err


def test_export_card_and_serve_never_offer_an_option_they_lack(tmp_path, capsys, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    RunFolder(run).mark("interrupted")
    for args in (["export", run, "--out", tmp_path / "e"], ["card", run]):
        rc, _, err = cli(args, capsys)
        assert rc == 2 and "not a finished run" in err and "--allow-unfinished" not in err


def test_the_card_names_a_stale_export_and_a_broken_weights_file(tmp_path, capsys, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    assert cli(["export", run, "--out", run / "export", "--format", "torchscript", "--check-limit", "8"],
               capsys)[0] == 0
    assert cli(["card", run, "--bootstrap", "20"], capsys)[0] == 0
    assert "STALE" not in (run / "MODEL_CARD.md").read_text()
    assert cli(["calibrate", run, "--alpha", "0.3", "--method", "crc"], capsys)[0] == 0  # a new operating point
    assert cli(["card", run, "--bootstrap", "20"], capsys)[0] == 0
    card = (run / "MODEL_CARD.md").read_text()
    assert "STALE" in card and "threshold 0.5 differs from the run's current" in card
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    rc, _, err = cli(["card", run, "--bootstrap", "20"], capsys)
    assert rc == 2 and "model.safetensors" in err and "not a readable safetensors file" in err


def test_cuda_on_a_machine_without_one_fails_before_the_run_folder_exists(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc, _, err = cli(["train", _tiny_yaml(tmp_path), "device=cuda", "--out", tmp_path / "r"], capsys)
    assert rc == 2 and "no CUDA device" in err and not (tmp_path / "r").exists()


def test_symlink_loops_and_folders_named_like_images_are_listed(tmp_path, capsys):
    root = _folder_data(tmp_path / "data")
    (root / "calm" / "loop.png").symlink_to(root / "calm" / "loop.png")
    (root / "angry" / "x.jpg").mkdir()
    rc, out, _ = cli(["data", "check", "folder", "--root", root, "--option", f"taxonomy={root.parent / 'tax.yaml'}"],
                     capsys)
    assert "loop.png: symlink loop" in out and "x.jpg: a folder inside a class folder" in out


def test_costs_too_large_for_the_loss_are_refused_by_name(tmp_path, capsys):
    rc, _, err = cli(["train", _tiny_yaml(tmp_path), "loss.name=rcl", "cost.lambda2=1e308", "--out",
                      tmp_path / "r"], capsys)
    assert rc == 2 and "lambda2" in err and "scale them down" in err and "non-finite" not in err


def test_a_sweep_base_must_be_one_file(tmp_path):
    from riskcl.experiment.sweep import load_sweep

    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"base": ["a.yaml", "b.yaml"], "grid": {"seed": [0]}}))
    with pytest.raises(ConfigError, match=r"`base` = \['a.yaml', 'b.yaml'\]: expected the path of one YAML file"):
        load_sweep(sweep)


def test_group_metadata_for_predict_is_checked(tmp_path, capsys, tiny_copy):
    img = demo_png(tmp_path)
    cal = {"threshold": 0.4, "method": "crc", "alpha": 0.3, "delta": None, "calibration_split": "calib",
           "certified": True, "by": "sex", "groups": {"male": {"threshold": 0.2, "certified": True}},
           "unseen_group_threshold": 0.4, "guarantee": "test"}
    (Path(tiny_copy) / "calibration.json").write_text(json.dumps(cal))
    meta = tmp_path / "meta.csv"
    meta.write_text(f"image,sex\n{img.name},male\n{img.name},female\n")
    rc, _, err = cli(["predict", tiny_copy, img, "--metadata", meta], capsys)
    assert rc == 2 and "keep one row per image" in err
    meta.write_text(f"image,sex\n{img.name},Male\n")
    rc, out, err = cli(["predict", tiny_copy, img, "--metadata", meta], capsys)
    assert rc == 0 and ",0.4," in out  # the fallback threshold, said so:
    assert "['Male'] were not seen at calibration" in err and "['male']" in err


def test_missing_metadata_spellings_are_one_unknown_group(tmp_path):
    from riskcl.data import create_datasets

    root = _folder_data(tmp_path / "data")
    files = sorted(p.name for p in root.rglob("*.png"))
    values = ["female", "NaN", "", "None", "male"]
    (root / "meta.csv").write_text("file,sex\n" + "".join(f"{f},{values[k % 5]}\n" for k, f in enumerate(files[:-2])))
    with pytest.warns(UserWarning, match="2 image.s. have no row"):
        data = create_datasets("folder", root, image_size=12, progress=False, taxonomy=str(root.parent / "tax.yaml"),
                               metadata_csv="meta.csv")
    seen = set().union(*(set(ds.table["sex"]) for ds in data.datasets.values()))
    assert seen == {"female", "male", "unknown"}


def test_every_command_refuses_an_image_too_small_to_read(tmp_path, capsys, tiny_run):
    tiny_img = tmp_path / "dot.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny_img)
    rc, out, err = cli(["predict", tiny_run[0], tiny_img], capsys)  # a batch goes on: the row says why
    assert rc == 3 and "dot.png" in err and "unreadable" in out and "too small" in out
    for args in (["explain", tiny_run[0], tiny_img, "--out", tmp_path / "ov"],
                 ["export", tiny_run[0], "--out", tmp_path / "e", "--format", "torchscript", "--check-images",
                  tiny_img]):
        rc, _, err = cli(args, capsys)
        assert rc == 2 and "dot.png" in err and "too small" in err, args


def test_the_sweep_summary_is_the_state_on_disk(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"overrides": {**TINY, "epochs": 1}, "grid": {"seed": [0, 1]}}))
    assert cli(["sweep", sweep, "--out", tmp_path / "runs", "--quiet", "--shard", "0/2"], capsys)[0] == 0
    assert cli(["sweep", sweep, "--out", tmp_path / "runs", "--quiet", "--shard", "0/2"], capsys)[0] == 0
    summary = json.loads((tmp_path / "runs" / "sweep-shard-0-of-2.json").read_text())
    (entry,) = summary["runs"].values()
    assert entry == {"state": "finished", "this_process": "skipped (finished)", "tracked": "-"}


def test_report_out_that_is_a_file_and_a_locked_run_that_is_not_counted_ok(tmp_path, capsys, tiny_run):
    import socket

    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, _, err = cli(["report", Path(tiny_run[0]).parent, "--out", afile], capsys)
    assert rc == 2 and "afile" in err and "is a file" in err
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"overrides": {**TINY, "epochs": 1}, "grid": {"seed": [0]}}))
    held = tmp_path / "runs" / "seed-0"
    held.mkdir(parents=True)
    (held / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))  # a live owner
    rc, out, _ = cli(["sweep", sweep, "--out", tmp_path / "runs", "--quiet"], capsys)
    assert "0 ok" in out and "1 locked by another process" in out


def test_card_and_service_without_the_data_folder_say_the_input_check_is_unavailable(tmp_path, capsys):
    from fastapi.testclient import TestClient

    from riskcl.deploy.serve import create_app

    root = _folder_data(tmp_path / "data")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_folder_cfg(root)))
    assert cli(["train", cfg, "--out", tmp_path / "run", "--quiet"], capsys)[0] == 0
    shutil.rmtree(root)  # the data moved away after training
    rc, out, err = cli(["card", tmp_path / "run", "--bootstrap", "20"], capsys)
    assert rc == 0, err
    assert "## Input check\n\nNot available" in (tmp_path / "run" / "MODEL_CARD.md").read_text()
    with TestClient(create_app(tmp_path / "run")) as client:
        assert client.get("/model").json()["input_check"].startswith("unavailable")
        img = write_image(tmp_path / "x.png", 1, size=12)
        body = client.post("/predict", files={"file": ("x.png", img.read_bytes(), "image/png")}).json()
        assert body["unusual"] is None and body["decision"] in ("refer", "clear")


# --- issue 32: hardening, round two (the smaller cases) --------------------------------------------------------
def test_formula_cells_are_neutralised_in_every_csv_riskcl_writes(tmp_path, capsys, monkeypatch):
    """A metadata value or a file name starting with = + - @ reaches no spreadsheet as a formula; riskcl reads
    its own files back unchanged."""
    from riskcl.io import spreadsheet_safe, spreadsheet_value

    root = _folder_data(tmp_path / "data")
    evil = "=cmd|' /C calc'!A0"
    rows = ["file,site"] + [f"{p.name},{evil if i % 2 else 'back'}"
                            for i, p in enumerate(sorted(root.rglob("*.png")))]
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    cfg = _folder_cfg(root)
    cfg["data"]["options"]["metadata_csv"] = "meta.csv"
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml"), "--out", str(run), "--quiet"]) == 0
    text = (run / "splits.csv").read_text()
    assert "'" + evil in text and "," + evil not in text
    assert evil in set(RunFolder(run).splits()["site"])  # read back as it was
    shutil.copy(demo_png(tmp_path), tmp_path / "@x.png")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), "@x.png", "--out", str(out), "--quiet"]) == 0
    assert out.read_text().splitlines()[1].startswith("'@x.png,")
    assert main(["predict", str(run), "@x.png", "--out", str(out), "--quiet"]) == 0  # resumed: found, not redone
    assert "1 already in" in capsys.readouterr().out and len(out.read_text().splitlines()) == 2
    assert spreadsheet_safe(-1.5) == -1.5 and spreadsheet_value(spreadsheet_safe("+1")) == "+1"


def test_webp_and_gif_files_in_a_folder_are_scored_like_the_others(tmp_path, tiny_run):
    from riskcl.deploy.scoring import predict_files

    src = Image.open(demo_png(tmp_path))
    (tmp_path / "f").mkdir()
    src.save(tmp_path / "f" / "a.webp", lossless=True)
    src.save(tmp_path / "f" / "b.gif")
    src.save(tmp_path / "f" / "c.png")
    rows = predict_files(tiny_run[0], [tmp_path / "f"]).rows
    assert sorted(Path(r["image"]).name for r in rows) == ["a.webp", "b.gif", "c.png"]
    assert all(r["decision"] in ("refer", "clear") for r in rows)


def test_sweep_jobs_and_status_refuse_what_makes_no_sense(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    _tiny_yaml(tmp_path)
    sweep.write_text(yaml.safe_dump({"base": "tiny.yaml", "grid": {"seed": [0, 1]}}))
    for jobs in ("0", "-1"):
        rc, _, err = cli(["sweep", sweep, "--out", tmp_path / "runs", "--launcher", "local", "--jobs", jobs], capsys)
        assert rc == 2 and "`--jobs` to be an integer >= 1" in err
    rc, _, err = cli(["sweep", sweep, "--out", tmp_path / "nowhere", "--status"], capsys)
    assert rc == 2 and "no such folder" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "unrelated.txt").write_text("x")
    rc, _, err = cli(["sweep", sweep, "--out", tmp_path / "other", "--status"], capsys)
    assert rc == 2 and "holds no run of" in err


def test_messages_that_used_to_mislead(tmp_path, capsys, tiny_copy):
    """A decision curve without a malignant case is undefined (not 'no net benefit'); an objective cannot choose
    among thresholds when none was certified; a segmentation data set whose masks are all empty is named."""
    from riskcl.data import create_datasets
    from riskcl.decision.costs import benefit_sentence, decision_curve

    curve = decision_curve(np.array([0.2, 0.7]), np.array([False, False]), (0.05, 0.5))
    assert benefit_sentence(curve).startswith("Undefined on this split: it holds no malignant case")
    rc, out, _ = cli(["calibrate", tiny_copy, "--alpha", "0.001", "--objective", "minimax", "--allow-uncertified"],
                     capsys)
    assert rc == 0 and "not applied, since no threshold was certified" in out and "chose 0.0000" not in out
    root = tmp_path / "seg"
    for i in range(4):
        write_image(root / "images" / f"x{i}.png", i, size=12)
        Image.fromarray(np.zeros((12, 12), np.uint8)).save(root / "masks" / f"x{i}.png") if (root / "masks").mkdir(
            exist_ok=True) is None else None
    with pytest.warns(UserWarning, match="every one of the 4 masks is empty"):
        create_datasets("seg_folder", root, image_size=12, progress=False, cache_dir=tmp_path / "c",
                        test_fraction=0.25, val_fraction=0.25, calib_fraction=0.25)


def test_report_follows_run_folders_linked_into_its_folder(tmp_path, tiny_run, capsys):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "linked").symlink_to(tiny_run[0])
    (tmp_path / "study" / "loop").symlink_to(tmp_path / "study")  # a loop is visited once, not forever
    rc, out, _ = cli(["report", tmp_path / "study", "--out", tmp_path / "report"], capsys)
    assert rc == 0
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert list(runs["folder"]) == ["linked"]
