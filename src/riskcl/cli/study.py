"""Commands for studies and operating points: sweep, report, calibrate, tune-lambda, data."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..defaults import DELTA, FRONTIER_TARGETS, N_BOOT, OBJECTIVES
from .command import Command
from .console import print_table, summary_columns, summary_row


def _add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="sweep YAML (base, overrides, grid)")
    p.add_argument("--out", required=True, help="folder that holds one sub-folder per run")
    p.add_argument("--shard", default=None, help="I/N: run only the I-th of N shares of the grid (0 <= I < N)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides for every run (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list this shard's runs and exit")
    p.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("launching through submitit (SLURM, or several runs at once here)")
    g.add_argument("--launcher", choices=["local", "slurm"], default=None,
                   help="local (default): here, --jobs at a time; slurm: submit one job array and exit")
    g.add_argument("--jobs", type=int, default=None, help="--launcher local: runs at once (the cores are shared)")
    g.add_argument("--status", action="store_true", help="print each run's state, epoch, job id and log, and exit")
    g.add_argument("--wait", action="store_true", help="block until no run is pending or running")
    g.add_argument("--only", default=None, metavar="RUN", help="run this one run of the sweep (what a task runs)")
    g.add_argument("--partition", default=None)
    g.add_argument("--gpus-per-task", type=int, default=None, help="> 1: each run under torchrun inside its task")
    g.add_argument("--cpus-per-task", type=int, default=None)
    g.add_argument("--mem", type=float, default=None, metavar="GB")
    g.add_argument("--time", type=int, default=None, metavar="MINUTES", help="time limit of each task")
    g.add_argument("--array-parallelism", type=int, default=None, help="tasks of the array running at once")
    g.add_argument("--slurm", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm account=lab qos=high")


def _launch_options(a: argparse.Namespace):
    from ..experiment.launch import LaunchOptions
    from ..experiment.sweep import sweep_launcher

    section = sweep_launcher(a.config)
    for key, value in (("partition", a.partition), ("gpus_per_task", a.gpus_per_task),
                       ("cpus_per_task", a.cpus_per_task), ("mem_gb", a.mem), ("time_min", a.time),
                       ("array_parallelism", a.array_parallelism), ("jobs", a.jobs)):
        if value is not None:
            section[key] = value
    for item in a.slurm:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm {item!r}: expected KEY=VALUE (an sbatch option without its dashes)")
        section.setdefault("slurm", {})[key] = value
    return LaunchOptions.from_mapping(section)


def _wait(a: argparse.Namespace, extra) -> list:
    import time

    from tqdm.auto import tqdm

    from ..experiment.launch import run_states

    rows = run_states(a.config, a.out, extra)
    bar = tqdm(total=len(rows), desc="runs done", disable=a.quiet)
    while True:
        rows = run_states(a.config, a.out, extra)
        bar.n = sum(r["state"] == "done" for r in rows)
        bar.refresh()
        if not any(r["state"] in ("pending", "running") for r in rows):
            bar.close()
            return rows
        time.sleep(5)


def _launched(a: argparse.Namespace, extra) -> int:
    from ..experiment.launch import check_sweep_folder, format_states, launch, run_states

    if a.status or (a.wait and a.launcher is None):
        check_sweep_folder(a.config, a.out, extra)
    if a.status:
        print(format_states(run_states(a.config, a.out, extra)))
        return 0
    if a.launcher is not None and not (a.launcher == "local" and (a.jobs or 1) == 1):
        rows = launch(a.config, a.out, a.launcher, _launch_options(a), extra)
        if not rows:
            print("nothing to submit: every run is done, queued or running (see --status)")
        elif a.launcher == "slurm":
            print(f"submitted {len(rows)} run(s) as SLURM job array {rows[0]['job_id'].split('_')[0]} "
                  f"(logs in {a.out}/.submitit/); `riskcl sweep {a.config} --out {a.out} --status` shows them")
        if a.launcher == "local" or not a.wait:
            rows = run_states(a.config, a.out, extra)
            failed = [r for r in rows if r["state"] == "failed"]
            return 1 if failed and a.launcher == "local" else 0
    rows = _wait(a, extra)
    print(format_states(rows))
    return 1 if any(r["state"] == "failed" for r in rows) else 0


def _sweep(a: argparse.Namespace) -> int:
    from .._checks import check_int
    from ..config import parse_overrides
    from ..experiment.sweep import load_sweep, parse_shard, run_sweep, shard_runs

    if a.jobs is not None:
        check_int("--jobs", a.jobs, minimum=1)
    extra = parse_overrides(a.set)
    if a.only:
        from ..experiment import run_experiment

        runs = {r.run_id: r for r in load_sweep(a.config, extra)}
        if a.only not in runs:
            raise ValueError(f"--only {a.only!r}: no such run in {a.config} (it has {sorted(runs)[:5]} ...)")
        run_experiment(runs[a.only].config, f"{a.out}/{a.only}", progress=not a.quiet)
        return 0
    if a.status or a.wait or (a.launcher is not None and not (a.launcher == "local" and (a.jobs or 1) == 1)):
        return _launched(a, extra)
    if a.dry_run:
        for r in shard_runs(load_sweep(a.config, extra), parse_shard(a.shard)):
            print(r.run_id)
        return 0
    summary = run_sweep(a.config, a.out, a.shard, extra, progress=not a.quiet)
    failed = [k for k, v in summary.items() if v.startswith("failed")]
    locked = [k for k, v in summary.items() if v.startswith("locked")]
    print(f"{len(summary)} runs: {len(summary) - len(failed) - len(locked)} ok, {len(failed)} failed"
          + (f", {len(locked)} locked by another process (not run here)" if locked else ""))
    return 1 if failed else 0


SWEEP = Command("sweep", "run (or resume) every unfinished run of a YAML grid", _add_sweep, _sweep)


def _add_data(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = sub.add_parser("check", help="validate a data folder: counts, groups, duplicates, bad and dropped files")
    c.add_argument("name", help="dataset registry name (brain_mri, isic2018, breakhis, sicapv2, medmnist, ...)")
    c.add_argument("--root", default=None, help="the data folder")
    c.add_argument("--option", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="adapter options (repeatable)")
    c.add_argument("--image-size", type=int, default=32, metavar="PX",
                   help="decode every image at this size into the cache (default 32); pass your runs' "
                        "data.image_size and the check fills the cache they will read")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser("list", help="list the registered datasets and their options")
    d = sub.add_parser("demo", help="write generated demo lesions as image files in class folders (a folder the "
                       "`folder` adapter reads with taxonomy: demo)")
    d.add_argument("--out", required=True, help="the folder (one subfolder per class)")
    d.add_argument("--n", type=int, default=400, help="images (default %(default)s)")
    d.add_argument("--size", type=int, default=32, help="pixels per side (default %(default)s)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--format", choices=["png", "dcm"], default="png", help="dcm: DICOM Secondary Capture objects")


def _data(a: argparse.Namespace) -> int:
    from .._checks import check_int
    from ..config import parse_overrides
    from ..data.check import check_dataset, format_report
    from ..data.registry import dataset_options, list_datasets

    if a.data_command == "list":
        for name in list_datasets():
            print(f"{name}: options {dataset_options(name)}")
        return 0
    if a.data_command == "demo":
        from ..data.demo import write_demo_files

        written = write_demo_files(a.out, a.n, a.seed, a.size, a.format)
        counts = {}
        for p in written:
            counts[p.parent.name] = counts.get(p.parent.name, 0) + 1
        print(f"wrote {len(written)} {a.format} image(s) to {a.out}: "
              + ", ".join(f"{c} {k}" for c, k in sorted(counts.items())))
        return 0
    check_int("--image-size", a.image_size, minimum=8)
    report = check_dataset(a.name, a.root, image_size=a.image_size, **parse_overrides(a.option))
    print(json.dumps(report, indent=2) if a.json else format_report(report))
    return 0 if report["usable"] else 1


DATA = Command("data", "check a data folder (`riskcl data check NAME --root PATH`)", _add_data, _data)


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs_dir", help="folder holding run folders (a sweep's --out)")
    p.add_argument("--out", default=None, help="report folder (default: RUNS_DIR/report)")
    p.add_argument("--baseline", default="focal", help="baseline of the Table III comparison")
    p.add_argument("--method", default="rcl-proposed", help="method of the Table III comparison")
    p.add_argument("--reference", default="ce", help="the method (as the report names it: ce, ce+tta, ...) the others "
                   "are compared with: its post-hoc threshold, and the fair frontier's specificity differences")
    p.add_argument("--bootstrap", type=int, default=N_BOOT, help="bootstrap resamples for the CIs")
    p.add_argument("--targets", type=float, nargs="+", default=list(FRONTIER_TARGETS),
                   help="target sensitivities of the fair comparison (thresholds chosen on held-out data)")
    p.add_argument("--by", action="append", default=[], metavar="COLUMN", help="subgroup tables per method")


def _report(a: argparse.Namespace) -> int:
    from .._checks import check_int, check_number
    from ..report.build import build_report

    check_int("--bootstrap", a.bootstrap, minimum=1)
    for t in a.targets:
        check_number("--targets", t, 0, 1, min_inclusive=False, max_inclusive=False)
    if a.out and Path(a.out).is_file():
        raise NotADirectoryError(f"--out {a.out} is a file; expected a folder for the report")

    out = Path(a.out) if a.out else Path(a.runs_dir) / "report"
    path = build_report(a.runs_dir, out, a.baseline, a.method, a.reference, a.bootstrap, targets=a.targets,
                        by=a.by)
    print(f"wrote {path} and {out / 'report.html'}")
    return 0


REPORT = Command("report", "tables, the fair frontier, Pareto and CER plots from finished run folders",
                 _add_report, _report)


def _add_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--alpha", type=float, required=True, help="target bound on the Critical Error Rate")
    p.add_argument("--delta", type=float, default=DELTA, help="failure probability of the ltt guarantee")
    p.add_argument("--method", choices=["ltt", "crc"], default="ltt",
                   help="ltt: CER <= alpha with prob. >= 1 - delta; crc: expected CER <= alpha")
    p.add_argument("--split", choices=["calib", "val"], default="calib",
                   help="predictions that choose the threshold (default: the calibration split)")
    p.add_argument("--allow-selection-split", action="store_true",
                   help="allow --split val although validation chose the best epoch (unsafe)")
    p.add_argument("--temperature", action="store_true", help="fit temperature scaling on validation first")
    p.add_argument("--by", default=None, metavar="COLUMN", help="one threshold per group of this metadata column")
    p.add_argument("--fallback", choices=["pooled", "conservative"], default="pooled",
                   help="threshold of a group too small to certify: the pooled one or the most conservative")
    p.add_argument("--allow-uncertified", action="store_true",
                   help="write calibration.json even when no threshold is certified (exit 0; marked uncertified)")
    p.add_argument("--objective", choices=OBJECTIVES, default="guarantee",
                   help="among the certified thresholds: the largest (guarantee), or the lowest expected cost / "
                   "worst-case regret under the run's cost.uncertain")
    p.add_argument("--from-log", default=None, metavar="LOG", help="recalibrate on the newest confirmed cases of a "
                   "deployment's decision log (with --outcomes); the previous calibration.json is kept")
    p.add_argument("--outcomes", default=None, metavar="CSV", help="with --from-log: the confirmed outcomes")
    p.add_argument("--window", type=int, default=None, metavar="N", help="with --from-log: the newest N confirmed "
                   "cases (default: all)")


def _calibrate(a: argparse.Namespace) -> int:
    from ..experiment.calibrate import SELECTION_WARNING, calibrate_run

    if a.from_log or a.outcomes:
        from ..deploy.monitor import recalibrate_from_log

        if not (a.from_log and a.outcomes):
            raise ValueError("--from-log and --outcomes go together (the deployment's log and its confirmed outcomes)")
        r = recalibrate_from_log(a.run_dir, a.from_log, a.outcomes, a.alpha, a.delta, a.method, a.window,
                                 a.allow_uncertified)
        w = r["window"]
        print(f"threshold p(malignant) >= {r['threshold']:.4f} ({r['method']} on {w['n']} confirmed cases of the "
              f"log, seq {w['first_seq']}-{w['last_seq']}, {w['n_malignant']} malignant)\n  guarantee: "
              f"{r['guarantee']}\n  the previous calibration is kept as {w['previous']}\nwrote "
              f"{a.run_dir}/calibration.json")
        return 0
    if a.split == "val":
        print(f"WARNING: calibrating on the validation split: {SELECTION_WARNING}")
    if a.by:
        from ..experiment.subgroups import calibrate_by_group, format_group_calibration

        if a.objective != "guarantee":
            raise ValueError("--objective chooses among the certified thresholds of a pooled calibration; it does "
                             "not combine with --by")

        r = calibrate_by_group(a.run_dir, a.by, a.alpha, a.delta, a.method, a.split, a.allow_selection_split,
                               a.fallback, a.allow_uncertified)
        print(format_group_calibration(r))
        return 0
    r = calibrate_run(a.run_dir, a.alpha, a.delta, a.method, a.temperature, a.split, a.allow_selection_split,
                      a.allow_uncertified, a.objective)
    t, d = r["test"], r["test_default_rule"]
    if r.get("task") == "segmentation":
        return _print_pixel_calibration(a.run_dir, r)
    if not r["certified"]:
        print("WARNING: NOT CERTIFIED: no threshold could be certified; written with --allow-uncertified, so export, "
              "serve and card will refuse it unless told --allow-uncertified too")
    print(f"threshold p(malignant) >= {r['threshold']:.4f} ({r['method']} on the {r['calibration_split']} split, "
          f"{r['n_calibration']} malignant {r['unit']}s)\n  guarantee: {r['guarantee']}\n  test: CER "
          f"{100 * t['cer']:.2f}%  sensitivity {100 * t['sensitivity']:.2f}%  specificity "
          f"{100 * t['specificity']:.2f}%  F1-macro {t['f1_macro']:.4f}\n  (threshold 0.5: CER {100 * d['cer']:.2f}%,"
          f" specificity {100 * d['specificity']:.2f}%)\n  shift check: {r['shift_check']['note']}\n"
          + (f"  temperature {r['temperature']:.4g} (fitted on validation)\n" if r["temperature"] != 1.0 else "")
          + (f"  objective {o['objective']} under {o['costs']}: chose {o['threshold']:.4f} of the certified "
             f"thresholds up to {o['certified_threshold']:.4f} (expected cost {o['expected_cost']:.4g}, worst-case "
             f"regret {o['max_regret']:.4g} per case on the {r['calibration_split']} split)\n"
             if (o := r["objective"])["objective"] != "guarantee" and r["certified"] else
             f"  objective {o['objective']}: not applied, since no threshold was certified to choose among (the "
             f"threshold is the uncertified {r['threshold']:.4f})\n" if o["objective"] != "guarantee" else "")
          + f"wrote {a.run_dir}/calibration.json: predict, evaluate, export, card and serve now decide at it")
    return 0


def _plural(unit: str) -> str:
    """What a pixel calibration counts, in words: ``lesion`` -> lesions (by lesion id, their images averaged)."""
    return {"lesion": "lesions (by lesion id, each lesion's images averaged)", "image": "images",
            "sample": "images", "group": "groups"}.get(unit, f"{unit}s")


def _print_pixel_calibration(run_dir: str, r: dict) -> int:
    t, d = r["test"], r["test_default_rule"]
    if not r["certified"]:
        print("WARNING: NOT CERTIFIED: no pixel threshold could be certified; written with --allow-uncertified")
    print(f"pixel threshold p(lesion) >= {r['threshold']:.4f} ({r['method']} on the {r['calibration_split']} split, "
          f"{r['n_calibration']} {_plural(r['unit'])} whose masks hold lesion pixels)\n  guarantee: "
          f"{r['guarantee']}\n  test: missed share of the lesion {100 * t['fnr']:.2f}%  images missing > half "
          f"{100 * t['missed_half']:.2f}%  Dice "
          f"{t['dice']:.4f}  over-segmentation {100 * t['over_rate']:.2f}%\n  (threshold 0.5: missed "
          f"{100 * d['fnr']:.2f}%, Dice {d['dice']:.4f})\n  shift check: {r['shift_check']['note']}\n"
          f"wrote {run_dir}/calibration.json: predict, evaluate, export, card and serve now decide at it")
    return 0


CALIBRATE = Command("calibrate", "choose a decision threshold that bounds the fatal error rate", _add_calibrate,
                    _calibrate)


def _add_tune(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (its loss is replaced by rcl)")
    p.add_argument("overrides", nargs="*", help="dotted overrides")
    p.add_argument("--lambda2", type=float, required=True, help="Type II penalty, fixed from clinical severity")
    p.add_argument("--lambda1", type=float, nargs="+", default=[1, 2, 5, 10], help="grid of Type I penalties")
    p.add_argument("--max-fpr", type=float, required=True, help="bound on the validation false-positive rate")
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")


def _tune(a: argparse.Namespace) -> int:
    from ..config import load_config
    from ..experiment.tune import tune_lambda1

    r = tune_lambda1(load_config(a.config, a.overrides), a.lambda2, a.lambda1, a.max_fpr, a.out, not a.quiet)
    for row in r["grid"]:
        print(f"lambda1 {row['lambda1']:6g}  val CER {100 * row['val_cer']:6.2f}%  val FPR {100 * row['val_fpr']:6.2f}%"
              f"  test CER {100 * row['test_cer']:6.2f}%")
    print(f"best: {r['best']}" if r["best"] else r["note"])
    return 0 if r["best"] else 1


TUNE = Command("tune-lambda", "the paper's lambda1 search under a false-positive bound", _add_tune, _tune)


def _add_ensemble(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished runs of one task on the same data and splits")
    p.add_argument("--out", required=True, help="the ensemble's run folder")


def _ensemble(a: argparse.Namespace) -> int:
    from ..experiment.ensemble import make_ensemble
    from ..report.collect import method_label

    m = make_ensemble(a.runs, a.out)
    seg = m["run"].get("task") == "segmentation"
    print(f"ensemble of {len(a.runs)} runs (seeds {m['run']['seeds']}) -> {a.out}")
    print_table([summary_row(method_label(m["run"]), m, "segmentation" if seg else "classification")],
                summary_columns("segmentation" if seg else "classification"))
    print(f"next: riskcl calibrate {a.out} --alpha A; evaluate, report, export, card and serve work on it as on any "
          f"run")
    return 0


ENSEMBLE = Command("ensemble", "average the probabilities of finished runs (seeds) into one run folder",
                   _add_ensemble, _ensemble)


def _add_adopt(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="an ONNX file, a TorchScript file (.pt), or a predictions table "
                   "(.csv, .parquet) of a model trained elsewhere")
    p.add_argument("--config", required=True, nargs="+", metavar="CONFIG [KEY=VALUE ...]",
                   help="a riskcl config, then dotted overrides (adopt.channels=bgr data.root=PATH): its data: "
                   "section names the data set (the splits are carved as for a trained run), its adopt: section what "
                   "riskcl cannot guess")
    p.add_argument("--out", required=True, help="the adopted model's run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _adopt(a: argparse.Namespace) -> int:
    from ..config import load_config
    from ..experiment.adopt import adopt_model

    m = adopt_model(a.model, load_config(a.config[0], a.config[1:]), a.out, progress=not a.quiet)
    print(f"adopted {a.model} ({m['run']['adopted']['kind']}, SHA-256 {m['run']['adopted']['sha256'][:12]}...) -> "
          f"{a.out}\ntest split at p(malignant) >= 0.5:")
    print_table([summary_row("adopted", m)], summary_columns("classification"))
    print(f"next: riskcl calibrate {a.out} --alpha A; evaluate, card, report, export, predict and serve work on it "
          f"as on any run")
    return 0


ADOPT = Command("adopt", "make a model trained elsewhere (ONNX, TorchScript, or a predictions table) a run folder",
                _add_adopt, _adopt)
