"""Knowledge distillation (Hinton, Vinyals and Dean, 2015): a student learns from the labels and from a frozen
teacher's softened probabilities, so that one model can carry what an ensemble knows at a single model's cost.

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

``T`` (the temperature) softens both distributions; the ``T^2`` keeps the soft term's gradients on the scale of
the hard one's. The teacher's "logits" may be any log-probabilities up to a constant per row (an ensemble's
log mean softmax is one). :class:`DistillationLoss` runs its teacher on each training batch exactly as the student
sees it (the same augmentation), under ``no_grad``: the training loop hands it the batch (``set_inputs``) and the
trainer attaches the teacher (``attach_teacher``: a run or ensemble folder named by ``loss.params.teacher``,
checked by :mod:`riskcl.experiment.distill`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import as_float32, check_inputs, check_number


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """The batch mean of ``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)`` (see the module).

    Example:
        >>> z = torch.tensor([[2.0, 0.0]])
        >>> float(distillation_loss(z, z, torch.tensor([0]), alpha=1.0))   # a student equal to its teacher
        0.0
    """
    check_inputs(logits, target)
    if not torch.is_tensor(teacher_logits) or teacher_logits.shape != logits.shape:
        raise ValueError(f"Expected `teacher_logits` of the student's shape {tuple(logits.shape)}, but got "
                         f"{tuple(teacher_logits.shape) if torch.is_tensor(teacher_logits) else teacher_logits!r}")
    t = check_number("temperature", temperature, 0.0, None, min_inclusive=False)
    a = check_number("alpha", alpha, 0.0, 1.0)
    x = as_float32(logits)
    hard = F.cross_entropy(x, target)
    log_student = F.log_softmax(x / t, dim=1)
    log_teacher = F.log_softmax(as_float32(teacher_logits).detach().to(x.dtype) / t, dim=1)
    soft = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1).mean() * (t * t)
    return (1 - a) * hard + a * soft


class DistillationLoss(nn.Module):
    """:func:`distillation_loss` against an attached teacher run on each batch (see the module docstring).
    ``teacher``: the folder the trainer loads the teacher from (kept here as the config gave it)."""

    def __init__(self, teacher: str, temperature: float = 2.0, alpha: float = 0.5) -> None:
        super().__init__()
        if not isinstance(teacher, str) or not teacher.strip():
            raise ValueError(f"Loss 'distill' needs loss.params.teacher: a finished run or ensemble folder, but got "
                             f"{teacher!r}")
        self.teacher_path = teacher
        self.temperature = check_number("temperature", temperature, 0.0, None, min_inclusive=False)
        self.alpha = check_number("alpha", alpha, 0.0, 1.0)
        self._teacher: list[nn.Module] = []  # a list: the frozen teacher is not one of the loss's own modules
        self._inputs = None

    def attach_teacher(self, teacher: nn.Module) -> None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._teacher[:] = [teacher]

    def set_inputs(self, inputs) -> None:
        """The batch the student's logits come from (the training loop calls this before the loss)."""
        self._inputs = inputs

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self._teacher or self._inputs is None:
            raise RuntimeError("Loss 'distill' has no teacher or no batch: riskcl train attaches the teacher named "
                               "by loss.params.teacher, and the training loop hands it each batch")
        if not torch.is_tensor(self._inputs):
            raise ValueError("Loss 'distill' distils image models: its batches must be images alone (no metadata)")
        with torch.no_grad():
            teacher_logits = self._teacher[0](self._inputs).float()
        return distillation_loss(logits, teacher_logits, target, self.temperature, self.alpha)
