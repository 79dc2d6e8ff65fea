"""Experiment tracking (riskcl.experiment.tracking): what a run logs, read back with MLflow's own client and
TensorBoard's event reader; resumed and later commands continue the same tracked run; a tracker that cannot be
reached never stops training."""
from __future__ import annotations

import json
import warnings

import pytest
import yaml

from _tiny import TINY, tiny
from riskcl.cli import main
from riskcl.experiment import run_experiment
from riskcl.experiment.folder import RunFolder
from riskcl.experiment.sweep import run_sweep
from riskcl.experiment.tracking import Tracker

mlflow = pytest.importorskip("mlflow", reason="the tracking tests need mlflow (pip install 'riskcl[track]')")
pytest.importorskip("tensorboard", reason="the tracking tests need tensorboard (pip install 'riskcl[track]')")


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    base = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    (base / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    out = base / "run"  # the README's command
    assert main(["train", str(base / "tiny.yaml"), f"tracking.mlflow={uri}", f"tracking.tensorboard={base / 'tb'}",
                 "--out", str(out), "--quiet"]) == 0
    return out, uri, base / "tb", RunFolder(out).metrics()


def test_a_run_logs_its_config_epochs_and_test_metrics(tracked):
    out, uri, tb, metrics = tracked
    record = RunFolder(out).tracking()
    client = _client(uri)
    run = client.get_run(record["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "tiny" and run.info.status == "FINISHED"
    assert run.data.params["loss.name"] == "ce" and run.data.params["optim.lr"] == "0.003"
    history = RunFolder(out).history()
    logged = client.get_metric_history(run.info.run_id, "val_cer")
    assert [m.step for m in logged] == history["epoch"].tolist()
    assert [m.value for m in logged] == pytest.approx(history["val_cer"].tolist())
    assert run.data.metrics["test_cer"] == pytest.approx(metrics["cer"])
    assert run.data.metrics["test_f1_macro"] == pytest.approx(metrics["f1_macro"])
    scalars = _scalars(tb / "run")
    assert [v for _, v in scalars["val_cer"]] == pytest.approx(history["val_cer"].tolist())
    assert scalars["test_cer"][0][1] == pytest.approx(metrics["cer"])


def test_commands_after_training_continue_the_same_tracked_run(tracked, capsys):
    out, uri, _, _ = tracked
    first = RunFolder(out).tracking()["mlflow_run_id"]
    assert main(["calibrate", str(out), "--alpha", "0.2", "--method", "crc"]) == 0
    assert main(["card", str(out), "--bootstrap", "20"]) == 0
    client = _client(uri)
    run = client.get_run(first)
    calibration = json.loads((out / "calibration.json").read_text())
    assert run.data.metrics["calibrated_threshold"] == pytest.approx(calibration["threshold"])
    assert "MODEL_CARD.md" in [a.path for a in client.list_artifacts(first)]
    assert main(["report", str(out.parent), "--out", str(out.parent / "report"), "--bootstrap", "20"]) == 0
    logged = {a.path for a in client.list_artifacts(first)}
    assert {"decision_curve_demo.png", "pareto_demo_resnet10t.png"} <= logged  # the report's figures
    # A second tracker on the folder (a resumed run) reopens the same tracked run: one run in the experiment.
    Tracker(RunFolder(out).read_config(), RunFolder(out)).close()
    assert RunFolder(out).tracking()["mlflow_run_id"] == first
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_an_unreachable_tracker_warns_once_and_never_stops_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = tiny(**{"tracking.mlflow": "http://127.0.0.1:9", "epochs": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = run_experiment(cfg, tmp_path / "run")
    failures = [w for w in caught if "tracking: MLflow failed" in str(w.message)]
    assert len(failures) == 1 and metrics["cer"] >= 0 and RunFolder(tmp_path / "run").is_finished()


def test_a_sweep_logs_under_one_experiment_with_its_grid_as_tags(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**TINY, "epochs": 1}))
    (tmp_path / "seeds.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "overrides": {"tracking.mlflow": uri},
                                                        "grid": {"seed": [0, 1]}}))
    run_sweep(tmp_path / "seeds.yaml", tmp_path / "runs", progress=False)
    client = _client(uri)
    exp = client.get_experiment_by_name("seeds")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["grid.seed"] for r in runs) == ["0", "1"]
    assert {r.data.tags["riskcl.sweep"] for r in runs} == {"seeds"}


def test_runs_started_together_on_a_new_store_are_all_tracked(tmp_path, capsys):
    """Two tasks of a `--jobs 2` sweep open one new SQLite store at once: the driver made it and the experiment
    first, so neither loses its tracking; --status says so."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    (tmp_path / "new").mkdir()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**TINY, "epochs": 1}))
    (tmp_path / "pair.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "overrides": {"tracking.mlflow": uri},
                                                       "grid": {"seed": [0, 1]}}))
    out = tmp_path / "runs"
    assert main(["sweep", str(tmp_path / "pair.yaml"), "--out", str(out), "--launcher", "local", "--jobs", "2",
                 "--quiet"]) == 0
    client = _client(uri)
    runs = client.search_runs([client.get_experiment_by_name("pair").experiment_id])
    assert sorted(r.data.tags["grid.seed"] for r in runs) == ["0", "1"]
    capsys.readouterr()
    assert main(["sweep", str(tmp_path / "pair.yaml"), "--out", str(out), "--status"]) == 0
    status = capsys.readouterr().out
    assert "tracked" in status and "not tracked" not in status and status.count(" yes ") == 2


def test_a_run_that_could_not_be_tracked_is_named_by_status_and_the_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setattr("riskcl.experiment.tracking.RETRIES", 1)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**TINY, "epochs": 1}))
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"seed": [0]},
                                                      "overrides": {"tracking.mlflow": "http://127.0.0.1:9"}}))
    out = tmp_path / "runs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_sweep(tmp_path / "one.yaml", out, progress=False)
    summary = json.loads((out / "sweep-shard-0-of-1.json").read_text())["runs"]
    assert summary["seed-0"]["state"] == "finished" and summary["seed-0"]["tracked"].startswith("no: MLflow failed")
    capsys.readouterr()
    assert main(["sweep", str(tmp_path / "one.yaml"), "--out", str(out), "--status"]) == 0
    assert "1 not tracked (seed-0: MLflow failed" in capsys.readouterr().out
