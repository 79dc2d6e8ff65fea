"""Saliency: where the model looked, for the predicted class and for p(malignant).

Computed with pytorch-grad-cam (``grad-cam`` on PyPI; no CAM is written here). The target layer is the last
feature stage timm reports for the architecture (``model.feature_info``); vision transformers use their last
block's first norm with a reshape of the patch tokens into a grid (class / register tokens dropped). The
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

from ..data import decode_rgb, load_source_images
from ..data.augment import to_model_input
from ..data.images import resize_uint8
from ..decision import decide, softmax
from ..experiment.calibrate import operating_point
from ..experiment.folder import RunFolder
from ..io import atomic_write_with, make_folder
from ..metrics import malignant_probability
from ..taxonomy import Taxonomy
from .predict import missed_malignant, predict_arrays

DISPLAY = 224
METHODS = ("gradcam", "gradcam++", "xgradcam", "eigencam", "layercam")


def _cam_class(method: str):
    import pytorch_grad_cam as pgc

    classes = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
               "eigencam": pgc.EigenCAM, "layercam": pgc.LayerCAM}
    if method not in classes:
        raise ValueError(f"Unknown saliency method '{method}'; expected one of {list(classes)}")
    return classes[method]


def target_layer(model: torch.nn.Module) -> tuple[torch.nn.Module, Callable | None]:
    """The layer whose activations the CAM weighs, and the reshape a transformer's tokens need."""
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):  # a timm vision transformer
        prefix = int(getattr(model, "num_prefix_tokens", 1))

        def tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
            t = t[:, prefix:, :]
            side = int(round(t.shape[1] ** 0.5))
            return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

        return model.blocks[-1].norm1, tokens_to_grid
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ValueError(f"{type(model).__name__}: no timm feature_info to find a saliency layer in")
    name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
    return model.get_submodule(name), None


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
    layer, reshape = target_layer(model)
    with torch.enable_grad(), _cam_class(method)(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x, targets=targets)
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))


def overlay(image: np.ndarray, cam: np.ndarray, size: int = DISPLAY) -> np.ndarray:
    """The image (resized for display) with the saliency map as a heat map over it, ``uint8`` RGB."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    shown = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    mask = np.asarray(Image.fromarray(np.uint8(255 * np.clip(cam, 0, 1))).resize((size, size), Image.BILINEAR),
                      dtype=np.float32) / 255.0
    return show_cam_on_image(shown, mask, use_rgb=True)


def panel(image: np.ndarray, overlays: Sequence[np.ndarray], size: int = DISPLAY) -> np.ndarray:
    """The image and its overlays side by side."""
    shown = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return np.concatenate([shown, *overlays], axis=1)


def _save_png(path: Path, array: np.ndarray) -> Path:
    def write(tmp: str) -> None:
        Image.fromarray(array).save(tmp, format="PNG")

    atomic_write_with(path, write)
    return path


def explain_arrays(folder: RunFolder, images: Sequence[np.ndarray], method: str = "gradcam") -> list[dict[str, Any]]:
    """For each image: probabilities, decision, and the two overlays (predicted class, p(malignant))."""
    cfg, tax = folder.read_config(), folder.taxonomy()
    model = folder.load_model()
    probs = predict_arrays(model, images, cfg.data.image_size)
    threshold = float(operating_point(folder)["threshold"])
    labels = decide(probs, tax, "superclass", threshold)
    for_class = saliency(model, images, cfg.data.image_size, tax, "class", method, labels)
    for_mal = saliency(model, images, cfg.data.image_size, tax, "malignant", method)
    p_mal = malignant_probability(probs, tax)
    return [{"probabilities": probs[i], "label": tax.classes[labels[i]], "p_malignant": float(p_mal[i]),
             "threshold": threshold, "overlay_class": overlay(images[i], for_class[i]),
             "overlay_malignant": overlay(images[i], for_mal[i]), "method": method} for i in range(len(images))]


def explain_files(run_dir: str | Path, images: Sequence[str | Path], out_dir: str | Path,
                  method: str = "gradcam") -> list[dict[str, Any]]:
    """Write ``<stem>_class.png``, ``<stem>_malignant.png`` and ``<stem>_panel.png`` per image into ``out_dir``."""
    folder = RunFolder(run_dir)
    folder.require_finished()
    out = make_folder(out_dir, "overlays")
    arrays = [decode_rgb(p) for p in images]
    rows = []
    for path, arr, r in zip(images, arrays, explain_arrays(folder, arrays, method)):
        stem = Path(path).stem
        files = {"class": _save_png(out / f"{stem}_class.png", r["overlay_class"]),
                 "malignant": _save_png(out / f"{stem}_malignant.png", r["overlay_malignant"]),
                 "panel": _save_png(out / f"{stem}_panel.png",
                                    panel(arr, [r["overlay_class"], r["overlay_malignant"]]))}
        rows.append({"image": str(path), "label": r["label"], "p_malignant": r["p_malignant"],
                     "threshold": r["threshold"], **{k: str(v) for k, v in files.items()}})
    return rows


def explain_type_ii(run_dir: str | Path, cap: int = 16, method: str = "gradcam") -> dict[str, Any]:
    """The test split's Type II errors at the operating point (lowest p(malignant) first, up to ``cap``): image
    and p(malignant) overlay per case in ``RUN/gallery/``, listed in ``gallery.json``."""
    folder = RunFolder(run_dir)
    folder.require_finished()
    cfg, tax = folder.read_config(), folder.taxonomy()
    test = folder.predictions("test")
    p_mal = malignant_probability(softmax(test["logits"]), tax)
    threshold = float(operating_point(folder)["threshold"])
    all_missed = missed_malignant(p_mal, test["target"], tax, threshold)
    missed = all_missed[:cap]
    out = folder.gallery_dir
    out.mkdir(exist_ok=True)
    items = []
    if len(missed):
        paths = [str(test["paths"][i]) for i in missed] if "paths" in test else None
        if paths is None:
            raise ValueError(f"{folder.prediction_file('test')}: no `paths` array (a run from an older riskcl); "
                             f"the gallery needs the images")
        images = load_source_images(cfg.data.name, cfg.data.root, paths, **cfg.data.options)
        maps = saliency(folder.load_model(), images, cfg.data.image_size, tax, "malignant", method)
        for i, img, cam in zip(missed, images, maps):
            name = f"type_ii_{len(items):03d}.png"
            _save_png(out / name, panel(img, [overlay(img, cam)]))
            items.append({"id": str(test["ids"][i]), "true_class": tax.classes[int(test["target"][i])],
                          "p_malignant": float(p_mal[i]), "threshold": threshold, "file": name, "method": method})
    gallery = {"split": "test", "threshold": threshold, "type_ii_total": len(all_missed), "shown": len(items),
               "items": items}
    folder.write_gallery(gallery)
    return gallery
