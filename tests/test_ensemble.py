"""Seed ensembles (riskcl ensemble): the ensemble's probabilities are the members' mean (checked against the
members' own saved predictions and against plain PyTorch), mismatched members are refused with the difference
named, and the ensemble folder calibrates, evaluates and exports like any run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _tiny import tiny
from riskcl.experiment import RunFolder, run_experiment
from riskcl.experiment.ensemble import make_ensemble


@pytest.fixture(scope="module")
def second_seed(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("seed1") / "tiny-ce-seed1"
    run_experiment(tiny(seed=1), out)
    return out


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_the_ensemble_predicts_the_mean_of_its_members(tiny_run, second_seed, tmp_path):
    members = [tiny_run[0], second_seed]
    metrics = make_ensemble(members, tmp_path / "ens")
    folder = RunFolder(tmp_path / "ens")
    assert folder.is_finished() and metrics["run"]["loss"] == "ensemble(ce x2)"
    for split in ("val", "calib", "test"):
        ens = folder.predictions(split)
        mine = [RunFolder(m).predictions(split) for m in members]
        assert np.array_equal(ens["ids"], mine[0]["ids"])
        mean = np.mean([_softmax(p["logits"].astype(np.float64)) for p in mine], axis=0)
        np.testing.assert_allclose(_softmax(ens["logits"].astype(np.float64)), mean, atol=1e-6)
    # the ensemble's network (export, serve, predict) is the same mean, in plain PyTorch
    net = folder.load_model()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        ref = torch.stack([torch.softmax(RunFolder(m).load_model()(x), 1) for m in members]).mean(0)
        torch.testing.assert_close(torch.softmax(net(x), 1), ref, atol=1e-6, rtol=1e-5)
    assert len(folder.weights_sha256()) == 64


def test_an_ensemble_of_ensembles_counts_each_model_once(tiny_run, second_seed, tmp_path, capsys):
    """ens(cls, cls1) + cls would weigh cls 0.75: the inner ensemble is flattened and the repeat refused; a deleted
    member is named as gone."""
    import shutil

    from riskcl.cli import main

    make_ensemble([tiny_run[0], second_seed], tmp_path / "ens")
    with pytest.raises(ValueError, match="hold the same weights"):
        make_ensemble([tmp_path / "ens", tiny_run[0]], tmp_path / "ens2")
    shutil.copytree(tiny_run[0], tmp_path / "copy")
    with pytest.raises(ValueError, match="hold the same weights"):
        make_ensemble([tiny_run[0], tmp_path / "copy"], tmp_path / "ens3")
    third = tmp_path / "seed2"
    run_experiment(tiny(seed=2, epochs=1), third)
    make_ensemble([tmp_path / "ens", third], tmp_path / "flat")
    members = json.loads((tmp_path / "flat" / "ensemble.json").read_text())["members"]
    assert sorted(members) == sorted(str(p.resolve()) for p in (tiny_run[0], second_seed, third))
    shutil.rmtree(third)
    assert main(["predict", str(tmp_path / "flat"), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "a member of the ensemble" in err and "is gone" in err


def test_mismatched_members_are_refused_naming_the_difference(tiny_run, tmp_path):
    other = tmp_path / "bigger"
    run_experiment(tiny(epochs=1, **{"data.image_size": 20}), other)
    with pytest.raises(ValueError, match=r"`data.image_size` differs \(16 vs 20\)"):
        make_ensemble([tiny_run[0], other], tmp_path / "ens")
    resplit = tmp_path / "resplit"
    run_experiment(tiny(epochs=1, **{"data.split_seed": 5}), resplit)
    with pytest.raises(ValueError, match="the splits differ"):
        make_ensemble([tiny_run[0], resplit], tmp_path / "ens")
    with pytest.raises(ValueError, match="at least two runs"):
        make_ensemble([tiny_run[0]], tmp_path / "ens")
    assert not (tmp_path / "ens" / "metrics.json").exists()


def test_an_ensemble_calibrates_evaluates_and_exports_like_a_run(tiny_run, second_seed, tmp_path):
    from riskcl.cli import main

    out = tmp_path / "ens"
    assert main(["ensemble", str(tiny_run[0]), str(second_seed), "--out", str(out)]) == 0
    assert main(["calibrate", str(out), "--alpha", "0.3", "--method", "crc"]) == 0
    assert json.loads((out / "calibration.json").read_text())["certified"]
    assert main(["evaluate", str(out), "--default-rule"]) == 0  # predicts the test split again with the members
    again = json.loads((out / "eval_test.json").read_text())
    assert again["cer"] == pytest.approx(json.loads((out / "metrics.json").read_text())["cer"])
    assert main(["export", str(out), "--out", str(tmp_path / "export"), "--check-limit", "32"]) == 0
    meta = json.loads((tmp_path / "export" / "riskcl_export.json").read_text())
    assert meta["parity"]["decision_flips"] == 0 and meta["parity"]["max_abs_diff_p_malignant"] <= 1e-4
    # rerunning into the same folder with the same members is allowed; other members are refused
    assert main(["ensemble", str(tiny_run[0]), str(second_seed), "--out", str(out)]) == 0
    assert main(["ensemble", str(tiny_run[0]), str(tiny_run[0]), "--out", str(out)]) == 2
