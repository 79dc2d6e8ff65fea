"""``riskcl monitor``: whether the certified operating point still describes the cases a deployed model sees.

It reads the service's decision log (:mod:`riskcl.deploy.decision_log`; ``riskcl predict --log`` writes the same
lines) and nothing else of the service, the reference the model was calibrated on (a run folder's calibration
split, or an export's ``monitoring_reference``), and, when they exist, the confirmed outcomes (a CSV keyed by
``request_id`` or by the image's keyed hash ``hmac_sha256``, with ``malignant`` 1 / 0 or ``label``). Every detector
is a confidence sequence (:mod:`riskcl.decision.sequential`): its false-alarm probability stays under its level
however often the monitor is run, and the overall level is shared out among the detectors.

Two kinds of alarm, told apart because they mean different things:

* **about the guarantee** (needs outcomes): the miss rate among confirmed malignant cases at the deployed
  operating point. An alarm when its sequence's lower bound passes alpha: on these cases the guarantee is broken.
  While the bound straddles alpha the data cannot yet tell. The false-referral rate is reported beside it (a
  cost, not a safety figure).
* **the cases changed** (from the first decision, no labels): the referral rate, the share the input check
  flags, and the distribution of p(malignant) (its shares in the reference's deciles), each against the
  reference. Such an alarm says the guarantee's assumption (cases exchangeable with the calibration split) is in
  doubt, not that the miss rate rose: a prevalence shift moves all three while the miss rate among malignant cases
  holds. Confirm with outcomes, or recalibrate (``riskcl calibrate RUN --from-log LOG --outcomes CSV``).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..decision.sequential import first, rate_sequence, shifted
from ..io import atomic_write_json
from .decision_log import read_records

LEVEL = 0.05     # the overall false-alarm level, shared out among the detectors
BINS = 10        # the score distribution: shares in the reference's deciles
DETECTORS = ("miss rate", "referral rate", "input check flags", "p(malignant) distribution")
MEANING = {
    "miss rate": "about the guarantee: the share of confirmed malignant cases the model cleared",
    "false referral rate": "a cost, not safety: the share of confirmed benign cases referred",
    "referral rate": "the cases changed (prevalence, case mix or the images): not by itself a broken guarantee",
    "input check flags": "the images changed (a new device, another acquisition): not by itself a broken guarantee",
    "p(malignant) distribution": "the model's scores moved: the cases or the images changed; not by itself a "
                                 "broken guarantee",
}


@dataclass
class Reference:
    """What the deployed model looked like on its calibration split: size, referrals at the operating point,
    input-check flags, the deciles of p(malignant) and the shares in them, and the taxonomy's malignant classes."""

    n: int
    referred: int
    threshold: float
    flagged: int | None
    flag_n: int | None
    edges: list[float]
    bin_counts: list[int]
    malignant_classes: list[str]
    classes: list[str]
    alpha: float | None
    model_sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def reference_from_scores(p_mal: np.ndarray, threshold: float, classes: Sequence[str], malignant: Sequence[str],
                          alpha: float | None, model_sha256: str | None, flagged: int | None = None,
                          flag_n: int | None = None) -> Reference:
    """The reference of calibration-split scores ``p_mal`` at ``threshold``."""
    edges = np.quantile(p_mal, np.linspace(0, 1, BINS + 1)[1:-1]).tolist()
    counts = np.bincount(np.searchsorted(edges, p_mal, side="right"), minlength=BINS).tolist()
    return Reference(len(p_mal), int((p_mal >= threshold).sum()), float(threshold), flagged, flag_n, edges, counts,
                     list(malignant), list(classes), alpha, model_sha256)


def load_reference(path: str | os.PathLike) -> Reference:
    """The reference of a run folder (its calibration split at its operating point) or of an export folder (its
    ``monitoring_reference``)."""
    from .scoring import is_export, read_export_metadata

    if is_export(path):
        meta = read_export_metadata(path)
        ref = meta.get("monitoring_reference")
        if not ref:
            raise ValueError(f"{path}: the export has no monitoring_reference (exported by riskcl < 0.4): monitor "
                             f"with the run folder instead (riskcl monitor LOG --reference RUN)")
        return Reference(**ref)
    return run_reference(path)


def run_reference(run_dir: str | os.PathLike) -> Reference:
    from ..experiment.calibrate import operating_point
    from ..experiment.folder import RunFolder
    from ..metrics import malignant_probability

    folder = RunFolder(run_dir)
    folder.require_finished(None)
    op = operating_point(folder, allow_uncertified=True)
    tax = folder.taxonomy()
    split = "calib" if folder.has_predictions("calib") else "val"
    p_mal = malignant_probability(op.probabilities(folder.predictions(split)["logits"]), tax)
    check = folder.input_check()
    flagged = flag_n = None
    if check is not None:
        flag_n = int(check["n_threshold"])
        flagged = int(round(flag_n * (1 - float(check["quantile"]))))
    malignant = [c for c, s in zip(tax.classes, tax.superclass) if s == 1]
    return reference_from_scores(p_mal, op.threshold, tax.classes, malignant, op.alpha if op.calibrated else None,
                                 folder.weights_sha256(), flagged, flag_n)


def read_outcomes(path: str | os.PathLike, malignant_classes: Sequence[str]) -> tuple[dict[str, dict], str]:
    """``({key: {"malignant": 0 / 1, "date": ..., other columns}}, key column)``: the confirmed outcomes, keyed by
    ``request_id`` or ``hmac_sha256``; ``label`` is a class name of the taxonomy (its superclass decides)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot read it as a CSV ({exc})") from None
    header = list(rows[0]) if rows else []
    key = next((k for k in ("request_id", "hmac_sha256") if k in header), None)
    if key is None or not ({"malignant", "label"} & set(header)):
        raise ValueError(f"{path}: expected a key column (request_id or hmac_sha256) and malignant (1 / 0) or label, "
                         f"but got {header}")
    out: dict[str, dict] = {}
    for k, row in enumerate(rows, 2):
        if "malignant" in row and str(row["malignant"]).strip() in ("0", "1"):
            mal = int(row["malignant"])
        elif "label" in row and row["label"]:
            mal = int(row["label"].strip() in malignant_classes)
        else:
            raise ValueError(f"{path}, line {k}: expected malignant 1 / 0 or a class label, but got {row}")
        out[str(row[key]).strip()] = {**row, "malignant": mal}
    return out, key


def _detector(alarm: np.ndarray, low: np.ndarray, high: np.ndarray, seqs: Sequence[int], times: Sequence[str],
              name: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    at = first(alarm)
    return {"name": name, "meaning": MEANING[name], "cases": int(len(low)), **extra,
            "bounds": [float(low[-1]), float(high[-1])] if len(low) else None,
            "alarm": bool(alarm[-1]) if len(alarm) else False, "ever_alarmed": at is not None,
            "since": None if at is None else {"case": at + 1, "seq": int(seqs[at]), "time": times[at]},
            "curve": {"low": low.tolist(), "high": high.tolist(), "rate": (np.cumsum(extra.get("_x", []))
                                                                          / np.arange(1, len(low) + 1)).tolist()}}


def monitor(log: Sequence[str | os.PathLike], reference: Reference, outcomes: str | os.PathLike | None = None,
            alpha: float | None = None, by: str | None = None, level: float = LEVEL) -> dict[str, Any]:
    """The monitor's findings (see the module docstring) as a mapping (``monitor.json``)."""
    records, notes = read_records(log)
    models = sorted({r.get("model_sha256") for r in records})
    if reference.model_sha256 and reference.model_sha256 in models and len(models) > 1:
        notes.append(f"the log holds decisions of {len(models)} models; only those of the reference's "
                     f"({reference.model_sha256[:12]}...) are monitored")
    if reference.model_sha256 and models and reference.model_sha256 not in models:
        notes.append(f"no decision of the reference model ({reference.model_sha256[:12]}...) in the log (it holds "
                     f"{[str(m)[:12] for m in models]}): check --reference")
    records = [r for r in records if not reference.model_sha256 or r.get("model_sha256") == reference.model_sha256]
    decided = [r for r in records if r.get("decision") in ("refer", "clear")]
    alpha = alpha if alpha is not None else reference.alpha
    share = level / len(DETECTORS)
    seqs, times = [r["seq"] for r in decided], [r.get("time", "") for r in decided]
    found: dict[str, Any] = {}
    refer = np.array([r["decision"] == "refer" for r in decided], dtype=float)
    if len(refer):
        alarm, ref, low, high = shifted(refer, reference.referred, reference.n, share)
        found["referral rate"] = _detector(alarm, low, high, seqs, times, "referral rate",
                                           {"rate": float(refer.mean()), "reference": list(ref), "_x": refer})
        flags = [(k, r["unusual"]) for k, r in enumerate(decided) if r.get("unusual") is not None]
        if flags and reference.flagged is not None:
            x = np.array([f for _, f in flags], dtype=float)
            alarm, ref, low, high = shifted(x, reference.flagged, reference.flag_n, share)
            found["input check flags"] = _detector(alarm, low, high, [seqs[k] for k, _ in flags],
                                                   [times[k] for k, _ in flags], "input check flags",
                                                   {"rate": float(x.mean()), "reference": list(ref), "_x": x})
        found["p(malignant) distribution"] = _distribution(decided, reference, share, seqs, times)
    found.update(_with_outcomes(decided, outcomes, reference, alpha, share, notes, by))
    for d in found.values():
        d.pop("_x", None)
    state = _state_line(found, alpha, len(decided))
    return {"decisions": len(decided), "records": len(records), "level": level, "level_per_detector": share,
            "alpha": alpha, "reference": {k: v for k, v in reference.to_dict().items() if k not in ("edges",)},
            "detectors": found, "state": state, "notes": notes}


def _distribution(decided: list[dict], reference: Reference, share: float, seqs, times) -> dict[str, Any]:
    """Each decile's share of the deployment's p(malignant) against the reference's, at ``share / BINS`` each."""
    p = np.array([r["p_malignant"] for r in decided], dtype=float)
    bins = np.searchsorted(reference.edges, p, side="right")
    alarm = np.zeros(len(p), bool)
    worst: dict[str, Any] = {}
    for k in range(BINS):
        x = (bins == k).astype(float)
        a, ref, low, high = shifted(x, reference.bin_counts[k], reference.n, share / BINS)
        alarm |= a
        gap = max(0.0, float(ref[0] - high[-1]), float(low[-1] - ref[1]))
        if not worst or gap > worst["gap"]:
            worst = {"decile": k + 1, "gap": gap, "share": float(x.mean()), "reference": list(ref), "low": low,
                     "high": high}
    return _detector(alarm, worst["low"], worst["high"], seqs, times, "p(malignant) distribution",
                     {"rate": worst["share"], "reference": worst["reference"], "decile": worst["decile"],
                      "_x": (bins == worst["decile"] - 1).astype(float)})


def _with_outcomes(decided: list[dict], path, reference: Reference, alpha: float | None, share: float,
                   notes: list[str], by: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    table, key = read_outcomes(path, reference.malignant_classes)
    field = "request_id" if key == "request_id" else None
    known = {(r.get(field) if field else (r.get("image") or {}).get("hmac_sha256")): r for r in decided}
    unmatched = [k for k in table if k not in known]
    if unmatched:
        notes.append(f"{path}: {len(unmatched)} outcome row(s) match no decision of the log by {key} (e.g. "
                     f"{unmatched[0][:16]}): not counted")
    confirmed = [(r, table[k]) for k, r in known.items() if k in table]
    confirmed.sort(key=lambda pair: pair[0]["seq"])
    out: dict[str, Any] = {}
    if alpha is None:
        notes.append("no alpha (an uncalibrated reference and no --alpha): the miss rate is reported without an alarm")
    groups: dict[str, list] = {"all": confirmed}
    if by:
        for r, o in confirmed:
            value = (r.get("metadata") or {}).get(by) or o.get(by) or "unknown"
            groups.setdefault(f"{by}={value}", []).append((r, o))
    for name, pairs in groups.items():
        mal = [(r, o) for r, o in pairs if o["malignant"] == 1]
        ben = [(r, o) for r, o in pairs if o["malignant"] == 0]
        suffix = "" if name == "all" else f" ({name})"
        if mal:
            x = np.array([r["decision"] == "clear" for r, _ in mal], dtype=float)
            low, high = rate_sequence(x, share)
            alarm = low > alpha if alpha is not None else np.zeros(len(x), bool)
            out[f"miss rate{suffix}"] = {**_detector(alarm, low, high, [r["seq"] for r, _ in mal],
                                                     [r.get("time", "") for r, _ in mal], "miss rate",
                                                     {"rate": float(x.mean()), "alpha": alpha, "_x": x}),
                                         "undecided": bool(alpha is not None and low[-1] <= alpha < high[-1])}
        if ben:
            x = np.array([r["decision"] == "refer" for r, _ in ben], dtype=float)
            low, high = rate_sequence(x, share)
            out[f"false referral rate{suffix}"] = _detector(np.zeros(len(x), bool), low, high,
                                                            [r["seq"] for r, _ in ben],
                                                            [r.get("time", "") for r, _ in ben],
                                                            "false referral rate", {"rate": float(x.mean()), "_x": x})
    return out


def _state_line(found: Mapping[str, Any], alpha: float | None, n: int) -> str:
    """The current state in one line (the served page shows it)."""
    broken = [k for k, d in found.items() if k.startswith("miss rate") and d["alarm"]]
    changed = [k for k, d in found.items() if d["alarm"] and not k.startswith(("miss rate", "false referral"))]
    miss = found.get("miss rate")
    if broken:
        return (f"ALARM: the miss rate of confirmed malignant cases is above alpha {alpha:g} ({', '.join(broken)}): "
                f"the guarantee is broken on these cases")
    head = (f"miss rate {miss['rate']:.3f} on {miss['cases']} confirmed malignant case(s), "
            + ("the data cannot yet tell whether it exceeds alpha" if miss.get("undecided") else
               f"under alpha {alpha:g} so far" if alpha is not None and miss["bounds"][1] <= alpha else
               "bounds " + str([round(b, 3) for b in miss["bounds"]])) if miss else
            "no confirmed outcomes yet")
    return (f"{n} decision(s); {head}; " + (f"the cases changed ({', '.join(changed)}): the guarantee's assumption is "
                                            f"in doubt, confirm with outcomes" if changed else "no change detected"))


def write_outputs(result: dict[str, Any], out: Path, state_file: Path | None = None) -> list[Path]:
    """``monitor.json``, ``monitor.html`` (curves of every detector over the cases) and, for the served page, the
    state line beside the log."""
    from ..report.render import Document

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "monitor.json", result)
    written = [out / "monitor.json"]
    doc = Document("riskcl monitor")
    doc.para(f"{result['state']}.")
    doc.para(f"{result['decisions']} decision(s). Each detector is a confidence sequence at level "
             f"{result['level_per_detector']:g} (overall {result['level']:g}): it may be looked at after every case.")
    rows = [{"detector": k, "cases": d["cases"], "rate": round(d["rate"], 4),
             "bounds": [round(b, 4) for b in d["bounds"]] if d["bounds"] else None,
             "reference": d.get("reference") and [round(b, 4) for b in d["reference"]],
             "alarm": "ALARM" if d["alarm"] else "-", "since": d["since"] and d["since"]["case"],
             "what it says": d["meaning"]} for k, d in result["detectors"].items()]
    import pandas as pd

    doc.table(pd.DataFrame(rows))
    if result["notes"]:
        doc.para("Notes: " + "; ".join(result["notes"]))
    figure = _plot(result, out / "monitor_curves.png")
    if figure is not None:
        doc.figure("Each detector over the cases: its rate, its confidence sequence and the reference (or alpha)",
                   figure)
    doc.write(out / "monitor.md", out / "monitor.html", inline_figures=True)
    written += [out / "monitor.md", out / "monitor.html"]
    if state_file is not None:
        atomic_write_json(state_file, {"state": result["state"], "decisions": result["decisions"]})
        written.append(state_file)
    return written


def _plot(result: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = {k: d for k, d in result["detectors"].items() if d["cases"]}
    if not found:
        return None
    fig, axes = plt.subplots(len(found), 1, figsize=(7, 2.2 * len(found)), squeeze=False)
    for ax, (name, d) in zip(axes[:, 0], found.items()):
        t = np.arange(1, d["cases"] + 1)
        ax.fill_between(t, d["curve"]["low"], d["curve"]["high"], alpha=0.3, label="confidence sequence")
        ax.plot(t, d["curve"]["rate"], lw=1, label="rate so far")
        if d.get("reference"):
            ax.axhspan(*d["reference"], color="grey", alpha=0.2, label="reference")
        if d.get("alpha") is not None:
            ax.axhline(d["alpha"], color="#c62828", lw=1, label="alpha")
        if d["since"]:
            ax.axvline(d["since"]["case"], color="#c62828", ls="--", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, loc="upper right")
    axes[-1, 0].set_xlabel("cases (in the order they were decided)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def recalibrate_from_log(run_dir: str | os.PathLike, log: str | os.PathLike, outcomes: str | os.PathLike,
                         alpha: float, delta: float, method: str = "ltt", window: int | None = None,
                         allow_uncertified: bool = False) -> dict[str, Any]:
    """A new ``calibration.json`` from the newest ``window`` confirmed cases of a deployment's log (the logged
    p(malignant) at the operating point, the temperature kept), naming the window it came from; the previous one is
    kept beside it (``calibration_<time>.json``). Recalibrating is the user's decision, after the monitor's alarm:
    the guarantee then holds for cases like that window."""
    from ..decision import control_risk
    from ..experiment.calibrate import UncertifiedError, operating_point
    from ..experiment.folder import RunFolder

    folder = RunFolder(run_dir)
    folder.require_finished(None)
    op = operating_point(folder, allow_uncertified=True)
    if op.per_group or op.inputs is not None:
        raise ValueError(f"{folder.path}: recalibrating from a log takes one pooled threshold; this run decides per "
                         f"group or per metadata pattern (recalibrate it with riskcl calibrate on its splits)")
    reference = run_reference(run_dir)
    records, _ = read_records([log])
    records = [r for r in records if r.get("model_sha256") == reference.model_sha256
               and r.get("decision") in ("refer", "clear")]
    table, key = read_outcomes(outcomes, reference.malignant_classes)
    pairs = [(r, table[k]) for r in records
             if (k := (r.get("request_id") if key == "request_id" else (r.get("image") or {}).get("hmac_sha256")))
             in table]
    if window is not None:
        pairs = pairs[-int(window):]
    if not pairs:
        raise ValueError(f"{log}: no decision of this run's model ({reference.model_sha256[:12]}...) has a confirmed "
                         f"outcome in {outcomes}")
    tax = folder.taxonomy()
    mal_k, ben_k = tax.malignant_indices[0], tax.benign_indices[0]
    p = np.array([float(r["p_malignant"]) for r, _ in pairs])
    probs = np.zeros((len(p), tax.num_classes))
    probs[:, mal_k], probs[:, ben_k] = p, 1 - p
    target = np.where([o["malignant"] == 1 for _, o in pairs], mal_k, ben_k)
    result = control_risk(method, probs, target, tax, alpha, delta)
    if not result.certified and not allow_uncertified:
        raise UncertifiedError(f"{log}: no threshold could be certified at alpha = {alpha} on {result.n_calibration} "
                               f"confirmed malignant case(s); wait for more outcomes, raise --alpha, or pass "
                               f"--allow-uncertified; nothing written")
    previous = folder.archive_calibration()
    first_r, last_r = pairs[0][0], pairs[-1][0]
    out = {**result.to_dict(), "temperature": op.temperature, "tta": op.tta, "calibration_split": "log",
           "calibration_file": str(log),
           "window": {"log": str(log), "outcomes": str(outcomes), "first_seq": first_r["seq"],
                      "last_seq": last_r["seq"], "first_time": first_r.get("time"), "last_time": last_r.get("time"),
                      "n": len(pairs), "n_malignant": int((target == mal_k).sum()),
                      "previous": None if previous is None else previous.name}}
    folder.write_calibration(out)
    return out
