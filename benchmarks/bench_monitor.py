"""Simulated deployment of a trained run (issue 36): does ``riskcl monitor`` stay quiet when nothing changes, and how
fast does it speak when something does?

    python benchmarks/bench_monitor.py --run RUN [--streams 1000] [--delay 50] [--out results/monitoring]
    python benchmarks/bench_monitor.py --run RUN --streams 40            # the small form the tests run

The run's test split is scored once as it is and once under each image shift made from the data itself (a blur, a
colour shift), through the service's decision logic (the run's operating point, riskcl's decoder and resize). Each
stream is the test cases in a random order (with replacement, as long as the test split), decided one at a time;
the confirmed outcome of a case arrives ``--delay`` cases after its decision. Streams:

* ``none``: the test split as it is: the share of streams with any alarm must stay under the level (0.05);
* ``blur`` / ``colour``: the same images blurred (Gaussian, radius 1.5 px) or colour shifted (red up 30%, blue down);
* ``prevalence``: malignant cases drawn three times as often (the miss rate among them does not move);
* ``subgroup``: the cases of one metadata group only (the most common value of the first metadata column);
* ``hard cases``: malignant cases drawn only from the ones the model scores lowest, as many as make their miss rate
  at the operating point twice alpha (all the missed ones and the lowest-scored caught ones): a class-conditional
  shift that breaks the guarantee while the benign cases stay as they were.

For each shift and detector: the share of streams that alarmed, the median delay (cases decided until the first
alarm) and the median number of malignant cases missed before it. One JSON object is printed (and written to
``--out``/result.json), with the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

DETECTORS = ("miss rate", "referral rate", "input check flags", "p(malignant) distribution")


def scored_cases(run: str, shifts: tuple[str, ...] = ("none", "blur", "colour")) -> dict:
    """Per image shift: p(malignant), the decision at the operating point and the input check's flag of every test
    image, with its malignancy and metadata (scored once; the streams resample them)."""
    from PIL import Image, ImageFilter

    from riskcl.data import load_source_images
    from riskcl.deploy.predict import RunModel
    from riskcl.deploy.scoring import decision_rows
    from riskcl.experiment import RunFolder

    folder = RunFolder(run)
    cfg, tax = folder.read_config(), folder.taxonomy()
    test = folder.predictions("test")
    images = load_source_images(cfg.data.name, cfg.data.root, list(test["paths"]), **cfg.data.options)
    model = RunModel(run, allow_uncertified=True)
    check, _ = model.load_input_check()
    out = {"malignant": tax.superclass[test["target"]] == 1, "threshold": model.op.threshold,
           "metadata": {k: np.asarray(v) for k, v in RunFolder.metadata_of(test).items()}}
    for shift in shifts:
        if shift == "blur":
            shown = [np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.5))) for im in images]
        elif shift == "colour":
            scale = np.array([1.3, 1.0, 0.75])
            shown = [np.clip(im.astype(float) * scale, 0, 255).astype(np.uint8) for im in images]
        else:
            shown = images
        probs = model.probabilities(shown)
        rows = decision_rows(probs, tax, model.op)
        flags = None if check is None else model.distances(check, shown) > check.threshold
        out[shift] = {"p": np.array([r["p_malignant"] for r in rows]),
                      "refer": np.array([r["decision"] == "refer" for r in rows]), "flag": flags}
    return out


def stream_indices(cases: dict, shift: str, length: int, rng) -> tuple[np.ndarray, str]:
    """The cases of one stream (indices into the test split) and which scoring to read them from."""
    mal = np.flatnonzero(cases["malignant"])
    n = len(cases["malignant"])
    if shift == "prevalence":
        weights = np.where(cases["malignant"], 3.0, 1.0)
        return rng.choice(n, length, p=weights / weights.sum()), "none"
    if shift == "subgroup":
        column = next(iter(cases["metadata"]), None)
        if column is None:
            return rng.integers(0, n, length), "none"
        values, counts = np.unique(cases["metadata"][column], return_counts=True)
        pool = np.flatnonzero(cases["metadata"][column] == values[counts.argmax()])
        return rng.choice(pool, length), "none"
    if shift == "hard cases":
        hard = cases["hard"]
        benign = np.flatnonzero(~cases["malignant"])
        picks = np.where(rng.random(length) < len(mal) / n, rng.choice(hard, length), rng.choice(benign, length))
        return picks, "none"
    return rng.integers(0, n, length), shift


def run_stream(cases: dict, reference, idx: np.ndarray, scoring: str, alpha: float, delay: int,
               level: float = 0.05) -> dict:
    """The first alarm (in cases decided) of each detector on one stream, and the malignant cases missed before it."""
    from riskcl.decision.sequential import first, rate_sequence, shifted
    from riskcl.deploy.monitor import BINS

    share = level / len(DETECTORS)
    s = cases[scoring]
    refer, p, mal = s["refer"][idx], s["p"][idx], cases["malignant"][idx]
    at: dict[str, int | None] = {}
    at["referral rate"] = first(shifted(refer.astype(float), reference.referred, reference.n, share)[0])
    if s["flag"] is not None and reference.flagged is not None:
        at["input check flags"] = first(shifted(s["flag"][idx].astype(float), reference.flagged, reference.flag_n,
                                                share)[0])
    bins = np.searchsorted(reference.edges, p, side="right")
    alarms = [first(shifted((bins == k).astype(float), reference.bin_counts[k], reference.n, share / BINS)[0])
              for k in range(BINS)]
    hits = [a for a in alarms if a is not None]
    at["p(malignant) distribution"] = min(hits) if hits else None
    positions = np.flatnonzero(mal)
    missed = (~refer[positions]).astype(float)
    low, _ = rate_sequence(missed, share) if len(missed) else (np.zeros(0), np.zeros(0))
    k = first(low > alpha)
    at["miss rate"] = None if k is None else int(positions[k] + delay)  # its outcome arrives `delay` cases later
    misses = np.cumsum(mal & ~refer)
    return {d: (None if a is None else {"delay": a + 1, "missed_before": int(misses[min(a, len(misses) - 1)])})
            for d, a in at.items()}


SHIFTS = ("none", "blur", "colour", "prevalence", "subgroup", "hard cases")


def hard_pool(cases: dict, alpha: float) -> np.ndarray:
    """The malignant test cases the model scores lowest, as many as make their miss rate 2 alpha: the m missed ones
    and the lowest-scored caught ones up to m / (2 alpha) in all (at least m + 1). With none missed, the three
    lowest-scored (their miss rate 0: the shift cannot break the guarantee; the result says so)."""
    mal = np.flatnonzero(cases["malignant"])
    missed = int((~cases["none"]["refer"][mal]).sum())
    k = max(missed + 1, int(missed / (2 * alpha))) if missed else 3
    return mal[np.argsort(cases["none"]["p"][mal], kind="stable")[:min(k, len(mal))]]


def simulate(cases: dict, reference, alpha: float, streams: int, delay: int, seed: int = 0,
             shifts=SHIFTS, length: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    length = length or len(cases["malignant"])
    cases = {**cases, "hard": hard_pool(cases, alpha)}
    out = {}
    for shift in shifts:
        found = {d: [] for d in DETECTORS}
        any_alarm = 0
        for _ in range(streams):
            idx, scoring = stream_indices(cases, shift, length, rng)
            result = run_stream(cases, reference, idx, scoring, alpha, delay)
            any_alarm += any(v is not None for v in result.values())
            for d, v in result.items():
                found[d].append(v)
        out[shift] = {"streams": streams, "any_alarm": round(any_alarm / streams, 4), "detectors": {
            d: {"alarmed": round(sum(v is not None for v in vs) / streams, 4),
                "median_delay": float(np.median([v["delay"] for v in vs if v])) if any(vs) else None,
                "median_missed_before": float(np.median([v["missed_before"] for v in vs if v])) if any(vs) else None}
            for d, vs in found.items() if vs}}
    return out


def run(run_dir: str, streams: int = 1000, delay: int = 50, level: float = 0.05, alpha: float | None = None,
        shifts=SHIFTS, length: int | None = None) -> dict:
    from riskcl.deploy.monitor import run_reference

    start = time.time()
    reference = run_reference(run_dir)
    alpha = alpha if alpha is not None else (reference.alpha or 0.1)
    cases = scored_cases(run_dir)
    result = simulate(cases, reference, alpha, streams, delay, shifts=shifts, length=length)
    hard = hard_pool(cases, alpha)
    out = {"bench": "monitor", "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "run": str(run_dir), "test_cases": int(len(cases["malignant"])),
            "malignant": int(cases["malignant"].sum()), "threshold": cases["threshold"], "alpha": alpha,
            "level": level, "delay": delay, "stream_length": length or int(len(cases["malignant"])),
            "miss_rate": {"test split": float(1 - cases["none"]["refer"][cases["malignant"]].mean()),
                          "hard-case pool": float(1 - cases["none"]["refer"][hard].mean()),
                          "hard-case pool size": int(len(hard))},
            "shifts": result, "seconds": round(time.time() - start, 1), "targets": {}}
    if "none" in result:
        out["targets"]["false_alarm_under_level_without_shift"] = result["none"]["any_alarm"] <= level
    if "hard cases" in result:
        out["targets"]["hard_cases_detected_by_the_miss_rate"] = \
            result["hard cases"]["detectors"]["miss rate"]["alarmed"] > 0.5
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a finished, calibrated run folder (its test split is streamed)")
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--delay", type=int, default=50, help="cases between a decision and its confirmed outcome")
    p.add_argument("--alpha", type=float, default=None, help="default: the run's calibration alpha")
    p.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=SHIFTS)
    p.add_argument("--length", type=int, default=None, help="cases per stream (default: the test split's size)")
    p.add_argument("--out", default=None, help="write result.json there")
    a = p.parse_args()
    result = run(a.run, a.streams, a.delay, alpha=a.alpha, shifts=tuple(a.shifts), length=a.length)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
