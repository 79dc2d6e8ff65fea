"""Export a finished run as one artifact that any runtime executes and that decides exactly as riskcl decided.

The exported graph holds the preprocessing and the operating point: its input is a batch of ``uint8`` RGB images
``(N, H, W, 3)`` of any size (one size per call; dynamic batch, height and width), resized inside the graph by
riskcl's own resize (:func:`riskcl.data.images.resize_images`), scaled and normalised; its outputs are the class
probabilities, p(malignant), the triage decision (``refer`` when p(malignant) >= the run's threshold) and the
class label of the superclass-first rule. Formats: ONNX (``torch.onnx.export``, opset 18, read by ONNX Runtime)
and TorchScript (``torch.jit.trace``).

Beside the model, ``riskcl_export.json`` (and, for ONNX, the same in the model's ``metadata_props`` under the key
``riskcl``) records the classes, superclasses, input convention, cost matrix, the operating threshold and how it
was chosen, versions, the SHA-256 of the weights, and the parity check: the exported model in its runtime against
riskcl's own prediction on the run's test split (or given images). Export fails when a decision flips or
p(malignant) differs by more than ``tolerance`` (1e-4).
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data import decode_rgb, load_source_images
from ..data.augment import IMAGENET_MEAN, IMAGENET_STD
from ..data.images import resize_images
from ..decision import decide
from ..experiment.calibrate import operating_point
from ..experiment.folder import RunFolder
from ..io import atomic_write_json, atomic_write_with, make_folder
from ..metrics import malignant_probability
from .predict import predict_arrays

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
METADATA_FILE = "riskcl_export.json"
OUTPUTS = ("probabilities", "p_malignant", "refer", "label")
TOLERANCE = 1e-4


class ExportParityError(RuntimeError):
    """The exported model does not decide as riskcl decided."""


class TriageModel(nn.Module):
    """The run's network with riskcl's preprocessing and operating point around it.

    ``forward(images)``: ``uint8`` ``(N, H, W, 3)`` -> ``(probabilities (N, K), p_malignant (N,), refer (N,) bool,
    label (N,) int64)``.
    """

    def __init__(self, net: nn.Module, image_size: int, superclass: Sequence[int], threshold: float) -> None:
        super().__init__()
        self.net, self.image_size = net.eval(), int(image_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("malignant", torch.as_tensor(np.asarray(superclass) == 1))
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(self, images: torch.Tensor):
        x = resize_images(images.permute(0, 3, 1, 2), self.image_size).float()
        x = (x / 255.0 - self.mean) / self.std
        probs = torch.softmax(self.net(x).float(), dim=1)
        p_mal = (probs * self.malignant.float()).sum(dim=1)
        refer = p_mal >= self.threshold
        in_decided = refer[:, None] == self.malignant[None, :]
        label = torch.where(in_decided, probs, torch.full_like(probs, -1.0)).argmax(dim=1)
        return probs, p_mal, refer, label


def _export_onnx(model: TriageModel, path: Path, example: torch.Tensor) -> None:
    dims = {0: torch.export.Dim("batch", min=1, max=4096), 1: torch.export.Dim("height", min=2, max=16384),
            2: torch.export.Dim("width", min=2, max=16384)}
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes={"images": dims},
                                    input_names=["images"], output_names=list(OUTPUTS), opset_version=18,
                                    optimize=True)
        atomic_write_with(path, lambda tmp: program.save(tmp))


def _export_torchscript(model: TriageModel, path: Path, example: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        atomic_write_with(path, lambda tmp: traced.save(tmp))


class _Runner:
    """The exported file in its own runtime: ONNX Runtime or ``torch.jit.load``."""

    def __init__(self, fmt: str, path: Path) -> None:
        self.fmt = fmt
        if fmt == "onnx":
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.runtime = f"onnxruntime {ort.__version__}"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
            self.runtime = f"torch.jit {torch.__version__}"

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.fmt == "onnx":
            return tuple(self.session.run(list(OUTPUTS), {"images": batch}))
        with torch.no_grad():
            return tuple(t.numpy() for t in self.module(torch.from_numpy(batch)))


def _by_size(images: Sequence[np.ndarray]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, im in enumerate(images):
        groups[im.shape].append(i)
    return groups


def run_exported(runner: _Runner, images: Sequence[np.ndarray], batch_size: int = 16) -> dict[str, np.ndarray]:
    """The exported model's outputs for images of any sizes (batched by size, in input order)."""
    out = {k: [None] * len(images) for k in OUTPUTS}
    for _, idx in _by_size(images).items():
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            results = runner(np.stack([images[i] for i in part]))
            for name, values in zip(OUTPUTS, results):
                for i, v in zip(part, values):
                    out[name][i] = v
    return {k: np.asarray(v) for k, v in out.items()}


def parity_check(runner: _Runner, folder: RunFolder, images: Sequence[np.ndarray], names: Sequence[str],
                 threshold: float, source: str) -> dict[str, Any]:
    """The exported model against riskcl's own prediction: largest |difference| of p(malignant), decisions
    (refer / clear) and labels that differ at the operating threshold."""
    cfg, taxonomy = folder.read_config(), folder.taxonomy()
    ref_probs = predict_arrays(folder.load_model(), images, cfg.data.image_size)
    ref_pmal = malignant_probability(ref_probs, taxonomy)
    ref_labels = decide(ref_probs, taxonomy, "superclass", threshold)
    got = run_exported(runner, images)
    diff = np.abs(got["p_malignant"].astype(np.float64) - ref_pmal)
    flips = np.flatnonzero(got["refer"].astype(bool) != (ref_pmal >= threshold))
    label_flips = np.flatnonzero(got["label"].astype(np.int64) != ref_labels)
    sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    return {"images": len(images), "source": source, "image_sizes": sizes[:10] + (["..."] if len(sizes) > 10 else []),
            "runtime": runner.runtime, "max_abs_diff_p_malignant": float(diff.max()) if diff.size else 0.0,
            "max_abs_diff_probabilities": float(np.abs(got["probabilities"] - ref_probs).max()) if diff.size else 0.0,
            "decision_flips": int(flips.size), "label_flips": int(label_flips.size),
            "flipped": [names[i] for i in flips[:20]]}


def _check_images(folder: RunFolder, check_images: Sequence[str] | None, limit: int) -> tuple[list, list, str]:
    if check_images:
        return [decode_rgb(p) for p in check_images], [str(p) for p in check_images], "--check-images"
    cfg = folder.read_config()
    test = folder.splits()
    test = test.loc[test["split"] == "test"].head(limit)
    images = load_source_images(cfg.data.name, cfg.data.root, test["path"].tolist(), **cfg.data.options)
    return images, test["id"].tolist(), f"the run's test split ({len(images)} images)"


def export_metadata(folder: RunFolder, fmt: str, op: dict[str, Any]) -> dict[str, Any]:
    cfg, taxonomy, metrics = folder.read_config(), folder.taxonomy(), folder.metrics()
    keep = ("threshold", "method", "rule", "how", "alpha", "delta", "calibration_split", "guarantee", "n_calibration",
            "unit", "groups", "by", "unseen_group_threshold", "note")
    return {
        "riskcl_version": __version__, "torch_version": torch.__version__, "format": fmt, "file": FORMATS[fmt],
        "input": {"name": "images", "dtype": "uint8", "shape": "(N, H, W, 3)", "channels": "RGB",
                  "range": "0..255", "sizes": "any H and W, one size per call; dynamic batch",
                  "decoding": "decode the file to 8-bit RGB (e.g. Pillow Image.convert('RGB')); riskcl scales "
                              "16-bit greyscale images by their own range before this step"},
        "preprocessing": f"inside the model: antialiased bilinear resize to {cfg.data.image_size} x "
                         f"{cfg.data.image_size} rounded to whole pixel values, /255, ImageNet mean and std",
        "outputs": {"probabilities": "(N, K) float32, class order as `classes`",
                    "p_malignant": "(N,) float32, the sum of the malignant class probabilities",
                    "refer": "(N,) bool, p_malignant >= threshold (the triage decision)",
                    "label": "(N,) int64, the most probable class within the decided superclass"},
        "classes": list(taxonomy.classes), "levels": list(taxonomy.levels),
        "superclass": ["malignant" if s else "benign" for s in taxonomy.superclass],
        "cost_matrix": folder.cost_matrix().tolist(),
        "operating_point": {k: op[k] for k in keep if k in op},
        "weights_sha256": folder.weights_sha256(),
        "run": {k: metrics["run"].get(k) for k in ("name", "dataset", "model", "loss", "seed", "epochs", "best_epoch",
                                                   "weights", "device")},
    }


def _write_onnx_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "riskcl", json.dumps(meta, sort_keys=True)
    atomic_write_with(path, lambda tmp: onnx.save(model, tmp))


def export_run(run_dir: str | Path, out_dir: str | Path, fmt: str = "onnx", check_images: Sequence[str] | None = None,
               check_limit: int = 256, calibrated: bool | None = None, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export the run's model; returns the metadata written beside it (parity check included).

    ``calibrated``: use ``calibration.json`` (default: when it exists); else the 0.5 default rule, said so.
    Raises :class:`ExportParityError` when the exported model does not decide as riskcl does.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Expected --format in {sorted(FORMATS)}, but got {fmt!r}")
    folder = RunFolder(run_dir)
    folder.require_finished()
    out = make_folder(out_dir, "exported model")
    op = operating_point(folder, calibrated)
    if op.get("groups"):  # the graph carries one threshold: the pooled one; the groups' own go into the metadata
        op = {**op, "note": f"the model's `refer` output applies the pooled threshold {op['threshold']:.4f}; for a "
                            f"case whose '{op['by']}' is known, compare p_malignant with "
                            f"operating_point.groups[<{op['by']}>].threshold instead"}
    cfg, taxonomy = folder.read_config(), folder.taxonomy()
    model = TriageModel(folder.load_model(), cfg.data.image_size, taxonomy.superclass, float(op["threshold"]))
    model.eval().requires_grad_(False)  # inference only: no autograd state in the exported graph
    size = cfg.data.image_size
    example = torch.zeros(2, size + 3, size + 5, 3, dtype=torch.uint8)
    path = out / FORMATS[fmt]
    (_export_onnx if fmt == "onnx" else _export_torchscript)(model, path, example)
    images, names, source = _check_images(folder, check_images, check_limit)
    parity = parity_check(_Runner(fmt, path), folder, images, names, float(op["threshold"]), source)
    parity["tolerance"] = tolerance
    meta = {**export_metadata(folder, fmt, op), "parity": parity}
    if fmt == "onnx":
        _write_onnx_metadata(path, meta)
    atomic_write_json(out / METADATA_FILE, meta)
    if parity["decision_flips"] or parity["label_flips"] or parity["max_abs_diff_p_malignant"] > tolerance:
        raise ExportParityError(
            f"{path}: the exported model does not decide as riskcl does on {source}: {parity['decision_flips']} "
            f"decision flip(s), {parity['label_flips']} label flip(s), max |p(malignant) difference| "
            f"{parity['max_abs_diff_p_malignant']:.2e} (tolerance {tolerance:g}); see {out / METADATA_FILE}")
    return meta
