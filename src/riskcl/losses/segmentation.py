"""Pixel losses for binary lesion segmentation: logits ``(N, 1, H, W)`` (or ``(N, H, W)``), masks of the same
shape (or without the channel axis) holding 0 (background) and 1 (lesion).

Where under-segmentation is the fatal error, a lesion pixel called background (a false negative) is the costly
mistake. Conventions, written down because libraries disagree:

* Tversky index ``TI = TP / (TP + alpha * FP + beta * FN)`` with soft counts from ``sigmoid(logits)``, per image;
  ``beta`` weighs the false negatives (under-segmentation) and ``alpha`` the false positives, as in MONAI's
  ``TverskyLoss`` and Salehi et al. 2017 (``alpha = 0.3, beta = 0.7`` penalises misses more). Some code (e.g.
  segmentation-models-pytorch) names them the other way round.
* The loss of an image is ``1 - TI``; focal Tversky (Abraham and Khan 2019) raises it to ``gamma`` (their
  ``1 / gamma = 4 / 3``, i.e. 0.75, which lifts the loss of images that are already segmented fairly well).
  Dice is Tversky with ``alpha = beta = 0.5``. Smoothing terms ``smooth`` are added to numerator and denominator
  (MONAI's ``smooth_nr`` / ``smooth_dr``), so an image with no lesion and no prediction scores a loss of 0.
* The risk-calibrated pixel loss weighs each pixel's binary cross-entropy by the severity of its current decision
  (lesion iff ``sigmoid(logit) >= 0.5``): ``lambda2`` for a lesion pixel called background, ``lambda1`` for a
  background pixel called lesion, 1 for a correct pixel (the paper's ``M[y, argmax p] * CE``, pixel-wise).

Every loss is the mean over images (Tversky family) or over pixels (cross-entropy family).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_number


def _check_maps(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, P)`` float logits and float targets in {0, 1}, flattened per image; ``ValueError`` naming the misfit."""
    if not torch.is_tensor(logits) or not logits.is_floating_point() or logits.ndim not in (3, 4):
        raise ValueError(f"Expected `logits` to be a float tensor of shape (N, 1, H, W) or (N, H, W), but got "
                         f"{tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}")
    if logits.ndim == 4 and logits.shape[1] != 1:
        raise ValueError(f"Expected one output channel (the lesion logit), but got {logits.shape[1]}")
    if not torch.is_tensor(target):
        raise ValueError(f"Expected `target` to be a tensor (the masks), but got {type(target).__name__}")
    n = logits.shape[0]
    spatial = tuple(logits.shape[-2:])
    if target.shape[0] != n or tuple(target.shape[-2:]) != spatial or target.ndim not in (3, 4):
        raise ValueError(f"Expected `target` of shape (N, H, W) = ({n}, {spatial[0]}, {spatial[1]}) or with a "
                         f"channel axis, but got {tuple(target.shape)}")
    t = target.reshape(n, -1).to(torch.float32 if logits.dtype != torch.float64 else torch.float64)
    if bool(((t != 0) & (t != 1)).any()):
        raise ValueError("Expected `target` masks holding only 0 (background) and 1 (lesion)")
    z = logits.reshape(n, -1)
    return (z if z.dtype == torch.float64 else z.float()), t


def _check_weights(alpha: float, beta: float, smooth: float) -> None:
    check_number("alpha", alpha, minimum=0.0)
    check_number("beta", beta, minimum=0.0)
    check_number("smooth", smooth, minimum=0.0)
    if alpha + beta <= 0:
        raise ValueError(f"Expected `alpha + beta` > 0, but got {alpha} + {beta}")


def binary_cross_entropy(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """Mean pixel binary cross-entropy; ``pos_weight`` multiplies the lesion pixels' term."""
    check_number("pos_weight", pos_weight, minimum=0.0)
    z, t = _check_maps(logits, target)
    return F.binary_cross_entropy_with_logits(z, t, pos_weight=torch.tensor(float(pos_weight), dtype=z.dtype,
                                                                              device=z.device))


def tversky_index(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7,
                  smooth: float = 1e-5) -> torch.Tensor:
    """``(N,)`` soft Tversky index per image (``beta`` weighs false negatives; see the module docstring)."""
    _check_weights(alpha, beta, smooth)
    z, t = _check_maps(logits, target)
    p = torch.sigmoid(z)
    tp = (p * t).sum(1)
    fp = (p * (1 - t)).sum(1)
    fn = ((1 - p) * t).sum(1)
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7,
                 smooth: float = 1e-5) -> torch.Tensor:
    """Mean over images of ``1 - TI`` (equal to MONAI's ``TverskyLoss(sigmoid=True, alpha, beta)``)."""
    return (1 - tversky_index(logits, target, alpha, beta, smooth)).mean()


def focal_tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7,
                       gamma: float = 0.75, smooth: float = 1e-5) -> torch.Tensor:
    """Mean over images of ``(1 - TI) ** gamma``."""
    check_number("gamma", gamma, minimum=0.0, min_inclusive=False)
    return (1 - tversky_index(logits, target, alpha, beta, smooth)).clamp_min(0).pow(gamma).mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Mean over images of ``1 - soft Dice`` (Tversky with ``alpha = beta = 0.5``; MONAI's ``DiceLoss``)."""
    return tversky_loss(logits, target, 0.5, 0.5, smooth)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0,
                  smooth: float = 1e-5) -> torch.Tensor:
    """``BCE + dice_weight * Dice loss``."""
    check_number("dice_weight", dice_weight, minimum=0.0)
    return binary_cross_entropy(logits, target) + dice_weight * dice_loss(logits, target, smooth)


def pixel_risk_loss(logits: torch.Tensor, target: torch.Tensor, lambda1: float, lambda2: float) -> torch.Tensor:
    """The risk-calibrated pixel loss: each pixel's BCE times the severity of its current decision (``lambda2``
    for a missed lesion pixel, ``lambda1`` for a false lesion pixel, 1 when right), mean over pixels. The weights
    follow the decision, not the gradient (they are constants of the step, as in the paper)."""
    check_number("lambda1", lambda1, minimum=0.0)
    check_number("lambda2", lambda2, minimum=0.0)
    z, t = _check_maps(logits, target)
    called = (z.detach() >= 0).to(z.dtype)
    weight = torch.ones_like(z)
    weight = torch.where((t == 1) & (called == 0), torch.full_like(z, float(lambda2)), weight)
    weight = torch.where((t == 0) & (called == 1), torch.full_like(z, float(lambda1)), weight)
    return (F.binary_cross_entropy_with_logits(z, t, reduction="none") * weight).mean()


class _MapLoss(nn.Module):
    """An ``nn.Module`` twin of one of the functions above, with its parameters fixed at construction."""

    fn = staticmethod(binary_cross_entropy)

    def __init__(self, **params: float) -> None:
        super().__init__()
        self.params = params
        dummy = torch.zeros(1, 1, 2, 2)
        type(self).fn(dummy, dummy, **params)  # the same argument check as the function, at construction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return type(self).fn(logits, target, **self.params)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())


class BCELoss(_MapLoss):
    fn = staticmethod(binary_cross_entropy)


class DiceLoss(_MapLoss):
    fn = staticmethod(dice_loss)


class BCEDiceLoss(_MapLoss):
    fn = staticmethod(bce_dice_loss)


class TverskyLoss(_MapLoss):
    fn = staticmethod(tversky_loss)


class FocalTverskyLoss(_MapLoss):
    fn = staticmethod(focal_tversky_loss)


class PixelRiskLoss(_MapLoss):
    fn = staticmethod(pixel_risk_loss)
