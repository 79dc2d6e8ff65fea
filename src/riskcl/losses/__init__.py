"""Losses on logits ``(N, K)`` and integer targets ``(N,)``, each a plain function with an ``nn.Module`` twin."""
from .cross_entropy import (CrossEntropyLoss, LogitAdjustedLoss, class_weights_from_counts, cross_entropy,
                            log_priors, logit_adjusted_cross_entropy)
from .distill import DistillationLoss, distillation_loss
from .focal import FocalLoss, focal_loss
from .hierarchical import (ExpectedCostLoss, HierarchicalCrossEntropyLoss, SoftLabelLoss, expected_cost_loss,
                           hierarchical_cross_entropy, soft_label_loss, soft_label_targets)
from .registry import (RCL_PRESETS, LossContext, check_loss_params, create_loss, list_losses, loss_needs,
                       loss_params, loss_task, register_loss)
from .risk_calibrated import RiskCalibratedLoss, risk_calibrated_loss
from .segmentation import (BCEDiceLoss, BCELoss, DiceLoss, FocalTverskyLoss, PixelRiskLoss, TverskyLoss,
                           bce_dice_loss, binary_cross_entropy, dice_loss, focal_tversky_loss, pixel_risk_loss,
                           tversky_index, tversky_loss)
from .superclass import MarginalBCELoss, PartialAUCLoss, marginal_bce_loss, partial_auc_loss

__all__ = [
    "CrossEntropyLoss", "DistillationLoss", "ExpectedCostLoss", "FocalLoss", "HierarchicalCrossEntropyLoss",
    "LogitAdjustedLoss", "LossContext",
    "MarginalBCELoss", "PartialAUCLoss", "RCL_PRESETS", "RiskCalibratedLoss", "SoftLabelLoss",
    "check_loss_params", "class_weights_from_counts", "create_loss", "cross_entropy", "distillation_loss",
    "expected_cost_loss",
    "focal_loss", "hierarchical_cross_entropy", "list_losses", "log_priors", "logit_adjusted_cross_entropy",
    "loss_needs", "loss_params", "marginal_bce_loss", "partial_auc_loss", "register_loss", "risk_calibrated_loss",
    "soft_label_loss", "soft_label_targets", "loss_task",
    "BCEDiceLoss", "BCELoss", "DiceLoss", "FocalTverskyLoss", "PixelRiskLoss", "TverskyLoss", "bce_dice_loss",
    "binary_cross_entropy", "dice_loss", "focal_tversky_loss", "pixel_risk_loss", "tversky_index", "tversky_loss",
]
