"""The paper's augmentations (random rotation, horizontal and vertical flips) and the ImageNet normalisation,
as batched tensor operations that run wherever the batch is: on the GPU next to the model, or on the CPU; and,
with the config's ``augment`` section, their strength (the rotation's range, which flips) and two more: a random
zoom about a random centre, and brightness / contrast jitter.

Every image of a batch gets its own parameters (:func:`sample_params`), drawn from a ``torch.Generator``
seeded by the caller (the engine seeds it from ``(seed, epoch, rank)``), so a run is reproducible and a resumed
run draws exactly what an uninterrupted one would. The zoom and the jitter are drawn after the paper's three, and
only when asked for, so a run without them draws exactly what it drew before they existed. Rotation and zoom are
one affine resample, nearest-neighbour with a black fill outside the image (``affine_grid`` + ``grid_sample``):
exactly ``torchvision.transforms.v2.functional.rotate`` / ``affine`` with their default interpolation (positive
angles are counter-clockwise); flips are exact index reversals; the jitter is torchvision's
``adjust_brightness`` then ``adjust_contrast``, and never touches a mask.
Nearest, not bilinear: a bilinear resample blurs every rotated training image while test images stay sharp, and
at 48 px that mismatch cost CE about 4 points of test accuracy and doubled its CER on Brain Tumor MRI (3 seeds
each; ``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..defaults import AUGMENT_FLIPS, ROTATION_DEGREES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROTATION_MODE = "nearest"  # torchvision's RandomRotation default; see the module docstring


@dataclass(frozen=True)
class AugmentParams:
    """Per-image parameters: ``angle`` (degrees, ``(B,)`` float), ``hflip`` and ``vflip`` (``(B,)`` bool); with a
    zoom, ``zoom`` (``(B,)`` factor >= 1) and ``shift`` (``(B, 2)``: the view's centre in the input, x then y, in
    half-sides of the image); with jitter, ``brightness`` and ``contrast`` (``(B,)`` factors). None: not drawn."""

    angle: torch.Tensor
    hflip: torch.Tensor
    vflip: torch.Tensor
    zoom: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    brightness: torch.Tensor | None = None
    contrast: torch.Tensor | None = None

    def _map(self, fn) -> "AugmentParams":
        return AugmentParams(*(None if t is None else fn(t) for t in (
            self.angle, self.hflip, self.vflip, self.zoom, self.shift, self.brightness, self.contrast)))

    def __getitem__(self, index) -> "AugmentParams":
        return self._map(lambda t: t[index])

    def to(self, device: torch.device | str) -> "AugmentParams":
        """The parameters on ``device`` (moved once per epoch, so batches slice them without a host copy)."""
        return self._map(lambda t: t.to(device))


def sample_params(n: int, generator: torch.Generator, rotation: float = ROTATION_DEGREES,
                  flips: str = "both", scale: float = 0.0, color: float = 0.0) -> AugmentParams:
    """``n`` independent draws: angle uniform in ``[-rotation, rotation]``; each of ``flips`` (``"both"``,
    ``"horizontal"`` or ``"none"``) with probability 1/2; with ``scale`` > 0 a zoom uniform in ``[1, 1 + scale]``
    about a centre uniform over the places that keep the view inside the image; with ``color`` > 0 brightness and
    contrast factors, each uniform in ``[1 - color, 1 + color]``. The first three are drawn whatever the settings
    (a setting changes what they do, not the stream), the others only when asked for."""
    if flips not in AUGMENT_FLIPS:
        raise ValueError(f"flips = {flips!r}: expected one of {list(AUGMENT_FLIPS)}")
    angle = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * rotation
    hflip = torch.rand(n, generator=generator) < 0.5
    vflip = torch.rand(n, generator=generator) < 0.5
    if flips == "none":
        hflip = torch.zeros_like(hflip)
    if flips != "both":
        vflip = torch.zeros_like(vflip)
    zoom = shift = brightness = contrast = None
    if scale > 0:
        zoom = 1 + torch.rand(n, generator=generator, dtype=torch.float64) * scale
        shift = (torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 - 1) * (1 - 1 / zoom)[:, None]
        zoom, shift = zoom.float(), shift.float()
    if color > 0:
        brightness = 1 + (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1).float() * color
        contrast = 1 + (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1).float() * color
    return AugmentParams(angle.float(), hflip, vflip, zoom, shift, brightness, contrast)


def rotate(images: torch.Tensor, angle: torch.Tensor, zoom: torch.Tensor | None = None,
           shift: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate each ``(B, C, H, W)`` float image by its own angle (degrees, counter-clockwise), and with ``zoom``
    magnify it about ``shift`` (the view's centre in the input, in half-sides), nearest neighbour, zeros outside.
    An image with a zero angle and no zoom is returned unchanged."""
    rad = angle.to(device=images.device, dtype=torch.float32) * (math.pi / 180)
    cos, sin = torch.cos(rad), torch.sin(rad)
    inv = torch.ones_like(cos) if zoom is None else 1 / zoom.to(device=images.device, dtype=torch.float32)
    h, w = images.shape[-2:]
    # theta maps output to input coordinates (normalised, y down); aspect-corrected for non-square images.
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0], theta[:, 0, 1] = cos * inv, -sin * h / w * inv
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h * inv, cos * inv
    if shift is not None:
        theta[:, :, 2] = shift.to(device=images.device, dtype=torch.float32)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode=ROTATION_MODE, padding_mode="zeros", align_corners=False)
    still = angle == 0
    if zoom is not None:
        still = still & (zoom == 1)
    return torch.where(still.to(images.device)[:, None, None, None], images.float(), out)


def jitter(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """Per-image brightness then contrast of ``(B, 3, H, W)`` images in [0, 1], as torchvision's
    ``adjust_brightness`` and ``adjust_contrast`` (blended with the mean of the image's grey levels), clamped."""
    b = brightness.to(device=images.device, dtype=torch.float32)[:, None, None, None]
    c = contrast.to(device=images.device, dtype=torch.float32)[:, None, None, None]
    x = (images.float() * b).clamp_(0, 1)
    grey = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(-2, -1))[:, None, None, None]
    return (c * x + (1 - c) * grey).clamp_(0, 1)


def flip(images: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor) -> torch.Tensor:
    """Exact per-image horizontal / vertical flips of ``(B, C, H, W)`` images."""
    hflip, vflip = hflip.to(images.device)[:, None, None, None], vflip.to(images.device)[:, None, None, None]
    out = torch.where(hflip, images.flip(-1), images)
    return torch.where(vflip, out.flip(-2), out)


def _geometry(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    return flip(rotate(images, params.angle, params.zoom, params.shift), params.hflip, params.vflip)


def augment(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Rotation (and zoom), flips, then the jitter when drawn, each image with its own parameters (``images``:
    ``(B, C, H, W)`` float in [0, 1])."""
    out = _geometry(images, params)
    if params.brightness is not None:
        out = jitter(out, params.brightness, params.contrast)
    return out


def augment_masks(masks: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """``(B, H, W)`` masks under the very same rotation, zoom and flips as their images (:func:`augment` with the
    same ``params``; the jitter is for pixels only): nearest-neighbour sampling keeps them binary, and a mask pixel
    lands where its image pixel does."""
    out = _geometry(masks[:, None].float(), params)[:, 0]
    return out.round().to(masks.dtype)


_STATS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The ImageNet mean and std on ``device``, made once per device (no host copy per batch)."""
    if device not in _STATS:
        _STATS[device] = (torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1).to(device),
                          torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1).to(device))
    return _STATS[device]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` pixels in [0, 1] -> ImageNet-normalised float32."""
    mean, std = _stats(images.device)
    return (images.float() - mean) / std


def to_model_input(uint8_nhwc: torch.Tensor, params: AugmentParams | None = None,
                   channels_last: bool = False) -> torch.Tensor:
    """A ``uint8`` ``(B, H, W, 3)`` batch (already on its device) -> normalised ``(B, 3, H, W)`` float32,
    augmented when ``params`` are given."""
    x = uint8_nhwc.permute(0, 3, 1, 2).float().div_(255.0)
    if params is not None:
        x = augment(x, params)
    x = normalize(x)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
