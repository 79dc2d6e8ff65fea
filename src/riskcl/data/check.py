"""``riskcl data check``: validate a data folder and report counts, groups, duplicates and problems."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .registry import create_datasets


def check_dataset(name: str, root: str | Path | None, image_size: int = 32, **options: Any) -> dict[str, Any]:
    """A JSON-able report; ``usable`` is False when the data cannot be trained on (every reason is listed).

    Every image is decoded (at ``image_size``, into the cache) so unreadable files are found and named.
    """
    report: dict[str, Any] = {"dataset": name, "root": None if root is None else str(root), "usable": True,
                              "splits": {}, "duplicates": {}, "duplicate_groups": [], "bad_images": {},
                              "problems": []}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = create_datasets(name, root, image_size=image_size, on_bad_image="skip", duplicates="warn",
                                   progress=False, **options)
    except (ValueError, OSError) as exc:
        report["usable"] = False
        report["problems"].append(str(exc))
        return report
    info = data.info
    report["problems"] += list(info["problems"]) + [str(w.message) for w in caught
                                                    if issubclass(w.category, UserWarning)]
    report["dropped"] = [p for p in info["problems"] if p.endswith("skipped") or "; skipped (" in p]
    report["metadata"] = info.get("metadata", [])
    report["bad_images"] = dict(info["skipped"])
    if report["bad_images"]:
        report["usable"] = False
        report["problems"].append(f"{len(report['bad_images'])} unreadable image(s): "
                                  + ", ".join(sorted(report["bad_images"])[:20]))
    for split, ds in data.datasets.items():
        report["splits"][split] = {"n": len(ds), "counts": info["counts"][split], "groups": info["groups"][split]}
    report["duplicates"] = info["duplicates"]
    report["duplicate_groups"] = [g["files"] for g in info["duplicate_groups"]]
    report["duplicate_splits"] = [g["splits"] for g in info["duplicate_groups"]]
    empty = [f"{s}/{c}" for s, d in info["counts"].items() for c, n in d.items() if n == 0 and s in ("train", "test")]
    if empty:
        report["problems"].append(f"classes with no image: {empty}")
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"dataset {report['dataset']} at {report['root']}: {'usable' if report['usable'] else 'UNUSABLE'}"]
    for split, s in report["splits"].items():
        counts = ", ".join(f"{c} {n}" for c, n in s["counts"].items())
        lines.append(f"  {split:5s} {s['n']:6d} images, {s['groups']:5d} groups: {counts}")
    d = report.get("duplicates") or {}
    if d:
        lines.append(f"  exact duplicates: {d['groups']} groups ({d['redundant_files']} redundant files), "
                     f"{d['across_splits']} across splits, {d['within_split']} within one split")
        for files, splits in list(zip(report["duplicate_groups"], report["duplicate_splits"]))[:5]:
            lines.append(f"    {'/'.join(splits)}: " + " == ".join(Path(f).name for f in files))
    for path, reason in list(report["bad_images"].items())[:50]:
        lines.append(f"  BAD {path}: {reason}")
    for p in report["problems"]:
        lines.append(f"  problem: {p}")
    return "\n".join(lines)
