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
