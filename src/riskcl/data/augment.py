"""The paper's augmentations (random rotation, horizontal and vertical flips) and the ImageNet normalisation,
as batched tensor operations that run wherever the batch is: on the GPU next to the model, or on the CPU.

Every image of a batch gets its own parameters (:func:`sample_params`), drawn from a ``torch.Generator``
seeded by the caller (the engine seeds it from ``(seed, epoch, rank)``), so a run is reproducible and a resumed
run draws exactly what an uninterrupted one would. Rotation uses nearest-neighbour sampling with a black fill
outside the image (``affine_grid`` + ``grid_sample``), exactly ``torchvision.transforms.v2.functional.rotate``
with its default interpolation (positive angles are counter-clockwise); flips are exact index reversals.
Nearest, not bilinear: a bilinear resample blurs every rotated training image while test images stay sharp, and
at 48 px that mismatch cost CE about 4 points of test accuracy and doubled its CER on Brain Tumor MRI (3 seeds
each; ``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROTATION_DEGREES = 15.0
ROTATION_MODE = "nearest"  # torchvision's RandomRotation default; see the module docstring


@dataclass(frozen=True)
class AugmentParams:
    """Per-image parameters: ``angle`` (degrees, ``(B,)`` float), ``hflip`` and ``vflip`` (``(B,)`` bool)."""

    angle: torch.Tensor
    hflip: torch.Tensor
    vflip: torch.Tensor

    def __getitem__(self, index) -> "AugmentParams":
        return AugmentParams(self.angle[index], self.hflip[index], self.vflip[index])

    def to(self, device: torch.device | str) -> "AugmentParams":
        """The parameters on ``device`` (moved once per epoch, so batches slice them without a host copy)."""
        return AugmentParams(self.angle.to(device), self.hflip.to(device), self.vflip.to(device))


def sample_params(n: int, generator: torch.Generator, rotation: float = ROTATION_DEGREES,
                  vertical_flip: bool = True) -> AugmentParams:
    """``n`` independent draws: angle uniform in ``[-rotation, rotation]``, each flip with probability 1/2."""
    angle = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * rotation
    hflip = torch.rand(n, generator=generator) < 0.5
    vflip = torch.rand(n, generator=generator) < 0.5
    return AugmentParams(angle.float(), hflip, vflip if vertical_flip else torch.zeros_like(vflip))


def rotate(images: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each ``(B, C, H, W)`` float image by its own angle (degrees, counter-clockwise), nearest
    neighbour, zeros outside. A zero angle returns the image unchanged."""
    rad = angle.to(device=images.device, dtype=torch.float32) * (math.pi / 180)
    cos, sin = torch.cos(rad), torch.sin(rad)
    h, w = images.shape[-2:]
    # theta maps output to input coordinates (normalised, y down); aspect-corrected for non-square images.
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode=ROTATION_MODE, padding_mode="zeros", align_corners=False)
    still = (angle == 0).to(images.device)
    return torch.where(still[:, None, None, None], images.float(), out)


def flip(images: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor) -> torch.Tensor:
    """Exact per-image horizontal / vertical flips of ``(B, C, H, W)`` images."""
    hflip, vflip = hflip.to(images.device)[:, None, None, None], vflip.to(images.device)[:, None, None, None]
    out = torch.where(hflip, images.flip(-1), images)
    return torch.where(vflip, out.flip(-2), out)


def augment(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Rotation then flips, each image with its own parameters (``images``: ``(B, C, H, W)`` float)."""
    return flip(rotate(images, params.angle), params.hflip, params.vflip)


def augment_masks(masks: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """``(B, H, W)`` masks under the very same rotation and flips as their images (:func:`augment` with the same
    ``params``): nearest-neighbour sampling keeps them binary, and a mask pixel lands where its image pixel does."""
    out = augment(masks[:, None].float(), params)[:, 0]
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
