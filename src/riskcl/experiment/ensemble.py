"""Seed ensembles: ``riskcl ensemble RUN [RUN ...] --out DIR`` makes a run folder whose predictions are the mean
probabilities of its members (softmax for classification, the lesion probability for segmentation) on the
validation, calibration and test splits.

The members must be finished runs of one task on the same data with the same splits, taxonomy, image size and
test-time augmentation; anything else is refused with the difference named. The ensemble folder then works as
any run folder: ``calibrate`` (its own threshold on the mean probabilities), ``evaluate --by``, ``report``,
``export`` (one graph holding every member), ``card`` and ``serve``. It holds no weights of its own:
``ensemble.json`` names its members (with the SHA-256 of their weights), and :class:`riskcl.models.EnsembleNet`
averages them (:meth:`RunFolder.load_model`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import ExperimentConfig
from ..io import atomic_write_text
from ..tasks import task_of
from .folder import CALIB_NO_METADATA, NO_METADATA, RunFolder

MUST_MATCH = ("task", "data.name", "data.root", "data.image_size", "data.options", "tta")


def _flat(cfg: ExperimentConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    out = {"task": d["task"], "tta": d["tta"]}
    out.update({f"data.{k}": v for k, v in d["data"].items()})
    return out


def check_members(members: Sequence[RunFolder]) -> None:
    """Raise ``ValueError`` naming the first difference that forbids averaging the members."""
    if len(members) < 2:
        raise ValueError(f"An ensemble needs at least two runs, but got {len(members)}")
    paths = [m.path.resolve() for m in members]
    if len(set(paths)) < len(paths):
        raise ValueError("The same run is named twice; an ensemble averages different runs")
    base, base_cfg = members[0], _flat(members[0].read_config())
    base_tax, base_splits = base.taxonomy(), base.splits()[["id", "split"]]
    for m in members[1:]:
        cfg = _flat(m.read_config())
        for key in MUST_MATCH:
            if cfg.get(key) != base_cfg.get(key):
                raise ValueError(f"{m.path} cannot join an ensemble with {base.path}: `{key}` differs "
                                 f"({base_cfg.get(key)!r} vs {cfg.get(key)!r})")
        tax = m.taxonomy()
        if (tax.classes, tax.levels) != (base_tax.classes, base_tax.levels):
            raise ValueError(f"{m.path} cannot join an ensemble with {base.path}: the taxonomies differ "
                             f"({list(base_tax.classes)} vs {list(tax.classes)})")
        mine, theirs = base.metadata_encoding(), m.metadata_encoding()
        if (mine and mine.to_dict()) != (theirs and theirs.to_dict()):
            raise ValueError(f"{m.path} cannot join an ensemble with {base.path}: they read other clinical metadata "
                             f"({mine and mine.column_names} vs {theirs and theirs.column_names}, or another "
                             f"encoding of them); fusion members must share their metadata encoding")
        splits = m.splits()[["id", "split"]]
        merged = base_splits.merge(splits, on="id", how="outer", suffixes=("_a", "_b"))
        other = merged.loc[merged["split_a"] != merged["split_b"]]
        if len(other):
            first = other.iloc[0]
            raise ValueError(f"{m.path} cannot join an ensemble with {base.path}: the splits differ ({len(other)} "
                             f"image(s), e.g. '{first['id']}' is in {first['split_a']!r} there and "
                             f"{first['split_b']!r} here); the members must share splits (same data.split_seed "
                             f"and fractions)")


def _mean_logits(members: Sequence[RunFolder], split: str, segmentation: bool) -> dict[str, np.ndarray]:
    from ..decision.segmentation import lesion_probability
    from ..decision.rules import softmax

    preds = [m.predictions(split) for m in members]
    ids = preds[0]["ids"].astype(str)
    probs = []
    for m, p in zip(members, preds):
        order = {i: k for k, i in enumerate(p["ids"].astype(str))}
        rows = np.array([order[i] for i in ids])
        logits = p["logits"][rows]
        probs.append(lesion_probability(logits) if segmentation else softmax(logits))
    mean = np.mean(probs, axis=0)
    if segmentation:
        mean = np.clip(mean, 1e-7, 1 - 1e-7)
        logits = np.log(mean) - np.log1p(-mean)
    else:
        logits = np.log(np.clip(mean, 1e-30, None))
    return {**preds[0], "logits": logits.astype(np.float32)}


def flat_members(runs: Sequence[str | Path]) -> list[RunFolder]:
    """The trained runs behind ``runs``: an ensemble given as a member stands for its own members (each counted once
    by its weights, never weighted twice). The same weights twice (one run named twice, or named directly and
    inside an ensemble, or a copy) are refused naming both."""
    out: list[RunFolder] = []
    for r in runs:
        folder = RunFolder(r)
        folder.require_finished(None)
        inner = folder.ensemble_members()
        out.extend(inner if inner is not None else [folder])
    seen: dict[str, RunFolder] = {}
    for m in out:
        digest = m.weights_sha256()
        if digest in seen:
            raise ValueError(f"{m.path} and {seen[digest].path} hold the same weights (SHA-256 {digest[:12]}...): an "
                             f"ensemble averages each trained model once (an ensemble given as a member stands for "
                             f"its own members)")
        seen[digest] = m
    return out


def make_ensemble(runs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Write the ensemble run folder ``out`` (see the module docstring); returns its ``metrics.json``. An ensemble
    among ``runs`` is replaced by its members (:func:`flat_members`)."""
    members = flat_members(runs)
    check_members(members)
    folder = RunFolder(out)
    if folder.file("config").is_file():
        record = folder.ensemble()
        if record is None:
            raise ValueError(f"{folder.path} holds a run that is not an ensemble; choose another --out folder")
        if sorted(record["members"]) != sorted(str(m.path.resolve()) for m in members):
            raise ValueError(f"{folder.path} holds an ensemble of other runs ({record['members']}); choose another "
                             f"--out folder")
    folder.prepare()
    base = members[0]
    cfg = base.read_config()
    seg = cfg.task == "segmentation"
    folder.mark("running")
    task = task_of(cfg.task)
    cfg.name = f"ensemble-{len(members)}-{cfg.name}"
    folder.write_config(cfg)
    folder.write_taxonomy(base.taxonomy())
    for key in ("splits", "data"):
        atomic_write_text(folder.file(key), base.file(key).read_text(encoding="utf-8"))
    if base.metadata_encoding() is not None:  # fusion members: the ensemble reads the same metadata
        folder.write_metadata_encoding(base.metadata_encoding())
    hashes = [m.weights_sha256() for m in members]
    folder.write_ensemble({"members": [str(m.path.resolve()) for m in members], "weights_sha256": hashes,
                           "seeds": [m.read_config().seed for m in members], "task": cfg.task,
                           "combination": "mean lesion probability" if seg else "mean softmax probability"})
    taxonomy, cost = base.taxonomy(), base.cost_matrix()
    reports = {}
    splits = [s for s in ("val", "calib", "test", NO_METADATA, CALIB_NO_METADATA)
              if all(m.has_predictions(s) for m in members)]
    for split in splits:
        arrays = _mean_logits(members, split, seg)
        folder.write_prediction_arrays(split, arrays)
        reports[split] = task.report(arrays["logits"], arrays["target"], taxonomy, cost, cfg.decision,
                                     groups=arrays["groups"])
    losses = sorted({m.read_config().loss.name for m in members})
    label = f"{losses[0]} x{len(members)}" if len(losses) == 1 else " + ".join(losses)
    run = {**base.metrics()["run"], "name": cfg.name, "loss": f"ensemble({label})",
           "ensemble_members": [str(m.path) for m in members], "seeds": [m.read_config().seed for m in members],
           "weights": "the members' (ensemble.json)", "best_epoch": None,
           "wall_time_s_members": sum(float(m.metrics().get("wall_time_s", 0.0)) for m in members)}
    metrics = {**reports["test"], **{s: reports[s] for s in ("val", "calib", NO_METADATA) if s in reports},
               "run": run,
               "wall_time_s": 0.0}
    folder.write_metrics(metrics)
    folder.mark("finished")
    return metrics
