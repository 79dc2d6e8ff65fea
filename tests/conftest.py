"""Shared fixtures: where the real data lives, a per-session image cache, one trained tiny run and one ISIC run."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("RISKCL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
BRAIN_MRI = SHARED_DATA / "brain_tumor_mri"
BREAKHIS = SHARED_DATA / "breakhis_sample"
SICAPV2 = SHARED_DATA / "sicapv2_partitions"
ISIC_SAMPLE = SHARED_DATA / "isic2018_sample"


def need(path: Path, what: str):
    return pytest.mark.skipif(not path.is_dir(), reason=f"{what} not found at {path} (the shared data folder is "
                              f"absent on this machine; set RISKCL_SHARED_DATA to run these tests)")


needs_brain_mri = need(BRAIN_MRI, "Brain Tumor MRI data")
needs_breakhis = need(BREAKHIS, "BreaKHis sample")
needs_sicapv2 = need(SICAPV2, "SICAPv2 partition files")
needs_isic = need(ISIC_SAMPLE, "ISIC 2018 / HAM10000 sample")


def _session_cache(tmp_path_factory) -> str:
    """One image cache per test session in a temp folder, never beside the (read-only) data; under pytest-xdist
    the workers share it (their temp folders sit side by side; caches are written to a temp file and renamed)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    os.environ.setdefault("RISKCL_TEST_CACHE", str(base / "riskcl-cache"))
    return os.environ["RISKCL_TEST_CACHE"]


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RISKCL_CACHE_DIR", _session_cache(tmp_path_factory))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``(folder, metrics)`` of one finished tiny run (2 epochs of the demo data); read it, never write it."""
    from _tiny import tiny
    from riskcl.experiment import run_experiment

    os.environ["RISKCL_CACHE_DIR"] = _session_cache(tmp_path_factory)
    out = tmp_path_factory.mktemp("runs") / "tiny-ce"
    return out, run_experiment(tiny(), out)


@pytest.fixture
def tiny_copy(tiny_run, tmp_path):
    """A private copy of the tiny run folder, for tests that write into it."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run[0], dst)
    return dst


@pytest.fixture(scope="session")
def isic_run(tmp_path_factory):
    """One finished 1-epoch run of ``configs/isic2018_cpu.yaml`` on the real ISIC sample, trained through the CLI;
    read it, never write it (use ``isic_copy``)."""
    if not ISIC_SAMPLE.is_dir():
        pytest.skip(f"ISIC 2018 / HAM10000 sample not found at {ISIC_SAMPLE}")
    from riskcl.cli import main

    os.environ["RISKCL_CACHE_DIR"] = _session_cache(tmp_path_factory)
    out = tmp_path_factory.mktemp("runs") / "isic"
    assert main(["train", "configs/isic2018_cpu.yaml", f"data.root={ISIC_SAMPLE}", "epochs=1", "--out", str(out),
                 "--quiet"]) == 0
    return out


@pytest.fixture
def isic_copy(isic_run, tmp_path):
    """A private copy of the ISIC run folder, for tests that calibrate or evaluate into it."""
    dst = tmp_path / "isic"
    shutil.copytree(isic_run, dst)
    return dst


def demo_png(tmp_path: Path, index: int = 0, split: str = "test") -> Path:
    """A PNG of one demo image of the tiny run's data (16 px), for predict / export / serve."""
    import numpy as np
    from PIL import Image

    from riskcl.data import create_dataset

    ds = create_dataset("demo", split=split, image_size=16, scale=0.15, progress=False)
    path = tmp_path / f"demo_{split}_{index}.png"
    Image.fromarray(np.asarray(ds.images[ds.rows[index]])).save(path)
    return path
