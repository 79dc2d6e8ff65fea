"""The paper's augmentations (random rotation, flips, normalisation) on ``uint8`` CHW tensors."""
from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(train: bool, rotation: float = 15.0, vertical_flip: bool = True) -> v2.Compose:
    """Training: rotation by up to ``rotation`` degrees, horizontal (and vertical) flips, then normalisation.
    Evaluation: normalisation only. Input: ``uint8`` tensor ``(3, H, W)``; output: normalised ``float32``."""
    steps: list = []
    if train:
        if rotation > 0:
            steps.append(v2.RandomRotation(rotation))
        steps.append(v2.RandomHorizontalFlip())
        if vertical_flip:
            steps.append(v2.RandomVerticalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)
