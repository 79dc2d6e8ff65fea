"""Device-side augmentation (riskcl.data.augment) against torchvision's definitions."""
from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from riskcl.data.augment import AugmentParams, augment, flip, rotate, sample_params, to_model_input


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
