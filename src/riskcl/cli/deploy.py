"""Commands after training: predict, export, card, explain, serve."""
from __future__ import annotations

import argparse

from ..defaults import BORDERLINE, MIN_SENSITIVITY, MIN_SPECIFICITY, N_BOOT
from .command import Command


def _unfinished_note(run_dir: str, allow: bool) -> None:
    from ..experiment.folder import RunFolder

    note = RunFolder(run_dir).require_finished(allow)
    if note:
        print(note)


def _add_point(p: argparse.ArgumentParser, manual: bool = True) -> None:
    """The operating-point options every command that decides shares."""
    if manual:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--threshold", type=float, default=None,
                       help="decide at this p(malignant) threshold instead of the run's operating point (no guarantee)")
        g.add_argument("--default-rule", action="store_true",
                       help="ignore calibration.json: the 0.5 default rule (no guarantee)")
        g.add_argument("--calibrated", action="store_true",
                       help="require calibration.json (the default uses it whenever it exists)")
    p.add_argument("--allow-uncertified", action="store_true",
                   help="use a calibration that certified no threshold (said so on every output)")


def _calibrated(a: argparse.Namespace) -> bool | None:
    return False if a.default_rule else True if a.calibrated else None


def _point_line(op) -> str:
    return f"operating point: {op.describe()}"


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", default=None, help="CSV to write (default: the CSV goes to standard output); an existing "
                   "file is replaced only when it is a riskcl prediction CSV, unless --force")
    p.add_argument("--force", action="store_true", help="overwrite --out even if it is not a prediction CSV")
    _add_point(p)
    p.add_argument("--metadata", default=None,
                   help="CSV with an `image` column and the group column of a per-group calibration")
    p.add_argument("--argmax", action="store_true", help="decide by the fine-class argmax (the paper's rule)")
    p.add_argument("--allow-unfinished", action="store_true", help="use an unfinished run's best weights so far")


def _predict(a: argparse.Namespace) -> int:
    import sys

    from ..deploy.predict import predict_files, write_rows_csv

    _unfinished_note(a.run_dir, a.allow_unfinished)
    rows, op = predict_files(a.run_dir, a.images, a.out, calibrated=_calibrated(a), threshold=a.threshold,
                             metadata=a.metadata, rule="argmax" if a.argmax else "superclass",
                             allow_unfinished=a.allow_unfinished, allow_uncertified=a.allow_uncertified,
                             force=a.force)
    log = sys.stderr if a.out is None else sys.stdout  # stdout carries the CSV when no --out is given
    print(_point_line(op), file=log)
    for r in rows:
        print(f"{r['image']}: {r['decision'].upper()} {r['predicted']} ({r['superclass']}, p_malignant="
              f"{r['p_malignant']:.3f}, threshold {r['threshold']:.3f})", file=log)
    if a.out is None:
        write_rows_csv(rows, None)
    else:
        print(f"wrote {a.out}")
    return 0


PREDICT = Command("predict", "predict image files with a finished run (decision at its operating point)",
                  _add_predict, _predict)


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", required=True, help="folder for the model, riskcl_export.json, decode.py and README.md "
                   "(built aside and swapped in whole)")
    p.add_argument("--check-images", nargs="*", default=None, help="images for the parity check (default: the "
                   "run's test split)")
    p.add_argument("--check-limit", type=int, default=256, help="test images used by the parity check")
    _add_point(p)


def _export(a: argparse.Namespace) -> int:
    from .._checks import check_int
    from ..deploy.export import export_run

    check_int("--check-limit", a.check_limit, minimum=1)
    meta = export_run(a.run_dir, a.out, a.format, a.check_images, a.check_limit,
                      calibrated=_calibrated(a), threshold=a.threshold,
                      allow_uncertified=a.allow_uncertified)
    p, op = meta["parity"], meta["operating_point"]
    print(f"exported {a.out}/{meta['file']} ({a.format}): input uint8 (N, H, W, 3) RGB, outputs "
          f"{', '.join(o['name'] for o in meta['outputs'])}\n  operating point: {op['how']}\n"
          + "".join(f"  parity against {c['reference']}, {p['runtime']}: max |p(malignant) difference| "
                    f"{c['max_abs_diff_p_malignant']:.2e}, {c['decision_flips']} decision flips, {c['label_flips']} "
                    f"label flips\n" for c in p["checks"])
          + f"wrote {a.out}/riskcl_export.json, README.md and decode.py")
    return 0


EXPORT = Command("export", "export a run as ONNX / TorchScript with its preprocessing and operating point",
                 _add_export, _export)


def _add_card(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="MODEL_CARD.md path (default: in the run folder)")
    p.add_argument("--export", default=None, help="an export folder to describe (default: RUN/export if present)")
    p.add_argument("--bootstrap", type=int, default=N_BOOT, help="bootstrap resamples for the CIs")
    p.add_argument("--min-sensitivity", type=float, default=MIN_SENSITIVITY,
                   help="flag the model not fit for use under this test sensitivity at its operating point")
    p.add_argument("--min-specificity", type=float, default=MIN_SPECIFICITY,
                   help="flag the model not fit for use under this test specificity at its operating point")
    _add_point(p, manual=False)


def _card(a: argparse.Namespace) -> int:
    from ..deploy.card import CARD_HTML, build_card

    path = build_card(a.run_dir, a.out, a.bootstrap, a.export, allow_uncertified=a.allow_uncertified,
                      min_sensitivity=a.min_sensitivity, min_specificity=a.min_specificity)
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
    from ..deploy.explain import check_method, explain_files, explain_type_ii

    check_method(a.method)

    if a.type_ii:
        g = explain_type_ii(a.run_dir, a.cap, a.method)
        print(f"{g['shown']} of {g['type_ii_total']} Type II error(s) at threshold {g['threshold']:.4f}: "
              f"{a.run_dir}/gallery/" + (f" ({g['blank_maps']} blank map(s))" if g["blank_maps"] else ""))
    if a.images:
        if not a.out:
            raise ValueError("--out is required with IMAGES (the folder for the overlays)")
        for r in explain_files(a.run_dir, a.images, a.out, a.method):
            print(f"{r['image']}: {r['label']} (p_malignant={r['p_malignant']:.3f}) -> {r['panel']}"
                  + (f"  [{r['note']}]" if r["note"] else ""))
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
    p.add_argument("--borderline", type=float, default=BORDERLINE,
                   help="|p(malignant) - threshold| at or under which the page shows a borderline result")
    _add_point(p, manual=False)


def _serve(a: argparse.Namespace) -> int:
    from ..deploy.serve import serve

    serve(a.run_dir, a.host, a.port, a.max_upload_mb, a.method, a.allow_uncertified, a.borderline)
    return 0


SERVE = Command("serve", "a triage web page and JSON API for a run (FastAPI + uvicorn)", _add_serve, _serve)
