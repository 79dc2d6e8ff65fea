"""Commands after training: predict, export, card, explain, serve."""
from __future__ import annotations

import argparse

from .command import Command


def _unfinished_note(run_dir: str, allow: bool) -> None:
    from ..experiment.folder import RunFolder

    note = RunFolder(run_dir).require_finished(allow)
    if note:
        print(note)


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", default="predictions.csv", help="CSV to write")
    p.add_argument("--calibrated", action="store_true",
                   help="decide at the operating point of `riskcl calibrate` (calibration.json)")
    p.add_argument("--metadata", default=None,
                   help="CSV with an `image` column and the group column of a per-group calibration")
    p.add_argument("--argmax", action="store_true", help="decide by the fine-class argmax (the paper's rule)")
    p.add_argument("--allow-unfinished", action="store_true", help="use an unfinished run's best weights so far")


def _predict(a: argparse.Namespace) -> int:
    from ..deploy.predict import predict_files

    _unfinished_note(a.run_dir, a.allow_unfinished)
    rows = predict_files(a.run_dir, a.images, a.out, calibrated=a.calibrated, metadata=a.metadata,
                         rule="argmax" if a.argmax else "superclass", allow_unfinished=a.allow_unfinished)
    for r in rows:
        print(f"{r['image']}: {r['decision'].upper()} {r['predicted']} ({r['superclass']}, p_malignant="
              f"{r['p_malignant']:.3f}, threshold {r['threshold']:.3f})")
    print(f"wrote {a.out}")
    return 0


PREDICT = Command("predict", "predict image files with a finished run (decision at its operating point)",
                  _add_predict, _predict)


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", required=True, help="folder for the model and riskcl_export.json")
    p.add_argument("--check-images", nargs="*", default=None, help="images for the parity check (default: the "
                   "run's test split)")
    p.add_argument("--check-limit", type=int, default=256, help="test images used by the parity check")
    p.add_argument("--uncalibrated", action="store_true", help="ignore calibration.json: the 0.5 default rule")


def _export(a: argparse.Namespace) -> int:
    from ..deploy.export import export_run

    meta = export_run(a.run_dir, a.out, a.format, a.check_images, a.check_limit,
                      calibrated=False if a.uncalibrated else None)
    p, op = meta["parity"], meta["operating_point"]
    print(f"exported {a.out}/{meta['file']} ({a.format}): input uint8 (N, H, W, 3) RGB, outputs probabilities, "
          f"p_malignant, refer, label\n  operating point: threshold {op['threshold']:g} ({op['how']})\n"
          f"  parity on {p['source']}, {p['runtime']}: max |p(malignant) difference| "
          f"{p['max_abs_diff_p_malignant']:.2e}, {p['decision_flips']} decision flips, {p['label_flips']} label "
          f"flips\nwrote {a.out}/riskcl_export.json")
    return 0


EXPORT = Command("export", "export a run as ONNX / TorchScript with its preprocessing and operating point",
                 _add_export, _export)


def _add_card(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="MODEL_CARD.md path (default: in the run folder)")
    p.add_argument("--export", default=None, help="an export folder to describe (default: RUN/export if present)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")


def _card(a: argparse.Namespace) -> int:
    from ..deploy.card import CARD_HTML, build_card

    path = build_card(a.run_dir, a.out, a.bootstrap, a.export)
    print(f"wrote {path} and {path.parent / CARD_HTML}")
    return 0


CARD = Command("card", "write the run's model card (MODEL_CARD.md and model_card.html)", _add_card, _card)


def _add_explain(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("images", nargs="*", help="image files (or --type-ii for the test split's fatal errors)")
    p.add_argument("--out", default=None, help="folder for the overlays (required with IMAGES)")
    p.add_argument("--method", default="gradcam", help="gradcam, gradcam++, xgradcam, eigencam or layercam")
    p.add_argument("--type-ii", action="store_true", help="the gallery of the test split's Type II errors, written "
                   "to RUN/gallery/ (read by `riskcl report` and `riskcl card`)")
    p.add_argument("--cap", type=int, default=16, help="at most this many Type II cases in the gallery")


def _explain(a: argparse.Namespace) -> int:
    from ..deploy.explain import explain_files, explain_type_ii

    if a.type_ii:
        g = explain_type_ii(a.run_dir, a.cap, a.method)
        print(f"{g['shown']} of {g['type_ii_total']} Type II error(s) at threshold {g['threshold']:.4f}: "
              f"{a.run_dir}/gallery/")
    if a.images:
        if not a.out:
            raise ValueError("--out is required with IMAGES (the folder for the overlays)")
        for r in explain_files(a.run_dir, a.images, a.out, a.method):
            print(f"{r['image']}: {r['label']} (p_malignant={r['p_malignant']:.3f}) -> {r['panel']}")
    if not a.images and not a.type_ii:
        raise ValueError("nothing to explain: give IMAGES (with --out) or --type-ii")
    return 0


EXPLAIN = Command("explain", "saliency overlays (Grad-CAM) for image files or the test split's Type II errors",
                  _add_explain, _explain)


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="larger uploads get 413")
    p.add_argument("--method", default="gradcam", help="saliency method of /explain")


def _serve(a: argparse.Namespace) -> int:
    from ..deploy.serve import serve

    serve(a.run_dir, a.host, a.port, a.max_upload_mb, a.method)
    return 0


SERVE = Command("serve", "a triage web page and JSON API for a run (FastAPI + uvicorn)", _add_serve, _serve)
