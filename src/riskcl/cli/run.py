"""Commands that train and re-evaluate: demo, train, evaluate."""
from __future__ import annotations

import argparse
import json

from ..defaults import N_BOOT
from .command import Command
from .console import SUMMARY_COLUMNS, degenerate_warning, print_table, summary_columns, summary_row


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="folder for the two runs, the table and the plot (default: "
                   "runs/demo, or runs/demo-segmentation)")
    p.add_argument("--task", default="classification", choices=["classification", "segmentation"],
                   help="segmentation: BCE + Dice against the risk-calibrated pixel loss on generated lesions")
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0); rerun with others to see "
                   "how much the table moves")
    p.add_argument("--quiet", action="store_true")


def _demo(a: argparse.Namespace) -> int:
    from pathlib import Path

    from ..experiment import run_demo
    from ..report.plots import plot_error_taxonomy

    out = a.out or ("runs/demo" if a.task == "classification" else "runs/demo-segmentation")
    runs = run_demo(out, epochs=a.epochs, progress=not a.quiet, seed=a.seed, task=a.task)
    if a.task == "segmentation":
        print("\nDemo test split (generated lesions with their masks; a pixel is lesion at p(lesion) >= 0.5):")
        print_table([summary_row(name, m, "segmentation") for name, m in runs.items()],
                    summary_columns("segmentation"))
        print(f"\nnext: riskcl calibrate {out}/rcl-pixel --alpha 0.1 --method crc (a guarantee on the missed share of "
              f"the lesion), then predict / export / card / serve the run folder")
        return 0
    print("\nDemo test split (1000 generated lesions; malignant = melanoma, carcinoma; decision: p(malignant) "
          ">= 0.5):")
    print_table([summary_row(name, m) for name, m in runs.items()], SUMMARY_COLUMNS)
    ce, rcl = runs["ce"], runs["rcl-proposed"]
    verdict = "fewer" if rcl["type_ii"] < ce["type_ii"] else "NOT fewer"
    print(f"\nrcl-proposed made {verdict} Type II (fatal) errors than CE: {rcl['type_ii']} vs {ce['type_ii']} "
          f"(Type I: {rcl['type_i']} vs {ce['type_i']}).")
    print(f"plot: {plot_error_taxonomy(runs, Path(out) / 'demo_errors.png')}")
    return 0


DEMO = Command("demo", "train CE and RCL on the embedded demo data and compare their safety", _add_demo, _demo)


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=PATH epochs=1 cost.lambda2=40")
    p.add_argument("--out", required=True, help="run folder (resumed if unfinished, skipped if finished)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _train(a: argparse.Namespace) -> int:
    from ..config import load_config
    from ..experiment import run_experiment

    cfg = load_config(a.config, a.overrides)
    metrics = run_experiment(cfg, a.out, progress=not a.quiet)
    if not metrics:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    if cfg.task == "segmentation":
        print("test split, a pixel is lesion at p(lesion) >= 0.5:")
    else:
        print(f"test split, decision rule '{metrics.get('decision_rule', cfg.decision)}' at p(malignant) 0.5:")
    print_table([summary_row(cfg.loss.name, metrics, cfg.task)], summary_columns(cfg.task))
    warning = degenerate_warning(metrics)
    if warning:
        print(warning)
    print(f"run folder: {a.out}")
    return 0


TRAIN = Command("train", "train one run from a YAML config", _add_train, _train)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data-root", help="evaluate another copy of the data: its official split of that name, "
                   "else all of it")
    p.add_argument("--split", default="test", choices=["train", "val", "calib", "test"])
    p.add_argument("--by", action="append", default=[], metavar="COLUMN",
                   help="per-group safety from the saved predictions (repeatable), e.g. --by sex --by localization")
    p.add_argument("--decision-curve", action="store_true", help="net benefit vs refer-all / refer-none over the "
                   "threshold probabilities of cost.uncertain, from the saved predictions (JSON and PNG in the run)")
    p.add_argument("--pt", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="the decision curve's range of threshold probabilities (default: from cost.uncertain)")
    p.add_argument("--bootstrap", type=int, default=N_BOOT, help="bootstrap resamples for the subgroup CIs and "
                   "the decision curve's band")
    p.add_argument("--allow-unfinished", action="store_true", help="use an unfinished run's best weights so far")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=None, help="report at this p(malignant) threshold instead of "
                   "the run's operating point")
    g.add_argument("--default-rule", action="store_true", help="report at the 0.5 default rule, ignoring "
                   "calibration.json")


def _evaluate(a: argparse.Namespace) -> int:
    from ..experiment import evaluate_run

    if a.by:
        return _subgroups(a)
    if a.decision_curve:
        return _decision_curve(a)
    report = evaluate_run(a.run_dir, a.split, a.data_root, a.allow_unfinished, threshold=a.threshold,
                          default_rule=a.default_rule)
    if report["note"]:
        print(report["note"])
    op = report["operating_point"]
    print(f"evaluated {report['source']}\n  operating point: {op['how']}")
    if a.json:
        print(json.dumps(report, indent=2, default=str))
    elif "by_rule" not in report:  # segmentation
        print_table([summary_row("operating point", op, "segmentation"),
                     summary_row("p(lesion) >= 0.5", report, "segmentation")], summary_columns("segmentation"))
    else:
        print_table([summary_row("operating point", op), summary_row(f"{report['decision_rule']} at 0.5", report),
                     summary_row("argmax", report["by_rule"]["argmax"])], SUMMARY_COLUMNS)
    return 0


def _decision_curve(a: argparse.Namespace) -> int:
    from .._checks import check_int
    from ..experiment.decision_curves import run_decision_curve
    from ..experiment.folder import RunFolder
    from ..report.plots import plot_decision_curves

    check_int("--bootstrap", a.bootstrap, minimum=1)
    if a.data_root or a.threshold is not None or a.default_rule:
        raise ValueError("--decision-curve reads the run's saved predictions at its operating point; --data-root, "
                         "--threshold and --default-rule do not apply")
    if a.pt is not None and not 0 < a.pt[0] < a.pt[1] < 1:
        raise ValueError(f"Expected --pt LOW HIGH with 0 < LOW < HIGH < 1, but got {a.pt}")
    curve = run_decision_curve(a.run_dir, a.split, tuple(a.pt) if a.pt else None, n_boot=a.bootstrap)
    folder = RunFolder(a.run_dir)
    png = plot_decision_curves({curve["run"]: curve}, folder.decision_curve_file(a.split, "png"),
                               f"{curve['run']}: decision curve ({a.split})")
    c = curve["cost_figures"]
    if a.json:
        print(json.dumps(curve, indent=2, default=str))
    print(f"{curve['sentence']}\n  pt range {curve['pt'][0]:.3g}-{curve['pt'][-1]:.3g} ({curve['pt_source']}); "
          f"operating point: {curve['operating_point']}\n  expected cost per case at it {c['expected_cost']:.4g} "
          f"(90% of cost draws {c['cost_p05']:.4g}-{c['cost_p95']:.4g}; {c['costs']}); H-measure "
          f"{c['h_measure']:.4f}\nwrote {folder.decision_curve_file(a.split)} and {png}")
    return 0


def _subgroups(a: argparse.Namespace) -> int:
    from .._checks import check_int
    from ..experiment.subgroups import evaluate_subgroups, format_subgroups

    check_int("--bootstrap", a.bootstrap, minimum=1)
    if a.data_root:
        raise ValueError("--by reads the run's saved predictions; it does not combine with --data-root")
    if a.threshold is not None or a.default_rule:
        raise ValueError("--by decides at the run's operating point; --threshold / --default-rule do not apply")
    for column in a.by:
        result = evaluate_subgroups(a.run_dir, column, a.split, n_boot=a.bootstrap)
        print(json.dumps(result, indent=2, default=str) if a.json else format_subgroups(result))
    return 0


EVALUATE = Command("evaluate", "re-evaluate a finished run (its own splits, another data folder, or per group)",
                   _add_evaluate, _evaluate)
