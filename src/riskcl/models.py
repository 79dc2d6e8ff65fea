"""Models through timm: ``create_model(name, num_classes, pretrained=..., weights_path=...)``.

``pretrained`` is ``"auto"`` (hub weights when reachable, else random init with a warning), ``True`` (weights
required: from ``weights_path`` or the hub, else a clear error) or ``False`` (random init). A local weights
file is read only through safetensors; its classifier is dropped when the class count differs.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .data.encoding import FUSION_HEADS, METADATA_ONLY

log = logging.getLogger(__name__)
PRETRAINED_CHOICES = ("auto", True, False)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were required but could not be loaded."""


def _load_local(model: nn.Module, weights_path: str | Path) -> list[str]:
    from safetensors.torch import load_file

    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"weights_path {path} does not exist; expected a .safetensors file")
    if path.suffix != ".safetensors":
        raise ValueError(f"weights_path {path}: expected a .safetensors file (pickled checkpoints are refused)")
    state = load_file(str(path))
    own = model.state_dict()
    dropped = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    kept = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in own if k not in kept]
    if not kept:
        raise ValueError(f"weights_path {path}: no tensor matches the model's parameters; wrong architecture?")
    model.load_state_dict(kept, strict=False)
    return missing


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub can be reached now; ``HF_HUB_OFFLINE=1`` or ``RISKCL_OFFLINE=1`` say no.

    A quick probe first, so that an offline machine fails in seconds instead of minutes of download retries.
    """
    import os
    import socket

    for var in ("HF_HUB_OFFLINE", "RISKCL_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes"):
            return False, f"{var} is set"
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True, ""
    except OSError as exc:
        return False, f"{host} unreachable ({exc})"


def check_model_name(name: str) -> None:
    """``ValueError`` naming ``name`` (and a close timm name) unless timm knows the architecture (or it is the
    metadata-only reference, ``metadata-only``)."""
    import timm

    if name == METADATA_ONLY:
        return
    if not timm.is_model(name):
        from ._names import did_you_mean

        raise ValueError(f"Unknown timm model '{name}' (model.name){did_you_mean(name, timm.list_models())}; "
                         f"see timm.list_models()")


def create_model(name: str, num_classes: int, pretrained: Any = "auto", weights_path: str | Path | None = None,
                 **kwargs: Any) -> nn.Module:
    """A timm model with a ``num_classes``-way head.

    Args:
        name: any timm architecture (``resnet50``, ``vit_base_patch16_224``, ``resnet18``, ...).
        num_classes: output classes. pretrained: ``"auto"``, ``True`` or ``False`` (see module docstring).
        weights_path: a local ``.safetensors`` file with (ImageNet or own) weights.
        **kwargs: passed to ``timm.create_model`` (``drop_rate``, ``img_size``, ...).

    The attribute ``model.riskcl_weights`` records where the weights came from.
    """
    import timm

    check_model_name(name)
    return _with_weights(lambda hub: timm.create_model(name, pretrained=hub, num_classes=num_classes, **kwargs),
                         name, pretrained, weights_path)


SEGMENTATION_ARCHS = ("unet", "fpn", "unetplusplus", "deeplabv3plus", "linknet", "pspnet", "pan", "manet", "upernet",
                      "segformer")


def create_segmentation_model(arch: str, encoder: str, pretrained: Any = "auto",
                              weights_path: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """A segmentation-models-pytorch ``arch`` (``unet``, ``fpn``, ...) on a timm ``encoder`` (smp's ``tu-<name>``)
    with one output channel, the lesion logit. ``pretrained``: ImageNet weights for the encoder, as for
    :func:`create_model` (``"auto"`` falls back to random initialisation offline); ``weights_path``: a whole
    model's ``.safetensors``; ``kwargs``: smp's own arguments (``decoder_channels``, ...)."""
    import segmentation_models_pytorch as smp

    check_model_name(encoder)
    if arch not in SEGMENTATION_ARCHS:
        from ._names import did_you_mean

        hint = did_you_mean(arch, SEGMENTATION_ARCHS)
        raise ValueError(f"Unknown segmentation architecture '{arch}' (model.arch){hint}; expected one of "
                         f"{list(SEGMENTATION_ARCHS)}")

    def build(hub: bool) -> nn.Module:
        return smp.create_model(arch, encoder_name=f"tu-{encoder}", encoder_weights="imagenet" if hub else None,
                                classes=1, **kwargs)

    return _with_weights(build, f"{arch} / {encoder}", pretrained, weights_path)


def _with_weights(build: Any, name: str, pretrained: Any, weights_path: str | Path | None) -> nn.Module:
    """``build(hub: bool)`` with the weights ``pretrained`` / ``weights_path`` ask for (module docstring)."""
    if pretrained not in PRETRAINED_CHOICES:
        raise ValueError(f"Expected `pretrained` in ('auto', true, false), but got {pretrained!r}")
    if weights_path is not None:
        model = build(False)
        missing = _load_local(model, weights_path)
        model.riskcl_weights = f"file:{weights_path}" + (f" (new head: {len(missing)} tensors)" if missing else "")
        return model
    if pretrained is False:
        model = build(False)
        model.riskcl_weights = "random"
        return model
    reachable, reason = hub_reachable()
    if reachable:
        try:
            model = build(True)
            model.riskcl_weights = "hub"
            return model
        except Exception as exc:  # network errors come in many types (OSError, HTTP errors, hub errors)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if pretrained is True:
        raise WeightsUnavailableError(
            f"Could not load pretrained weights for '{name}' ({reason}). Run where the model hub is reachable, "
            f"pass model.weights_path=<file.safetensors>, or set model.pretrained=false for random init."
        )
    warnings.warn(f"Pretrained weights for '{name}' unreachable ({reason}); using RANDOM initialisation",
                  UserWarning, stacklevel=3)
    model = build(False)
    model.riskcl_weights = "random (pretrained weights unreachable)"
    return model


class EnsembleNet(nn.Module):
    """The members' networks as one: ``forward`` returns the log of the mean softmax (classification; its softmax
    is the mean) or the logit of the mean lesion probability ``(N, 1, H, W)`` (segmentation). Its features (for
    the input check) are the members' pooled features side by side."""

    def __init__(self, nets: Sequence[nn.Module], segmentation: bool = False) -> None:
        super().__init__()
        self.nets, self.segmentation = nn.ModuleList(nets), segmentation
        self.num_classes = getattr(nets[0], "num_classes", 1)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        outs = [(net(x) if meta is None else net(x, meta)).float() for net in self.nets]  # meta: fusion members
        if self.segmentation:
            p = torch.stack([torch.sigmoid(o) for o in outs]).mean(0).clamp(1e-7, 1 - 1e-7)
            return torch.log(p) - torch.log1p(-p)
        p = torch.stack([torch.softmax(o, 1) for o in outs]).mean(0)
        return torch.log(p.clamp_min(1e-30))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net.forward_head(net.forward_features(x), pre_logits=True).flatten(1)
                          for net in self.nets], dim=1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not pre_logits:
            raise ValueError("EnsembleNet.forward_head gives the pooled features only (pre_logits=True)")
        return features



class FusionNet(nn.Module):
    """An image network fused with encoded clinical metadata (:class:`riskcl.data.encoding.MetadataEncoding`).

    The backbone (a timm model without its classifier) gives pooled image features ``f``; a small MLP turns the
    metadata vector into ``m``. ``late``: the classifier reads ``[f, m]`` side by side. ``film``: ``m`` scales
    and shifts each image feature, ``f * (1 + gamma(m)) + beta(m)`` (feature-wise linear modulation, Perez et al.
    2018; the gating idea of the MetaBlock of Pacheco and Krohling 2021), initialised to the identity. A missing
    ``meta`` (``forward(x)``: a clinic sent none) is the encoding's all-missing row; in training each row is
    replaced by it with probability ``metadata_dropout``, so the model also learns to decide without metadata.
    """

    def __init__(self, backbone: nn.Module, meta_dim: int, num_classes: int, head: str = "late", hidden: int = 32,
                 missing_row: Any = None, metadata_dropout: float = 0.0) -> None:
        super().__init__()
        if head not in FUSION_HEADS:
            raise ValueError(f"Expected `model.fusion` in {FUSION_HEADS}, but got {head!r}")
        if not 0.0 <= metadata_dropout < 1.0:
            raise ValueError(f"Expected `model.metadata_dropout` in [0, 1), but got {metadata_dropout}")
        self.backbone, self.head, self.num_classes = backbone, head, num_classes
        self.metadata_dropout = float(metadata_dropout)
        feat = int(backbone.num_features)
        self.meta_mlp = nn.Sequential(nn.Linear(meta_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        if head == "late":
            self.classifier = nn.Linear(feat + hidden, num_classes)
        else:
            self.film = nn.Linear(hidden, 2 * feat)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
            self.classifier = nn.Linear(feat, num_classes)
        row = torch.zeros(meta_dim) if missing_row is None else torch.as_tensor(missing_row, dtype=torch.float32)
        self.register_buffer("missing_row", row.reshape(meta_dim).clone())

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        f = self.backbone(x)
        missing = self.missing_row.to(f.dtype).expand(x.shape[0], -1)
        meta = missing if meta is None else meta.to(f.dtype)
        if self.training and self.metadata_dropout > 0:
            drop = torch.rand(x.shape[0], 1, device=x.device) < self.metadata_dropout
            meta = torch.where(drop, missing, meta)
        m = self.meta_mlp(meta)
        if self.head == "late":
            return self.classifier(torch.cat([f, m], dim=1))
        gamma, beta = self.film(m).chunk(2, dim=1)
        return self.classifier(f * (1 + gamma) + beta)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not pre_logits:
            raise ValueError("FusionNet.forward_head gives the pooled image features only (pre_logits=True)")
        return self.backbone.forward_head(features, pre_logits=True)


class MetadataOnlyNet(nn.Module):
    """The metadata-only reference: multinomial logistic regression on the encoded metadata (the image is
    ignored), trained by the same loop, loss and selection as every model, so that it shows what the metadata
    alone carry. ``forward(x)`` without metadata answers for the all-missing row."""

    def __init__(self, meta_dim: int, num_classes: int, missing_row: Any = None) -> None:
        super().__init__()
        self.linear, self.num_classes = nn.Linear(meta_dim, num_classes), num_classes
        row = torch.zeros(meta_dim) if missing_row is None else torch.as_tensor(missing_row, dtype=torch.float32)
        self.register_buffer("missing_row", row.reshape(meta_dim).clone())

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        meta = self.missing_row.expand(x.shape[0], -1) if meta is None else meta
        return self.linear(meta.to(self.linear.weight.dtype))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("the metadata-only reference has no image features (no input check)")


def create_fusion_model(model_cfg: Any, num_classes: int, encoding: Any) -> nn.Module:
    """A :class:`FusionNet` on the timm backbone ``model_cfg.name`` for metadata encoded by ``encoding`` (or, for
    ``model.name: metadata-only``, the :class:`MetadataOnlyNet` reference)."""
    if model_cfg.name == METADATA_ONLY:
        return MetadataOnlyNet(encoding.dim, num_classes, encoding.missing_row())
    backbone = create_model(model_cfg.name, 0, pretrained=model_cfg.pretrained, weights_path=model_cfg.weights_path,
                            drop_rate=model_cfg.drop_rate, **model_cfg.options)
    return FusionNet(backbone, encoding.dim, num_classes, model_cfg.fusion, model_cfg.metadata_hidden,
                     encoding.missing_row(), model_cfg.metadata_dropout)


class AdoptedNet(nn.Module):
    """A model trained elsewhere as riskcl runs it: ``forward(images)`` takes decoded ``uint8`` ``(N, H, W, 3)``
    images of one size (``raw_input``: riskcl's own resize and normalisation are not applied), runs the declared
    preprocessing (:class:`riskcl.data.adopted.DeclaredPreprocess`), the model in its own runtime (ONNX Runtime, or
    TorchScript), and returns logits in the taxonomy's class order (declared probabilities: their logarithm). A
    non-finite output is passed on as it is: the scorer refuses to decide it."""

    raw_input = True

    def __init__(self, path: Path, kind: str, preprocess: nn.Module, perm: Any, output: str) -> None:
        super().__init__()
        self.preprocess, self.kind, self.output = preprocess, kind, output
        self.register_buffer("perm", torch.as_tensor(np.asarray(perm), dtype=torch.long))
        self.num_classes = len(perm)
        if kind == "onnx":
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
            self.net = None
        else:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        if self.net is None:
            out = torch.from_numpy(np.asarray(self.session.run(None, {self.input_name: x.detach().numpy()})[0]))
        else:
            out = self.net(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
        out = out.float()
        if self.output == "probs":
            out = torch.log(torch.clamp(out, min=1e-12))
        return out.index_select(1, self.perm)

    def logits_of(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """``(N, K)`` logits of decoded ``uint8`` images of any sizes (one size per call, input order kept)."""
        out = np.zeros((len(images), self.num_classes), dtype=np.float32)
        sizes: dict[tuple, list[int]] = {}
        for k, im in enumerate(images):
            sizes.setdefault(im.shape, []).append(k)
        with torch.no_grad():
            for idx in sizes.values():
                for start in range(0, len(idx), batch_size):
                    part = idx[start:start + batch_size]
                    out[part] = self(torch.from_numpy(np.stack([images[k] for k in part]))).numpy()
        return out
