"""Typed configs (riskcl.config): YAML loading, overrides, validation that names the key and value."""
from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _tiny import TINY, tiny
from riskcl.config import ConfigError, config_from_dict, load_config
from riskcl.experiment import run_experiment


# --- config validation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,match", [
    ({"epoch": 3}, "Unknown config key 'epoch' .*did you mean 'epochs'"),
    ({"loss.lamda": 1}, "Unknown config key 'loss.lamda'"),
    ({"epochs": "ten"}, r"`epochs`: expected int, but got 'ten'"),
    ({"epochs": 0}, r"`epochs` = 0: expected an integer >= 1"),
    ({"optim.lr": -1.0}, r"`optim.lr` = -1.0"),
    ({"loss.name": "rcl", "loss.params": {"lambda2": -3}}, "lambda2"),
    ({"loss.name": "rcl-propsed"}, "did you mean 'rcl-proposed'"),
    ({"loss.name": "rcl", "loss.params": {"lamda1": 3}}, "did you mean 'lambda1'"),
    ({"data.name": "brainmri"}, "data.name"),
    ({"data.name": "brain_mri"}, "data.root"),
    ({"data.on_bad_image": "ignore"}, "on_bad_image"),
    ({"data.options": {"scael": 1}}, "did you mean 'scale'"),
    ({"model.pretrained": "yes"}, "model.pretrained"),
    ({"select_metric": "auc"}, "select_metric"),
])
def test_bad_configs_name_key_and_value(override, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(TINY, override)


def test_taxonomy_not_matching_the_data_is_refused(tmp_path):
    tax = tmp_path / "t.yaml"
    tax.write_text("name: t\nbenign: [nevus, keratosis]\nmalignant: [melanoma, bcc]\n")
    with pytest.raises(ValueError, match="same names, same order"):
        run_experiment(tiny(**{"loss.taxonomy": str(tax)}), tmp_path / "r")


def test_yaml_is_loaded_safely_and_base_chain(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(evil)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nepochs: 7\nloss:\n  name: focal\n")
    cfg = load_config(child, ["optim.lr=0.5"])
    assert cfg.epochs == 7 and cfg.loss.name == "focal" and cfg.optim.lr == 0.5 and cfg.data.image_size == 16


_keys = st.sampled_from(["epochs", "seed", "name", "device", "data", "model", "loss", "optim", "bogus",
                         "select_metric", "amp"])
_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 50) | st.floats(allow_nan=True) |
                       st.text(max_size=8), lambda c: st.lists(c, max_size=3) |
                       st.dictionaries(st.sampled_from(["name", "lr", "root", "params", "lambda2", "x"]), c,
                                       max_size=3), max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=5))
def test_random_configs_give_typed_error_or_valid_config(data):
    try:
        cfg = config_from_dict({**TINY, **data})
    except ValueError:
        return
    assert cfg.epochs >= 1


def test_every_shipped_config_and_sweep_validates():
    from pathlib import Path

    from riskcl.experiment.sweep import load_sweep
    from riskcl.taxonomy import load_taxonomy

    root = Path(__file__).resolve().parents[1] / "configs"
    experiments = sorted(root.glob("*.yaml")) + sorted((root / "paper").glob("*.yaml"))
    assert len(experiments) >= 8
    for path in experiments:
        load_config(path, ["data.root=/data"])
    for path in sorted((root / "sweeps").glob("*.yaml")):
        assert load_sweep(path), path
    for path in sorted((root / "taxonomies").glob("*.yaml")):
        load_taxonomy(str(path))




def test_config_reference_doc_matches_the_dataclasses():
    """docs/CONFIG.md is generated from the dataclasses; regenerate with `python -m riskcl.config > docs/CONFIG.md`."""
    from pathlib import Path

    from riskcl.config import config_reference

    doc = (Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md").read_text()
    assert doc == config_reference(), "docs/CONFIG.md is stale: run `python -m riskcl.config > docs/CONFIG.md`"
    assert "| `data.limit_train` |" in doc and "| `cost.within` |" in doc
    assert "|  |" not in doc, "every key needs a meaning (a comment after its field)"
