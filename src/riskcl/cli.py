"""The ``riskcl`` command line. Each sub-command is one entry of ``COMMANDS``: a parser builder and a runner."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from . import __version__


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def _fmt(v: float, pct: bool = False) -> str:
    if v is None or v != v:
        return "nan"
    return f"{100 * v:.2f}%" if pct else f"{v:.4f}"


def summary_row(name: str, m: dict) -> dict:
    return {"method": name, "CER": _fmt(m["cer"], True), "F1-macro": _fmt(m["f1_macro"]),
            "accuracy": _fmt(m["accuracy"], True), "vis.amb.": m["visual_ambiguity"], "type I": m["type_i"],
            "type II": m["type_ii"]}


SUMMARY_COLUMNS = ["method", "CER", "F1-macro", "accuracy", "vis.amb.", "type I", "type II"]


# --- train -------------------------------------------------------------------------------------------------------
def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=PATH epochs=1 loss.name=rcl")
    p.add_argument("--out", required=True, help="run folder (resumed if unfinished, skipped if finished)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_train(a: argparse.Namespace) -> int:
    from .config import load_config
    from .experiment import run_experiment

    cfg = load_config(a.config, a.overrides)
    metrics = run_experiment(cfg, a.out, progress=not a.quiet)
    if not metrics:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    _print_table([summary_row(cfg.loss.name, metrics)], SUMMARY_COLUMNS)
    print(f"run folder: {a.out}")
    return 0


# --- evaluate ----------------------------------------------------------------------------------------------------
def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data-root", help="evaluate on this data folder instead of the run's own")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", action="store_true", help="print the full report as JSON")


def _run_evaluate(a: argparse.Namespace) -> int:
    import torch

    from .engine import predict_logits, resolve_device
    from .experiment.io import atomic_write_json
    from .experiment.run import build_data
    from .metrics import safety_report
    from .predict import load_run_model

    cfg, model, taxonomy = load_run_model(a.run_dir)
    ds = build_data(cfg, progress=True, root=a.data_root, augment=False).datasets[a.split]
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.optim.eval_batch_size)
    device = resolve_device(cfg.device)
    logits, target = predict_logits(model.to(device), loader, device, amp=cfg.amp, progress=True)
    report = safety_report(torch.softmax(logits, 1), target, taxonomy)
    atomic_write_json(Path(a.run_dir) / f"eval_{a.split}.json", {**report, "data_root": a.data_root or cfg.data.root})
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table([summary_row(cfg.loss.name, report)], SUMMARY_COLUMNS)
    return 0


# --- predict -----------------------------------------------------------------------------------------------------
def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", default="predictions.csv", help="CSV to write")
    p.add_argument("--calibrated", action="store_true",
                   help="use the operating point of `riskcl calibrate` (calibration.json)")


def _run_predict(a: argparse.Namespace) -> int:
    from .predict import predict_files

    rows = predict_files(a.run_dir, a.images, a.out, calibrated=a.calibrated)
    for r in rows:
        print(f"{r['image']}: {r['predicted']} ({r['superclass']}, p_malignant={r['p_malignant']:.3f})")
    print(f"wrote {a.out}")
    return 0


# --- demo --------------------------------------------------------------------------------------------------------
def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the two runs, the table and the plot")
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    p.add_argument("--quiet", action="store_true")


def _run_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(a.out), epochs=a.epochs, progress=not a.quiet)


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "demo": ("train CE and RCL on the embedded demo data and compare their safety", _add_demo, _run_demo),
    "train": ("train one run from a YAML config", _add_train, _run_train),
    "evaluate": ("re-evaluate a finished run (optionally on another data folder)", _add_evaluate, _run_evaluate),
    "predict": ("predict image files with a finished run", _add_predict, _run_predict),
}


def _register_extra() -> None:
    from . import cli_study  # noqa: F401  (registers sweep, report, calibrate, tune-lambda, data)


def build_parser() -> argparse.ArgumentParser:
    _register_extra()
    parser = argparse.ArgumentParser(prog="riskcl", description="Safety-aware medical image classification "
                                     "(Risk-Calibrated Learning).")
    parser.add_argument("--version", action="version", version=f"riskcl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"riskcl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # `python -m riskcl.cli`: use the importable module so that every command registers
    from riskcl.cli import main as _main

    sys.exit(_main())
