"""Image decoding, the one resize and the cache (riskcl.data.images)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from riskcl.data import BadImageError, decode_rgb, load_image
from riskcl.data.images import resize_images, resize_uint8


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=400))
def test_random_image_bytes_give_bad_image_error_or_array(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("img") / "x.jpg"
    path.write_bytes(payload)
    try:
        arr = load_image(path, 8)
    except BadImageError as exc:
        assert str(path) in str(exc)
        return
    assert arr.shape == (8, 8, 3)


def test_resize_is_torch_antialiased_bilinear_and_close_to_pil(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((150, 200, 3)) * 255).astype(np.uint8)
    ours = resize_uint8(img, 48)
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(48, 48), mode="bilinear",
                        antialias=True).round().clamp(0, 255)[0].permute(1, 2, 0).to(torch.uint8).numpy()
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1  # torch's filter, to within rounding
    pil = np.asarray(Image.fromarray(img).resize((48, 48), Image.BILINEAR)).astype(int)
    assert np.abs(ours.astype(int) - pil).max() <= 2  # the same filter as Pillow's, within rounding
    up = resize_uint8(img[:20, :30], 48)  # enlarging: plain bilinear with the edge pixels weighted in
    up_ref = F.interpolate(torch.from_numpy(img[:20, :30]).permute(2, 0, 1)[None].float(), size=(48, 48),
                           mode="bilinear", antialias=True).round()[0].permute(1, 2, 0).numpy()
    assert np.abs(up.astype(int) - up_ref.astype(int)).max() <= 1
    assert np.array_equal(resize_uint8(ours, 48), ours)  # the right size already: unchanged
    batch = torch.from_numpy(np.stack([img, img])).permute(0, 3, 1, 2).float()
    assert torch.equal(resize_images(batch, 48)[1].permute(1, 2, 0).to(torch.uint8), torch.from_numpy(ours))


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16_bit_greyscale_is_scaled_by_its_range_not_clipped(tmp_path, fmt):
    ramp = np.linspace(1000, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)  # a 12-bit MRI-like range
    path = tmp_path / f"mri.{fmt}"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16") or Image.open(path).mode == "I"
    rgb = decode_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    assert rgb.min() == 0 and rgb.max() == 255  # the image's own range maps to 0..255
    assert (rgb == 255).mean() < 0.01  # not clipped to white
    want = np.round((ramp.astype(float) - 1000) / 3000 * 255)
    assert np.abs(rgb[..., 0].astype(float) - want).max() <= 1
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_modes_decode_to_rgb(tmp_path):
    rng = np.random.default_rng(1)
    arr = (rng.random((20, 20, 3)) * 255).astype(np.uint8)
    for mode in ("RGB", "L", "RGBA", "P", "CMYK", "LA"):
        path = tmp_path / f"x_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.fromarray(arr).convert(mode).save(path)
        out = decode_rgb(path)
        assert out.shape == (20, 20, 3) and out.dtype == np.uint8 and out.flags.writeable, mode


def _build_slowly(log, arr):
    import os
    import time

    with open(log, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    arr[:] = 7
    return {"built_by": os.getpid()}


def test_processes_that_miss_one_cache_together_build_it_once(tmp_path):
    """Two processes start on a cold cache at once (two runs of a sweep): one decodes, the other waits for it and
    reads the same array; nothing is left half-written."""
    import functools
    import multiprocessing

    from riskcl.data.images import cached_array

    log = tmp_path / "builds.txt"
    build = functools.partial(_build_slowly, log)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=cached_array, args=(tmp_path / "cache", "x-8px-key", (4, 8, 8, 3), build))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().split()) == 1  # built once
    arr, meta = cached_array(tmp_path / "cache", "x-8px-key", (4, 8, 8, 3), build)
    assert (np.asarray(arr) == 7).all() and meta["built_by"] == int(log.read_text())
    assert len(log.read_text().split()) == 1 and not list((tmp_path / "cache" / "images").glob("*.tmp*"))
