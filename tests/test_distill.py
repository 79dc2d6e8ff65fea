"""Distillation (loss.name: distill): the loss against plain PyTorch, and a student taught by a finished run, whose
teacher is refused when it saw the student's held-out images."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from _tiny import tiny
from riskcl.experiment import run_experiment
from riskcl.losses import DistillationLoss, create_loss, distillation_loss


def _reference(student, teacher, target, t, a):
    """Hinton et al.'s loss written with torch's own KL divergence."""
    soft = F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t
    return (1 - a) * F.cross_entropy(student, target) + a * soft


@pytest.mark.parametrize("t, a", [(1.0, 0.5), (2.0, 0.5), (4.0, 0.9), (3.0, 0.0), (2.0, 1.0)])
def test_the_distillation_loss_is_hintons(t, a):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    target = torch.randint(0, 4, (6,), generator=g)
    assert float(distillation_loss(student, teacher, target, t, a)) == pytest.approx(
        float(_reference(student, teacher, target, t, a)), rel=1e-5, abs=1e-6)
    if a == 0.0:
        assert float(distillation_loss(student, teacher, target, t, a)) == pytest.approx(
            float(F.cross_entropy(student, target)), rel=1e-6)
    # a log mean softmax (an ensemble's output) teaches as its probabilities do: a constant per row changes nothing
    shifted = teacher + torch.arange(6.0)[:, None]
    assert float(distillation_loss(student, shifted, target, t, a)) == pytest.approx(
        float(distillation_loss(student, teacher, target, t, a)), rel=1e-5)


def test_the_teacher_runs_on_each_batch_and_learns_nothing():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    loss = create_loss("distill", teacher="somewhere", temperature=2.0, alpha=0.7)
    assert isinstance(loss, DistillationLoss)
    with pytest.raises(RuntimeError, match="no teacher"):
        loss(student(torch.randn(2, 3)), torch.tensor([0, 1]))
    loss.attach_teacher(teacher)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    loss.set_inputs(x)
    value = loss(student(x), y)
    expected = _reference(student(x), teacher(x), y, 2.0, 0.7).detach()
    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-5)
    value.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None
    assert list(loss.parameters()) == []  # the frozen teacher is not the loss's own module


@pytest.mark.parametrize("params, match", [({}, "needs loss.params.teacher"),
                                           ({"teacher": "t", "temperature": 0}, "temperature"),
                                           ({"teacher": "t", "alpha": 1.5}, "alpha")])
def test_bad_distillation_parameters_are_named(params, match):
    from riskcl.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        tiny(**{"loss.name": "distill", "loss.params": params})


def test_a_student_learns_from_a_finished_run_of_its_own_split(tiny_run, tmp_path):
    teachers = tmp_path / "teachers"
    teachers.mkdir()
    (teachers / "split-0").symlink_to(tiny_run[0], target_is_directory=True)
    cfg = tiny(epochs=1, **{"loss.name": "distill",
                            "loss.params": {"teacher": str(teachers / "split-{split_seed}"), "alpha": 0.8}})
    metrics = run_experiment(cfg, tmp_path / "student")
    teacher = json.loads((tmp_path / "student" / "metrics.json").read_text())["run"]["teacher"]
    assert teacher["folder"] == str(teachers / "split-0") and len(teacher["weights_sha256"]) == 64
    taught = json.loads((tiny_run[0] / "metrics.json").read_text())["wall_time_s"]
    assert teacher["training_seconds"] == pytest.approx(taught)
    from riskcl.report.collect import find_runs, method_label

    (student,), _ = find_runs(tmp_path / "student")  # the report counts the teacher's training in the student's
    assert student.training_seconds == pytest.approx(metrics["wall_time_s"] + taught)
    assert method_label(metrics["run"]) == "distill(alpha=0.8)"  # its teacher's folder is not a setting
    assert metrics["run"]["loss"] == "distill" and 0.0 <= metrics["accuracy"] <= 1.0

    # Another split seed carves other calibration images: the teacher trained on some of them, and is refused.
    leaky = tiny(epochs=1, **{"data.split_seed": 5, "loss.name": "distill",
                              "loss.params": {"teacher": str(teachers / "split-0")}})
    with pytest.raises(Exception, match="calibration or test split") as caught:
        run_experiment(leaky, tmp_path / "leaky")
    assert "split-0" in str(caught.value)
    with pytest.raises(Exception, match="no such folder"):
        run_experiment(tiny(epochs=1, **{"loss.name": "distill", "loss.params": {"teacher": str(tmp_path / "x")}}),
                       tmp_path / "orphan")
