"""The teacher of a distillation run (``loss.name: distill``): a finished run or ensemble folder, checked before
the student trains.

``loss.params.teacher`` names the folder; ``{split_seed}`` in it is replaced by the student's ``data.split_seed``
(so one sweep recipe finds each split's own teacher, e.g. ``runs/isic/recipe-ensemble-ce__data.split_seed-
{split_seed}``). The teacher is refused when it would leak or mislead: an image or a group (patient, lesion) it
trained or chose its epoch on that is in the student's calibration or test split, another data set, other classes,
another image size, or clinical metadata (distillation here is between image models).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ExperimentConfig
from ..taxonomy import Taxonomy
from .folder import RunFolder

TEACHER_SEES = ("train", "val")    # the teacher's splits that shaped its weights
STUDENT_KEEPS = ("calib", "test")  # the student's splits no teacher may have seen


def teacher_folder(cfg: ExperimentConfig) -> Path:
    """The teacher's folder: ``loss.params.teacher`` with ``{split_seed}`` filled in."""
    raw = str(cfg.loss.params.get("teacher") or "")
    try:
        return Path(raw.format(split_seed=cfg.data.split_seed))
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"loss.params.teacher {raw!r}: only {{split_seed}} may be filled in ({exc})") from None


def load_teacher(cfg: ExperimentConfig, student: RunFolder, taxonomy: Taxonomy) -> tuple[torch.nn.Module, dict]:
    """The teacher's network (eval mode, CPU) and what the run records of it (folder, SHA-256 of its weights, what
    it cost to train: a report counts it in the student's training time);
    ``ValueError`` naming the teacher and the reason when it cannot teach this student."""
    path = teacher_folder(cfg)
    where = f"loss.params.teacher {str(path)!r}"
    if not path.is_dir():
        raise ValueError(f"{where}: no such folder; expected a finished run or ensemble folder")
    folder = RunFolder(path)
    if not folder.is_finished():
        raise ValueError(f"{where}: the run has not finished (state {folder.state!r}); a teacher must be finished")
    tcfg = folder.read_config()
    if tcfg.task != "classification" or tcfg.model.metadata:
        raise ValueError(f"{where}: a {tcfg.task} model{' with clinical metadata' if tcfg.model.metadata else ''}; "
                         f"distillation takes an image classifier")
    if tcfg.data.name != cfg.data.name:
        raise ValueError(f"{where}: trained on {tcfg.data.name!r}, the student on {cfg.data.name!r}")
    if tcfg.data.image_size != cfg.data.image_size:
        raise ValueError(f"{where}: takes {tcfg.data.image_size} px images, the student {cfg.data.image_size} px; "
                         f"the teacher sees the student's batches as they are")
    theirs = folder.taxonomy()
    if tuple(theirs.classes) != tuple(taxonomy.classes):
        raise ValueError(f"{where}: classes {list(theirs.classes)}, the student's {list(taxonomy.classes)}")
    _check_no_leak(where, folder.splits(), student.splits())
    net = folder.load_model()
    metrics = folder.metrics()
    trained = metrics.get("run", {}).get("wall_time_s_members", metrics.get("wall_time_s"))
    return net, {"folder": str(path), "weights_sha256": folder.weights_sha256(),
                 "training_seconds": None if trained is None else float(trained)}


def _check_no_leak(where: str, teacher, student) -> None:
    """Refuse a teacher that trained or selected on an image, or a group, of the student's held-out splits."""
    seen = teacher.loc[teacher["split"].isin(TEACHER_SEES)]
    kept = student.loc[student["split"].isin(STUDENT_KEEPS)]
    def ids(frame, column: str) -> set[str]:
        return {str(v) for v in frame[column] if str(v) not in ("", "nan", "None")}

    for column, what in (("path", "image"), ("group", "group")):
        both = sorted(ids(seen, column) & ids(kept, column))
        if both:
            raise ValueError(f"{where}: the teacher trained or chose its epoch on {len(both)} {what}(s) that are in "
                             f"the student's calibration or test split (e.g. {both[0]!r}): its knowledge of them "
                             f"would leak into the student's thresholds and test; use a teacher of the same split "
                             f"(data.split_seed), e.g. with {{split_seed}} in the teacher's path")
