"""Shared fixtures: where the real data lives, and a per-test cache folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("RISKCL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
BRAIN_MRI = SHARED_DATA / "brain_tumor_mri"
BREAKHIS = SHARED_DATA / "breakhis_sample"
SICAPV2 = SHARED_DATA / "sicapv2_partitions"


def need(path: Path, what: str):
    return pytest.mark.skipif(not path.is_dir(), reason=f"{what} not found at {path} (the shared data folder is "
                              f"absent on this machine; set RISKCL_SHARED_DATA to run these tests)")


needs_brain_mri = need(BRAIN_MRI, "Brain Tumor MRI data")
needs_breakhis = need(BREAKHIS, "BreaKHis sample")
needs_sicapv2 = need(SICAPV2, "SICAPv2 partition files")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Every test session shares one image cache in a temp folder, never beside the (read-only) data."""
    if "RISKCL_TEST_CACHE" not in os.environ:
        os.environ["RISKCL_TEST_CACHE"] = str(tmp_path_factory.getbasetemp() / "riskcl-cache")
    monkeypatch.setenv("RISKCL_CACHE_DIR", os.environ["RISKCL_TEST_CACHE"])
