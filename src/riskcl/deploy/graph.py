"""What an exported triage graph returns, and the operating point as graph operations: shared by riskcl's own
exports (:mod:`riskcl.deploy.export`) and those of adopted models (:mod:`riskcl.deploy.export_adopted`)."""
from __future__ import annotations

import torch

# The graph's outputs, in the order it returns them (riskcl_export.json lists them in this order too).
OUTPUTS = ("probabilities", "p_malignant", "refer", "label")
OUTPUT_DOC = {"probabilities": ("(N, K) float32", "class probabilities in the order of `classes` (after TTA and "
                                                  "temperature)"),
              "p_malignant": ("(N,) float32", "the sum of the malignant class probabilities: the certified score"),
              "refer": ("(N,) bool", "p_malignant >= threshold: the triage decision"),
              "label": ("(N,) int64", "the most probable class within the decided superclass")}
SEGMENTATION_OUTPUTS = ("p_lesion", "mask")
SEGMENTATION_OUTPUT_DOC = {"p_lesion": ("(N, H, W) float32", "each pixel's lesion probability (after TTA and "
                                                             "temperature), on the input image's own pixels"),
                           "mask": ("(N, H, W) bool", "p_lesion >= threshold: the lesion at the operating point")}


def decide_in_graph(logits: torch.Tensor, temperature: torch.Tensor, malignant: torch.Tensor,
                    threshold: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The operating point inside an exported graph: probabilities ``softmax(logits / T)``, p(malignant), the
    triage decision at the threshold and the class label of the superclass-first rule (:data:`OUTPUTS`)."""
    probs = torch.softmax(logits / temperature, dim=1)
    p_mal = (probs * malignant.float()).sum(dim=1)
    refer = p_mal >= threshold
    in_decided = refer[:, None] == malignant[None, :]
    label = torch.where(in_decided, probs, torch.full_like(probs, -1.0)).argmax(dim=1)
    return probs, p_mal, refer, label
