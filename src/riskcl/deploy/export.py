"""Export a finished run as one artifact that any runtime executes and that decides exactly as riskcl decided.

The exported graph holds the preprocessing and the operating point: its input is a batch of ``uint8`` RGB images
``(N, H, W, 3)`` of any size (one size per call; dynamic batch, height and width), resized inside the graph by
riskcl's own resize (:func:`riskcl.data.images.resize_images`), scaled and normalised; its outputs are the class
probabilities, p(malignant), the triage decision (``refer`` when p(malignant) >= the run's threshold) and the
class label of the superclass-first rule. The whole operating point is inside the graph: the run's test-time
augmentation (the mean softmax over four flips) and the calibration's temperature, so that the exported
p(malignant) is the very number the threshold was certified on. Formats: ONNX (``torch.onnx.export``, opset 18,
read by ONNX Runtime) and TorchScript (``torch.jit.trace``).

The export folder holds the model, ``riskcl_export.json`` (and, for ONNX, the same in the model's
``metadata_props`` under the key ``riskcl``: classes, superclasses, the input convention, the outputs in the
graph's order, the cost matrix, the operating point with its certification, versions, the SHA-256 of the weights
and of every exported file, and the parity checks), ``decode.py`` (riskcl's decoder, numpy and Pillow only) and a
``README.md``. It is built in a temporary folder and swapped in whole. Parity: the exported model in its runtime
against the run's own saved test predictions (the numbers calibration saw) and against ``riskcl predict``. Export
fails when a decision flips or p(malignant) differs by more than ``tolerance`` (1e-4).
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data import decode_rgb, load_source_images
from ..data import encode_metadata as encode_metadata_module
from ..data import rgb as rgb_module
from ..data.augment import IMAGENET_MEAN, IMAGENET_STD
from ..data.images import resize_images
from ..decision import OperatingPoint, decide
from ..engine.loop import tta_logits
from ..config import dicom_policy
from ..experiment.calibrate import operating_point
from ..experiment.folder import RunFolder
from ..io import atomic_write_json, atomic_write_text, atomic_write_with, build_folder_atomically, file_sha256
from ..metrics import malignant_probability
from .graph import OUTPUT_DOC, OUTPUTS, SEGMENTATION_OUTPUT_DOC, SEGMENTATION_OUTPUTS, decide_in_graph  # noqa: F401
from .predict import predict_arrays
from .scoring import METADATA_FILE, group_by_shape

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
README_FILE = "README.md"
DECODER_FILE = "decode.py"
ENCODER_FILE = "encode_metadata.py"  # a fusion model's: encodes one image's metadata row (standard library only)
TOLERANCE = 1e-4


def output_names(op: OperatingPoint) -> tuple[str, ...]:
    """The graph's outputs in order: :data:`OUTPUTS`, or :data:`SEGMENTATION_OUTPUTS` for segmentation."""
    return SEGMENTATION_OUTPUTS if op.segmentation else OUTPUTS


class ExportParityError(RuntimeError):
    """The exported model does not decide as riskcl decided."""


class TriageModel(nn.Module):
    """The run's network with riskcl's preprocessing and the whole operating point around it.

    ``forward(images)``: ``uint8`` ``(N, H, W, 3)`` -> ``(probabilities (N, K), p_malignant (N,), refer (N,) bool,
    label (N,) int64)``; probabilities are ``softmax(tta_logits(net, x) / temperature)``.
    """

    def __init__(self, net: nn.Module, superclass: Sequence[int], op: OperatingPoint) -> None:
        super().__init__()
        self.net, self.image_size, self.tta = net.eval(), int(op.image_size), op.tta
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("malignant", torch.as_tensor(np.asarray(superclass) == 1))
        self.register_buffer("threshold", torch.tensor(float(op.threshold)))
        self.register_buffer("temperature", torch.tensor(float(op.temperature)))

    def forward(self, images: torch.Tensor, metadata: torch.Tensor | None = None):
        x = resize_images(images.permute(0, 3, 1, 2), self.image_size).float()
        x = (x / 255.0 - self.mean) / self.std
        net_input = x if metadata is None else (x, metadata)
        return decide_in_graph(tta_logits(self.net, net_input, self.tta), self.temperature, self.malignant,
                               self.threshold)


class LesionModel(nn.Module):
    """A segmentation run's network with riskcl's preprocessing and the operating point around it:
    ``forward(images)``: ``uint8`` ``(N, H, W, 3)`` -> ``(p_lesion (N, H, W) float32, mask (N, H, W) bool)``, the
    model-grid probabilities mapped back onto the input's pixels by nearest neighbour (as ``riskcl predict``)."""

    def __init__(self, net: nn.Module, op: OperatingPoint) -> None:
        super().__init__()
        self.net, self.image_size, self.tta = net.eval(), int(op.image_size), op.tta
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("threshold", torch.tensor(float(op.threshold)))
        self.register_buffer("temperature", torch.tensor(float(op.temperature)))

    def forward(self, images: torch.Tensor):
        h, w = images.shape[1], images.shape[2]
        x = resize_images(images.permute(0, 3, 1, 2), self.image_size).float()
        x = (x / 255.0 - self.mean) / self.std
        p = torch.sigmoid(tta_logits(self.net, x, self.tta) / self.temperature)
        s, top = float(self.image_size), self.image_size - 1
        rows = torch.clamp(((torch.arange(h, dtype=torch.float64) + 0.5) * s / h).floor().long(), max=top)
        cols = torch.clamp(((torch.arange(w, dtype=torch.float64) + 0.5) * s / w).floor().long(), max=top)
        p = p.index_select(1, rows).index_select(2, cols)
        return p, p >= self.threshold


def _export_onnx(model: nn.Module, path: Path, example: torch.Tensor, outputs: Sequence[str] = OUTPUTS,
                 metadata: torch.Tensor | None = None) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims = {0: batch, 1: torch.export.Dim("height", min=2, max=16384), 2: torch.export.Dim("width", min=2, max=16384)}
    args, shapes, names = (example,), {"images": dims}, ["images"]
    if metadata is not None:  # a fusion model's second input, one row per image
        args, shapes, names = (example, metadata), {"images": dims, "metadata": {0: batch}}, ["images", "metadata"]
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=shapes,
                                    input_names=names, output_names=list(outputs), opset_version=18,
                                    optimize=True)
        atomic_write_with(path, lambda tmp: program.save(tmp))


def _export_torchscript(model: nn.Module, path: Path, example: torch.Tensor, outputs: Sequence[str] = OUTPUTS,
                        metadata: torch.Tensor | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example if metadata is None else (example, metadata), check_trace=False)
        atomic_write_with(path, lambda tmp: traced.save(tmp))


class _Runner:
    """The exported file in its own runtime: ONNX Runtime or ``torch.jit.load``."""

    def __init__(self, fmt: str, path: Path, outputs: Sequence[str] = OUTPUTS) -> None:
        self.fmt, self.outputs = fmt, tuple(outputs)
        if fmt == "onnx":
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.runtime = f"onnxruntime {ort.__version__}"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
            self.runtime = f"torch.jit {torch.__version__}"

    def __call__(self, batch: np.ndarray, metadata: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        if self.fmt == "onnx":
            feed = {"images": batch} if metadata is None else {"images": batch, "metadata": metadata}
            return tuple(self.session.run(list(self.outputs), feed))
        with torch.no_grad():
            args = (torch.from_numpy(batch),) if metadata is None else (torch.from_numpy(batch),
                                                                         torch.from_numpy(metadata))
            return tuple(t.numpy() for t in self.module(*args))


def run_exported(runner: _Runner, images: Sequence[np.ndarray], batch_size: int = 16,
                 metadata: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The exported model's outputs for images of any sizes (batched by size, in input order); ``metadata``: a
    fusion model's encoded rows, one per image."""
    out = {k: [None] * len(images) for k in runner.outputs}
    for idx in group_by_shape(images).values():
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            results = runner(np.stack([images[i] for i in part]), None if metadata is None else metadata[part])
            for name, values in zip(runner.outputs, results):
                for i, v in zip(part, values):
                    out[name][i] = v
    if "p_lesion" in out:  # maps of several sizes stay a list
        return out
    return {k: np.asarray(v) for k, v in out.items()}


def lesion_parity_check(runner: _Runner, folder: RunFolder, images: Sequence[np.ndarray], names: Sequence[str],
                        op: OperatingPoint, source: str, tolerance: float) -> dict[str, Any]:
    """A segmentation export against ``riskcl predict`` (the run's PyTorch model, mapped onto each image's pixels):
    largest |p(lesion) difference| per pixel, and mask pixels that differ at the threshold beyond ties (pixels
    whose reference p(lesion) lies within ``tolerance`` of the threshold may fall either way)."""
    from .segmentation import to_image_grid

    got = run_exported(runner, images)
    ref = predict_arrays(folder.load_model(), images, op)
    diff, flips, ties, flipped = 0.0, 0, 0, []
    for k, (im, p_ref) in enumerate(zip(images, ref)):
        p_ref = to_image_grid(p_ref, *im.shape[:2]).astype(np.float64)
        p_got = np.asarray(got["p_lesion"][k], dtype=np.float64)
        diff = max(diff, float(np.abs(p_got - p_ref).max()))
        differ = np.asarray(got["mask"][k], bool) != (p_ref >= op.threshold)
        tie = np.abs(p_ref - op.threshold) <= tolerance
        flips += int((differ & ~tie).sum())
        ties += int((differ & tie).sum())
        if (differ & ~tie).any():
            flipped.append(str(names[k]))
    sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    return {"images": len(images), "source": source, "image_sizes": sizes[:10] + (["..."] if len(sizes) > 10 else []),
            "runtime": runner.runtime, "reference": "riskcl predict", "max_abs_diff_p_lesion": diff,
            "mask_pixel_flips": flips, "mask_pixel_ties": ties, "flipped": flipped[:20]}


def _compare(got: dict[str, np.ndarray], ref_probs: np.ndarray, taxonomy, op: OperatingPoint, names: Sequence[str],
             reference: str) -> dict[str, Any]:
    ref_pmal = malignant_probability(ref_probs, taxonomy)
    diff = np.abs(got["p_malignant"].astype(np.float64) - ref_pmal)
    flips = np.flatnonzero(got["refer"].astype(bool) != (ref_pmal >= op.threshold))
    label_flips = np.flatnonzero(got["label"].astype(np.int64) != decide(ref_probs, taxonomy, "superclass",
                                                                          op.threshold))
    return {"reference": reference, "images": len(names),
            "max_abs_diff_p_malignant": float(diff.max()) if diff.size else 0.0,
            "max_abs_diff_probabilities": float(np.abs(got["probabilities"] - ref_probs).max()) if diff.size else 0.0,
            "decision_flips": int(flips.size), "label_flips": int(label_flips.size),
            "flipped": [str(names[i]) for i in flips[:20]]}


def _saved_probabilities(folder: RunFolder, names: Sequence[str], op: OperatingPoint) -> np.ndarray | None:
    """The run's own saved test probabilities of ``names`` (test ids) at ``op``; None when any is missing."""
    saved = folder.predictions("test")
    row = {str(i): k for k, i in enumerate(saved["ids"])}
    if not all(str(n) in row for n in names):
        return None
    return op.probabilities(saved["logits"][[row[str(n)] for n in names]])


def parity_check(runner: _Runner, folder: RunFolder, images: Sequence[np.ndarray], names: Sequence[str],
                 op: OperatingPoint, source: str, from_test_split: bool,
                 metadata: np.ndarray | None = None) -> dict[str, Any]:
    """The exported model against the run's saved test predictions (when the images are the test split's) and
    against ``riskcl predict``: largest |difference| of p(malignant), decisions (refer / clear) and labels that
    differ at the operating threshold. The top-level figures are the worse of the two. ``metadata``: a fusion
    model's encoded rows of the images."""
    taxonomy = folder.taxonomy()
    got = run_exported(runner, images, metadata=metadata)
    checks = [_compare(got, predict_arrays(folder.load_model(), images, op, metadata=metadata), taxonomy, op, names,
                       "riskcl predict")]
    if from_test_split:
        saved = _saved_probabilities(folder, names, op)
        if saved is not None:
            check = _compare(got, saved, taxonomy, op, names, "the run's saved test predictions (predictions.npz, "
                                                              "as calibration saw them)")
            device = str(folder.metrics()["run"].get("device", "cpu"))
            if not device.startswith("cpu"):  # predicted on a GPU (bf16 autocast): reported, not held to 1e-4
                check["informational"] = (f"the run predicted its test split on {device}; the exported model runs "
                                          f"in float32, so this check is reported but does not fail the export")
            checks.insert(0, check)
    sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    binding = [c for c in checks if "informational" not in c]
    worst = {k: max(c[k] for c in binding) for k in ("max_abs_diff_p_malignant", "max_abs_diff_probabilities",
                                                     "decision_flips", "label_flips")}
    return {"images": len(images), "source": source, "image_sizes": sizes[:10] + (["..."] if len(sizes) > 10 else []),
            "runtime": runner.runtime, **worst, "flipped": sorted({f for c in checks for f in c["flipped"]})[:20],
            "checks": checks}


def _check_images(folder: RunFolder, check_images: Sequence[str] | None,
                  limit: int) -> tuple[list, list, str, np.ndarray | None]:
    """Images for the parity check, their names, where they came from, and (a fusion model) their encoded
    metadata: the test split's own from splits.csv; for ``--check-images`` files, every value missing."""
    encoding = folder.metadata_encoding()
    if check_images:
        rows = None if encoding is None else np.stack([encoding.missing_row()] * len(check_images))
        return [decode_rgb(p) for p in check_images], [str(p) for p in check_images], "--check-images", rows
    cfg = folder.read_config()
    test = folder.splits()
    test = test.loc[test["split"] == "test"].head(limit)
    images = load_source_images(cfg.data.name, cfg.data.root, test["path"].tolist(), dicom_policy(cfg.data),
                                **cfg.data.options)
    rows = None
    if encoding is not None:
        from ..data.registry import normalise_missing

        rows = encoding.encode({c: [normalise_missing(v) for v in test[c]] for c in encoding.column_names}, len(test))
    return images, test["id"].tolist(), f"the run's test split ({len(images)} images)", rows


def _decision_curve_summary(folder: RunFolder) -> dict[str, Any]:
    """The test split's decision curve in one sentence, with its pt range, expected cost and H-measure."""
    from ..experiment.decision_curves import run_decision_curve

    curve = run_decision_curve(folder.path, "test", n_boot=0, write=False)
    return {"sentence": curve["sentence"], "pt_range": [curve["pt"][0], curve["pt"][-1]],
            "adds_benefit": curve["adds_benefit"], **{k: curve["cost_figures"][k] for k in
                                                      ("expected_cost", "h_measure", "costs")}}


def _metadata_input(folder: RunFolder) -> dict[str, Any] | None:
    """A fusion model's second input: its name, shape, encoding and how to make a row (None: images only)."""
    encoding = folder.metadata_encoding()
    if encoding is None:
        return None
    return {"name": "metadata", "dtype": "float32", "shape": f"(N, {encoding.dim})", "columns": encoding.column_names,
            "encoding": encoding.to_dict(),
            "how": f"one row per image: {ENCODER_FILE}'s encode_row(encoding, {{column: value}}); a missing column or "
                   f"value, or a category never seen in training, encodes as unknown (all missing: the model decides "
                   f"from the image alone)"}


def describe_run(folder: RunFolder, op: OperatingPoint) -> dict[str, Any]:
    """What a deployed model is (classes, input convention, outputs in order, cost, operating point, versions):
    the export's metadata and the service's ``/model`` answer, from one place."""
    cfg, taxonomy, metrics = folder.read_config(), folder.taxonomy(), folder.metrics()
    doc = SEGMENTATION_OUTPUT_DOC if op.segmentation else OUTPUT_DOC
    return {
        "riskcl_version": __version__, "torch_version": torch.__version__,
        "input": {"name": "images", "dtype": "uint8", "shape": "(N, H, W, 3)", "channels": "RGB",
                  "dicom": dicom_policy(cfg.data).to_dict(),
                  "range": "0..255", "sizes": "any H and W, one size per call; dynamic batch",
                  "decoding": "DICOM files: riskcl's DICOM reader under `dicom` (modality LUT, the window, MONOCHROME1 "
                              "inverted, scaled by its own range; riskcl predict / serve on this folder apply it); "
                              "other files: decode each file with decode.py's decode_image (riskcl's own decoder: "
                              "16-bit and float greyscale images are scaled by their own range; Pillow's "
                              "convert('RGB') clips them and changes the result)"},
        "preprocessing": f"inside the model: antialiased bilinear resize to {cfg.data.image_size} x "
                         f"{cfg.data.image_size} rounded to whole pixel values, /255, ImageNet mean and std"
                         + ((", the mean p(lesion) over 4 flips" if op.segmentation else
                             ", the mean softmax over 4 flips") if op.tta == "flip" else "")
                         + (", the lesion logit map back onto the input's pixels (nearest neighbour)"
                            if op.segmentation else "")
                         + (f", temperature {op.temperature:.4g}" if op.temperature != 1.0 else ""),
        "task": cfg.task,
        "metadata_input": _metadata_input(folder),
        "outputs": [{"name": k, "shape": doc[k][0], "meaning": doc[k][1]} for k in output_names(op)],
        "classes": list(taxonomy.classes), "levels": list(taxonomy.levels),
        "superclass": ["malignant" if s else "benign" for s in taxonomy.superclass],
        "cost_matrix": folder.cost_matrix().tolist(),
        "operating_point": {**op.to_dict(), **({"note": (
            f"the model's `refer` output applies the pooled threshold {op.threshold:.4f}; for a case whose "
            f"'{op.by}' is known, compare p_malignant with operating_point.groups[<{op.by}>].threshold instead")}
            if op.per_group else {})},
        "decision_curve": None if op.segmentation else _decision_curve_summary(folder),
        "weights_sha256": folder.weights_sha256(),
        "run": {k: metrics["run"].get(k) for k in ("name", "dataset", "model", "loss", "seed", "epochs", "best_epoch",
                                                   "weights", "device", "tta")},
    }


def _write_onnx_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "riskcl", json.dumps(meta, sort_keys=True)
    atomic_write_with(path, lambda tmp: onnx.save(model, tmp))


def export_readme(meta: dict[str, Any]) -> str:
    """The export folder's README: what goes in, what comes out (in the graph's order), the operating point."""
    op, parity = meta["operating_point"], meta["parity"]
    outputs = "\n".join(f"{i}. `{o['name']}` {o['shape']}: {o['meaning']}" for i, o in enumerate(meta["outputs"]))
    files = "\n".join(f"| `{name}` | `{digest}` |" for name, digest in sorted(meta["files_sha256"].items()))
    banner = "" if op["certified"] or op["method"] in ("default", "manual") else (
        "\n> **WARNING: this operating point is NOT CERTIFIED** (exported with --allow-uncertified): no guarantee "
        + ("on the missed share of the lesion.\n" if meta.get("task") == "segmentation"
           else "on the share of malignant cases missed.\n"))
    run = meta["run"]
    mi = meta.get("metadata_input")
    second_input = "" if not mi else (
        f"\n## Second input: `metadata`\n`metadata`: float32 {mi['shape']}, one row per image, the encoded clinical "
        f"metadata {mi['columns']}: {mi['how']} (`{ENCODER_FILE}` here, standard library only; the encoding is "
        f"`metadata_input.encoding` of `riskcl_export.json`).\n")
    dc = meta.get("decision_curve")
    curve = f"Decision curve (test split, {dc['costs']}): {dc['sentence']}\n" if dc else ""
    if "max_abs_diff_p_lesion" in parity:
        parity_text = (f"{parity['runtime']} on {parity['source']} against riskcl predict: max |p(lesion) difference| "
                       f"{parity['max_abs_diff_p_lesion']:.2e} per pixel, {parity['mask_pixel_flips']} mask pixel "
                       f"flips beyond ties ({parity['mask_pixel_ties']} within {parity['tolerance']:g} of the "
                       f"threshold).")
    else:
        parity_text = (f"{parity['runtime']} on {parity['source']}: max |p(malignant) difference| "
                       f"{parity['max_abs_diff_p_malignant']:.2e},\n{parity['decision_flips']} decision flips, "
                       f"{parity['label_flips']} label flips (tolerance {parity['tolerance']:g}).")
    return f"""# Exported riskcl model: {run.get('name')} ({run.get('model')}, loss {run.get('loss')})
{banner}
Research use only; not a medical device. A `clear` result does not rule out disease.

## Input
`images`: uint8 (N, H, W, 3) RGB, any H and W (one size per call), dynamic batch. Decode files with
`decode.py` (numpy and Pillow only: `from decode import decode_image; x = decode_image(path)[None]`), which
decodes exactly as riskcl does. Preprocessing: {meta['preprocessing']}.

{second_input}
## Outputs, in the order the graph returns them
{outputs}

## Operating point
{op['how']}

Threshold {op['threshold']:.6g}, method `{op['method']}`, certified: {op['certified']}, alpha {op['alpha']},
delta {op['delta']}, split {op['split']}.

{curve}
## Parity
{parity_text}

## Files (SHA-256)
| file | sha256 |
|---|---|
{files}

riskcl {meta['riskcl_version']}, torch {meta['torch_version']}; weights SHA-256 `{meta['weights_sha256']}`.
"""


def _build_lesion_export(folder: RunFolder, out: Path, fmt: str, op: OperatingPoint,
                         check_images: Sequence[str] | None, check_limit: int, tolerance: float) -> dict[str, Any]:
    cfg = folder.read_config()
    model = LesionModel(folder.load_model(), op)
    model.eval().requires_grad_(False)
    size = cfg.data.image_size
    example = torch.zeros(2, size + 3, size + 5, 3, dtype=torch.uint8)
    path = out / FORMATS[fmt]
    (_export_onnx if fmt == "onnx" else _export_torchscript)(model, path, example, SEGMENTATION_OUTPUTS)
    images, names, source, _ = _check_images(folder, check_images, check_limit)
    parity = lesion_parity_check(_Runner(fmt, path, SEGMENTATION_OUTPUTS), folder, images, names, op, source,
                                 tolerance)
    parity["tolerance"] = tolerance
    if parity["mask_pixel_flips"] or parity["max_abs_diff_p_lesion"] > tolerance:
        raise ExportParityError(
            f"{folder.path}: the exported model does not segment as riskcl does on {source}: "
            f"{parity['mask_pixel_flips']} mask pixel(s) flipped beyond ties, max |p(lesion) difference| "
            f"{parity['max_abs_diff_p_lesion']:.2e} (tolerance {tolerance:g}); nothing exported")
    return _finish_export(folder, out, fmt, op, path, parity)


def _finish_export(folder: RunFolder, out: Path, fmt: str, op: OperatingPoint, path: Path,
                   parity: dict[str, Any]) -> dict[str, Any]:
    meta = {**describe_run(folder, op), "format": fmt, "file": FORMATS[fmt], "parity": parity}
    if not op.segmentation:  # what riskcl monitor compares the deployment with (the calibration split's figures)
        from .monitor import run_reference

        meta["monitoring_reference"] = run_reference(folder.path).to_dict()
    if fmt == "onnx":
        _write_onnx_metadata(path, meta)
    atomic_write_text(out / DECODER_FILE, Path(rgb_module.__file__).read_text(encoding="utf-8"))
    shipped = [path, out / DECODER_FILE]
    if meta.get("metadata_input"):
        atomic_write_text(out / ENCODER_FILE, Path(encode_metadata_module.__file__).read_text(encoding="utf-8"))
        shipped.append(out / ENCODER_FILE)
    meta["files_sha256"] = {p.name: file_sha256(p) for p in shipped}
    atomic_write_text(out / README_FILE, export_readme(meta))
    atomic_write_json(out / METADATA_FILE, meta)
    return meta


def _build_export(folder: RunFolder, out: Path, fmt: str, op: OperatingPoint, check_images: Sequence[str] | None,
                  check_limit: int, tolerance: float) -> dict[str, Any]:
    if op.segmentation:
        return _build_lesion_export(folder, out, fmt, op, check_images, check_limit, tolerance)
    path = out / FORMATS[fmt]
    if folder.adopted() is not None:  # a model trained elsewhere: its declared preprocessing and its own graph
        from .export_adopted import export_adopted

        export_adopted(folder, op, fmt, path)
    else:
        cfg, taxonomy = folder.read_config(), folder.taxonomy()
        model = TriageModel(folder.load_model(), taxonomy.superclass, op)
        model.eval().requires_grad_(False)  # inference only: no autograd state in the exported graph
        size = cfg.data.image_size
        example = torch.zeros(2, size + 3, size + 5, 3, dtype=torch.uint8)
        encoding = folder.metadata_encoding()
        meta_example = None if encoding is None else torch.from_numpy(np.stack([encoding.missing_row()] * 2))
        (_export_onnx if fmt == "onnx" else _export_torchscript)(model, path, example, OUTPUTS, meta_example)
    images, names, source, rows = _check_images(folder, check_images, check_limit)
    parity = parity_check(_Runner(fmt, path), folder, images, names, op, source, not check_images, rows)
    parity["tolerance"] = tolerance
    if parity["decision_flips"] or parity["label_flips"] or parity["max_abs_diff_p_malignant"] > tolerance:
        raise ExportParityError(
            f"{folder.path}: the exported model does not decide as riskcl does on {source}: "
            f"{parity['decision_flips']} decision flip(s), {parity['label_flips']} label flip(s), max |p(malignant) "
            f"difference| {parity['max_abs_diff_p_malignant']:.2e} (tolerance {tolerance:g}); nothing exported: "
            + "; ".join(f"{c['reference']}: {c['decision_flips']} flips, {c['max_abs_diff_p_malignant']:.2e}"
                        for c in parity["checks"]))
    return _finish_export(folder, out, fmt, op, path, parity)


def export_run(run_dir: str | Path, out_dir: str | Path, fmt: str = "onnx", check_images: Sequence[str] | None = None,
               check_limit: int = 256, calibrated: bool | None = None, tolerance: float = TOLERANCE,
               threshold: float | None = None, allow_uncertified: bool = False) -> dict[str, Any]:
    """Export the run's model; returns the metadata written beside it (parity checks included).

    ``calibrated``: use ``calibration.json`` (default: when it exists); else the 0.5 default rule, said so;
    ``threshold``: a manual threshold. An uncertified calibration is refused unless ``allow_uncertified``.
    Raises :class:`ExportParityError` (and leaves any previous export in place) when the exported model does not
    decide as riskcl does.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Expected --format in {sorted(FORMATS)}, but got {fmt!r}")
    folder = RunFolder(run_dir)
    folder.require_finished(None)  # an unfinished run is never shipped
    op = operating_point(folder, calibrated, threshold, allow_uncertified=allow_uncertified)
    return build_folder_atomically(out_dir, lambda tmp: _build_export(folder, tmp, fmt, op, check_images,
                                                                      check_limit, tolerance), METADATA_FILE)
