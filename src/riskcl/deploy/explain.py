"""Saliency: where the model looked, for the predicted class and for p(malignant).

Computed with pytorch-grad-cam (``grad-cam`` on PyPI; no CAM is written here). The target layer is the last
feature stage timm reports for the architecture (``model.feature_info``) whose map still has at least
``MIN_GRID`` x ``MIN_GRID`` cells at the run's input size: at 32 px a ResNet's last stage is 1 x 1, and Grad-CAM
of a single cell is a constant, which normalises to a blank map. Vision transformers use their last block's first
norm with a reshape of the patch tokens into a grid (class / register tokens dropped). A map that is still
constant is said to be blank (:func:`blank_map_note`) wherever it is shown, and every overlay has a colour bar. The
p(malignant) target is the sum of the malignant class probabilities, so its map shows what pushes a case
towards *refer*.

``riskcl explain RUN IMAGES --out DIR`` writes one overlay PNG per image and target; ``explain_type_ii`` writes
the gallery of the test split's fatal errors (``RUN/gallery/``) that reports and model cards show.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .._checks import check_method
from ..config import dicom_policy
from ..data import decode_rgb, load_source_images
from ..data.augment import to_model_input
from ..data.images import resize_uint8
from ..experiment.calibrate import operating_point
from ..experiment.folder import RunFolder
from ..io import atomic_write_with, distinct_stems, make_folder
from ..metrics import malignant_probability
from ..models import MetadataOnlyNet
from ..taxonomy import Taxonomy
from .predict import missed_malignant, predict_arrays

DISPLAY = 224
MIN_GRID = 4          # cells per side the saliency layer must have at the run's input size
BLANK_RANGE = 1e-6    # a map whose max - min is below this is blank
NO_IMAGE_NOTE = "the metadata-only reference reads no image: there is no saliency to show"
ADOPTED_NOTE = ("a model trained elsewhere runs in its own runtime (ONNX Runtime, or a TorchScript module), whose "
                "layers Grad-CAM cannot hook: there is no saliency to show (its decisions are unaffected)")
BLANK_NOTE = ("blank saliency map: the map is constant, so it shows nothing about where the model looked (the "
              "method found no spatial signal at this input size)")


def blank_map_note(cam: np.ndarray) -> str:
    """:data:`BLANK_NOTE` when the map is constant, else an empty string."""
    return BLANK_NOTE if float(np.ptp(cam)) < BLANK_RANGE else ""


def _cam_class(method: str):
    import pytorch_grad_cam as pgc

    classes = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
               "eigencam": pgc.EigenCAM, "layercam": pgc.LayerCAM}
    return classes[check_method(method)]


def target_layer(model: torch.nn.Module, image_size: int | None = None) -> tuple[torch.nn.Module, Callable | None]:
    """The layer whose activations the CAM weighs, and the reshape a transformer's tokens need (a fusion model: its
    image backbone's; the map then explains the image with the clinical data missing)."""
    from ..models import FusionNet

    if getattr(model, "raw_input", False):
        raise ValueError(ADOPTED_NOTE)
    if isinstance(model, FusionNet):
        return target_layer(model.backbone, image_size)
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):  # a timm vision transformer
        prefix = int(getattr(model, "num_prefix_tokens", 1))

        def tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
            t = t[:, prefix:, :]
            side = int(round(t.shape[1] ** 0.5))
            return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

        return model.blocks[-1].norm1, tokens_to_grid
    info = getattr(model, "feature_info", None)
    if info is None:
        if isinstance(model, MetadataOnlyNet):
            raise ValueError(NO_IMAGE_NOTE)
        raise ValueError(f"{type(model).__name__}: no timm feature_info to find a saliency layer in")
    stages = info if isinstance(info, list) else [{"module": m, "reduction": r}
                                                   for m, r in zip(info.module_name(), info.reduction())]
    chosen = stages[-1]
    if image_size is not None:  # the deepest stage that still has a spatial grid at this input size
        fine = [st for st in stages if image_size // int(st.get("reduction", 1)) >= MIN_GRID]
        chosen = fine[-1] if fine else stages[0]
    return model.get_submodule(chosen["module"]), None


class _MalignantTarget:
    """The CAM target p(malignant) = sum of the malignant class probabilities of one sample's logits."""

    def __init__(self, malignant: Sequence[int]) -> None:
        self.malignant = list(malignant)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)[..., self.malignant].sum(dim=-1)


def saliency(model: torch.nn.Module, images: Sequence[np.ndarray], image_size: int, taxonomy: Taxonomy,
             target: str = "malignant", method: str = "gradcam", classes: Sequence[int] | None = None) -> np.ndarray:
    """``(N, image_size, image_size)`` maps in [0, 1] for ``uint8`` ``(H, W, 3)`` images.

    ``target``: ``malignant`` (p(malignant)) or ``class`` (``classes[i]`` per image, e.g. the predicted one).
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    batch = torch.from_numpy(np.stack([resize_uint8(im, image_size) for im in images]))
    x = to_model_input(batch)
    if target == "malignant":
        targets = [_MalignantTarget(taxonomy.malignant_indices)] * len(images)
    elif target == "class":
        targets = [ClassifierOutputTarget(int(c)) for c in classes]
    else:
        raise ValueError(f"Expected `target` 'malignant' or 'class', but got {target!r}")
    layer, reshape = target_layer(model, image_size)
    with torch.enable_grad(), _cam_class(method)(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x, targets=targets)
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))


def _colour_bar(height: int, width: int = 18) -> np.ndarray:
    """A vertical colour bar of the overlay's colour map (high at the top), with a thin frame, ``uint8`` RGB."""
    import cv2

    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(width, axis=1)
    bar = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    bar[[0, -1], :] = 0
    bar[:, [0, -1]] = 0
    return bar


def overlay(image: np.ndarray, cam: np.ndarray, size: int = DISPLAY) -> np.ndarray:
    """The image (resized for display) with the saliency map as a heat map over it and a colour bar (low at the
    bottom, high at the top) at its right, ``uint8`` RGB; a blank map is shown as the plain image, crossed out."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    shown = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    if blank_map_note(cam):
        out = np.uint8(255 * shown)
        idx = np.arange(size)
        out[idx, idx] = out[idx, size - 1 - idx] = (200, 40, 40)
    else:
        mask = np.asarray(Image.fromarray(np.uint8(255 * np.clip(cam, 0, 1))).resize((size, size), Image.BILINEAR),
                          dtype=np.float32) / 255.0
        out = show_cam_on_image(shown, mask, use_rgb=True)
    return np.concatenate([out, _colour_bar(size)], axis=1)


def panel(image: np.ndarray, overlays: Sequence[np.ndarray], size: int = DISPLAY) -> np.ndarray:
    """The image and its overlays side by side."""
    shown = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return np.concatenate([shown, *overlays], axis=1)


def _save_png(path: Path, array: np.ndarray) -> Path:
    def write(tmp: str) -> None:
        Image.fromarray(array).save(tmp, format="PNG")

    atomic_write_with(path, write)
    return path


def refuse_segmentation(folder: RunFolder, op) -> None:
    """Saliency explains a classifier's p(malignant); a segmentation model's explanation is its outline."""
    if op.segmentation:
        raise ValueError(f"{folder.path} is a segmentation run: its explanation is the lesion's outline, which "
                         f"`riskcl predict {folder.path} IMAGES --out preds.csv` writes beside each mask "
                         f"(<name>_outline.png) and `riskcl serve` shows; the card lists the worst under-segmented "
                         f"test images")


def explain_arrays(folder: RunFolder, images: Sequence[np.ndarray], method: str = "gradcam") -> list[dict[str, Any]]:
    """For each image: probabilities, decision at the run's operating point, the two overlays (predicted class,
    p(malignant)) and a note when a map is blank."""
    tax = folder.taxonomy()
    op = operating_point(folder, allow_uncertified=True)
    refuse_segmentation(folder, op)
    model = folder.load_model()
    probs = predict_arrays(model, images, op)
    labels = op.decide(probs, tax)
    for_class = saliency(model, images, op.image_size, tax, "class", method, labels)
    for_mal = saliency(model, images, op.image_size, tax, "malignant", method)
    p_mal = malignant_probability(probs, tax)
    return [{"probabilities": probs[i], "label": tax.classes[labels[i]], "p_malignant": float(p_mal[i]),
             "threshold": float(op.threshold), "overlay_class": overlay(images[i], for_class[i]),
             "overlay_malignant": overlay(images[i], for_mal[i]), "method": method,
             "note": blank_map_note(for_class[i]) or blank_map_note(for_mal[i])} for i in range(len(images))]


def explain_files(run_dir: str | Path, images: Sequence[str | Path], out_dir: str | Path,
                  method: str = "gradcam") -> list[dict[str, Any]]:
    """Write ``<stem>_class.png``, ``<stem>_malignant.png`` and ``<stem>_panel.png`` per image into ``out_dir``."""
    check_method(method)
    folder = RunFolder(run_dir)
    folder.require_finished()
    arrays = [decode_rgb(p) for p in images]
    out = make_folder(out_dir, "overlays")
    rows = []
    for path, stem, arr, r in zip(images, distinct_stems(images), arrays, explain_arrays(folder, arrays, method)):
        files = {"class": _save_png(out / f"{stem}_class.png", r["overlay_class"]),
                 "malignant": _save_png(out / f"{stem}_malignant.png", r["overlay_malignant"]),
                 "panel": _save_png(out / f"{stem}_panel.png",
                                    panel(arr, [r["overlay_class"], r["overlay_malignant"]]))}
        rows.append({"image": str(path), "label": r["label"], "p_malignant": r["p_malignant"],
                     "threshold": r["threshold"], "note": r["note"], **{k: str(v) for k, v in files.items()}})
    return rows


def type_ii_cases(folder: RunFolder, op, test: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(missed indices lowest p(malignant) first, p(malignant), each case's threshold)`` of the test split at the
    operating point (per group when it has groups): the one Type II list of the gallery and the card."""
    tax = folder.taxonomy()
    p_mal = malignant_probability(op.probabilities(test["logits"]), tax)
    strata = test.get(f"meta__{op.by}") if op.per_group else None
    thresholds = np.broadcast_to(np.asarray(op.thresholds(strata), dtype=np.float64), p_mal.shape)
    return missed_malignant(p_mal, test["target"], tax, thresholds), p_mal, thresholds


def explain_type_ii(run_dir: str | Path, cap: int = 16, method: str = "gradcam") -> dict[str, Any]:
    """The test split's Type II errors at the operating point (lowest p(malignant) first, up to ``cap``): image
    and p(malignant) overlay per case in ``RUN/gallery/``, listed in ``gallery.json`` with the operating point
    it was made at (a later calibration makes it stale)."""
    check_method(method)
    if cap < 0:
        raise ValueError(f"Expected --cap >= 0, but got {cap}")
    folder = RunFolder(run_dir)
    folder.require_finished()
    cfg, tax = folder.read_config(), folder.taxonomy()
    op = operating_point(folder, allow_uncertified=True)
    refuse_segmentation(folder, op)
    test = folder.predictions("test")
    all_missed, p_mal, thresholds = type_ii_cases(folder, op, test)
    missed = all_missed[:cap]
    folder.gallery_dir.mkdir(exist_ok=True)
    items, notes = [], []
    if len(missed):
        paths = [str(test["paths"][i]) for i in missed] if "paths" in test else None
        if paths is None:
            raise ValueError(f"{folder.prediction_file('test')}: no `paths` array (a run from an older riskcl); "
                             f"the gallery needs the images")
        images = load_source_images(cfg.data.name, cfg.data.root, paths, dicom_policy(cfg.data), **cfg.data.options)
        maps = saliency(folder.load_model(), images, op.image_size, tax, "malignant", method)
        for i, img, cam in zip(missed, images, maps):
            path = folder.gallery_image(len(items))
            _save_png(path, panel(img, [overlay(img, cam)]))
            notes.append(blank_map_note(cam))
            items.append({"id": str(test["ids"][i]), "true_class": tax.classes[int(test["target"][i])],
                          "p_malignant": float(p_mal[i]), "threshold": float(thresholds[i]), "file": path.name,
                          "method": method, "blank": bool(notes[-1])})
    gallery = {"split": "test", "threshold": float(op.threshold), "operating_point": op.to_dict(),
               "type_ii_total": len(all_missed), "shown": len(items), "items": items,
               "blank_maps": sum(bool(n) for n in notes), "note": BLANK_NOTE if any(notes) else ""}
    folder.write_gallery(gallery)
    return gallery


def saliency_panel(model: torch.nn.Module, image: np.ndarray, image_size: int, taxonomy: Taxonomy,
                   method: str) -> tuple[np.ndarray, str]:
    """The p(malignant) saliency panel of one decoded image (image | overlay with a colour bar), ``uint8`` RGB, and
    a note: empty, or why the map says nothing."""
    cam = saliency(model, [image], image_size, taxonomy, "malignant", method)[0]
    return panel(image, [overlay(image, cam)]), blank_map_note(cam)


def saliency_png(model: torch.nn.Module, image: np.ndarray, image_size: int, taxonomy: Taxonomy,
                 method: str) -> tuple[bytes, str]:
    """:func:`saliency_panel` as PNG (the service's ``/explain``)."""
    import io

    picture, note = saliency_panel(model, image, image_size, taxonomy, method)
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    return buf.getvalue(), note
