"""Models through timm (riskcl.models): random init, local safetensors, offline behaviour, name checks."""
from __future__ import annotations

import pytest
import torch


def test_create_model_random_local_file_and_offline_errors(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from riskcl.models import WeightsUnavailableError, create_model

    m = create_model("resnet10t", 4, pretrained=False)
    assert m.riskcl_weights == "random" and m.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    # A local "pretrained" file with a 1000-class head: the head is dropped, the body loaded.
    donor = create_model("resnet10t", 1000, pretrained=False)
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(tmp_path / "w.safetensors"))
    m2 = create_model("resnet10t", 4, weights_path=tmp_path / "w.safetensors")
    assert torch.equal(m2.conv1[0].weight, donor.conv1[0].weight) and "new head" in m2.riskcl_weights
    torch.save(donor.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="safetensors"):
        create_model("resnet10t", 4, weights_path=tmp_path / "w.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="model.pretrained=false"):
        create_model("resnet10t", 4, pretrained=True)
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        m3 = create_model("resnet10t", 4, pretrained="auto")
    assert m3.riskcl_weights.startswith("random")
    with pytest.raises(ValueError, match="Unknown timm model"):
        create_model("resnet9000", 4, pretrained=False)
