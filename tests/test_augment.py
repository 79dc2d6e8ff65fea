"""Device-side augmentation (riskcl.data.augment) against torchvision's definitions."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from riskcl.data.augment import (AugmentParams, augment, augment_masks, flip, jitter, rotate, sample_params,
                                 to_model_input)


def _image(n=1, size=32):
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(n, 3, size, size)
    img[:, :, 4:10, 8:24] = 1.0
    img[:, 0, 20:28, 20:26] = 0.5
    return img + 0.1 * torch.rand(n, 3, size, size, generator=g)


def test_rotation_matches_torchvision_rotate():
    img = _image()
    for angle in (10.0, -12.0, 90.0, 3.5):
        ours = rotate(img, torch.tensor([angle]))
        ref = TF.rotate(img, angle, interpolation=InterpolationMode.NEAREST)  # RandomRotation's default
        assert (ours - ref).abs().max() < 1e-6, angle  # the same geometry and sampling
    assert torch.equal(rotate(img, torch.tensor([0.0])), img)


def test_flips_are_exact_and_per_image():
    img = _image(4)
    out = flip(img, torch.tensor([True, False, True, False]), torch.tensor([False, False, True, True]))
    assert torch.equal(out[0], TF.horizontal_flip(img[0])) and torch.equal(out[1], img[1])
    assert torch.equal(out[2], TF.vertical_flip(TF.horizontal_flip(img[2])))
    assert torch.equal(out[3], TF.vertical_flip(img[3]))


def test_each_image_gets_its_own_parameters_and_seeds_repeat():
    p = sample_params(64, torch.Generator().manual_seed(7))
    assert p.angle.unique().numel() == 64 and p.angle.abs().max() <= 15
    assert 0 < p.hflip.sum() < 64 and 0 < p.vflip.sum() < 64
    q = sample_params(64, torch.Generator().manual_seed(7))
    assert torch.equal(p.angle, q.angle) and torch.equal(p.hflip, q.hflip) and torch.equal(p.vflip, q.vflip)
    img = _image(2).expand(2, -1, -1, -1).clone()  # two identical images, different parameters
    params = AugmentParams(torch.tensor([5.0, -9.0]), torch.tensor([False, True]), torch.tensor([False, False]))
    out = augment(img, params)
    assert not torch.equal(out[0], out[1])
    assert torch.equal(out[1], TF.horizontal_flip(rotate(img[1:2], torch.tensor([-9.0]))[0]))


def test_model_input_from_uint8_batches():
    x = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8)
    out = to_model_input(x)
    assert out.shape == (3, 3, 8, 8) and out.dtype == torch.float32
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(out[1], (x[1].permute(2, 0, 1).float() / 255 - mean) / std)


def _paper_draws(n, generator):
    """The paper's three draws as riskcl made them before the augment section existed (the reference stream)."""
    angle = ((torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * 15).float()
    return angle, torch.rand(n, generator=generator) < 0.5, torch.rand(n, generator=generator) < 0.5


def test_augment_settings_change_what_the_draws_do_not_the_stream():
    ref = _paper_draws(32, torch.Generator().manual_seed(11))
    default = sample_params(32, torch.Generator().manual_seed(11))
    assert all(torch.equal(a, b) for a, b in zip(ref, (default.angle, default.hflip, default.vflip)))
    assert default.zoom is None and default.brightness is None  # a run without them draws what it drew before
    strong = sample_params(32, torch.Generator().manual_seed(11), rotation=30, flips="horizontal", scale=0.5,
                           color=0.25)
    torch.testing.assert_close(strong.angle, ref[0] * 2)
    assert torch.equal(strong.hflip, ref[1]) and not strong.vflip.any()
    assert not sample_params(32, torch.Generator().manual_seed(11), flips="none").hflip.any()
    assert strong.zoom.min() >= 1 and strong.zoom.max() <= 1.5 and strong.zoom.unique().numel() == 32
    assert (strong.shift.abs() <= (1 - 1 / strong.zoom)[:, None] + 1e-6).all()  # the view stays inside
    for f in (strong.brightness, strong.contrast):
        assert f.min() >= 0.75 and f.max() <= 1.25 and f.unique().numel() == 32
    with pytest.raises(ValueError, match="flips = 'vertical'"):
        sample_params(4, torch.Generator(), flips="vertical")


def test_zoom_and_shift_match_torchvision_affine():
    img = _image(size=32)
    for angle, zoom, (sx, sy) in ((0.0, 1.6, (0.25, 0.125)), (0.0, 1.3, (-0.2, 0.0)), (10.0, 1.6, (0.0, 0.0)),
                                  (-20.0, 1.25, (0.0, 0.0))):
        ours = rotate(img, torch.tensor([angle]), torch.tensor([zoom]), torch.tensor([[sx, sy]]))
        # torchvision's angle turns clockwise; its translation is in output pixels, after the zoom
        ref = TF.affine(img, angle=-angle, translate=[-zoom * sx * 16, -zoom * sy * 16], scale=zoom,
                        shear=[0.0, 0.0], interpolation=InterpolationMode.NEAREST)
        assert (ours - ref).abs().max() < 1e-6, (angle, zoom, sx, sy)
    assert torch.equal(rotate(img, torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([[0.0, 0.0]])), img)


def test_jitter_is_torchvision_brightness_then_contrast_and_spares_masks():
    img = _image(2).clamp(0, 1)
    out = jitter(img, torch.tensor([1.2, 0.8]), torch.tensor([0.7, 1.3]))
    for k, (b, c) in enumerate(((1.2, 0.7), (0.8, 1.3))):
        ref = TF.adjust_contrast(TF.adjust_brightness(img[k], b), c)
        assert (out[k] - ref).abs().max() < 1e-5
    masks = torch.zeros(4, 16, 16, dtype=torch.uint8)
    masks[:, 3:9, 4:13] = 1
    params = sample_params(4, torch.Generator().manual_seed(2), scale=0.5, color=0.3)
    moved = augment_masks(masks, params)
    geometry = AugmentParams(params.angle, params.hflip, params.vflip, params.zoom, params.shift)
    assert torch.equal(augment(masks[:, None].float(), geometry)[:, 0].round().to(torch.uint8), moved)
    assert set(moved.unique().tolist()) <= {0, 1}
    assert not torch.equal(augment(img.repeat(2, 1, 1, 1), params), augment(img.repeat(2, 1, 1, 1), geometry))
