"""The engine (riskcl.engine): the loop, the batch feeder and the CPU thread share."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from riskcl.data import create_datasets
from riskcl.engine import BatchFeeder, TrainingSlot, predict_logits, thread_count, train_one_epoch
from riskcl.losses import create_loss
from riskcl.models import create_model


def test_engine_few_steps_reduces_loss():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 16, 16)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = create_model("resnet10t", 2, pretrained=False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss = create_loss("ce")
    first = train_one_epoch(model, loader, loss, opt, torch.device("cpu"), progress=False)
    for _ in range(4):
        last = train_one_epoch(model, loader, loss, opt, torch.device("cpu"), progress=False, max_steps=3)
    assert last < first
    logits, target = predict_logits(model, loader, torch.device("cpu"), progress=False)
    assert logits.shape == (64, 2) and torch.equal(target, y)
    flip_logits, _ = predict_logits(model, loader, torch.device("cpu"), progress=False, tta="flip")
    probs = torch.softmax(flip_logits, 1)
    want = torch.stack([torch.softmax(model.eval()(v), 1) for v in (x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2))])
    torch.testing.assert_close(probs, want.mean(0), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def demo_train():
    return create_datasets("demo", image_size=16, scale=0.1, progress=False).datasets["train"]


def test_feeder_covers_the_split_once_in_a_seeded_order(demo_train):
    feeder = BatchFeeder(demo_train, 32, torch.device("cpu"), train=True, seed=3, prefetch=2)
    ys = torch.cat([y for _, y in feeder.batches(0)])
    assert len(ys) == len(demo_train) and len(feeder) == -(-len(demo_train) // 32)
    assert sorted(ys.tolist()) == sorted(demo_train.targets.tolist())
    a = [x for x, _ in feeder.batches(5)]
    b = [x for x, _ in BatchFeeder(demo_train, 32, torch.device("cpu"), train=True, seed=3, prefetch=0).batches(5)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # same (seed, epoch): same batches, prefetch or not
    c = [x for x, _ in feeder.batches(6)]
    assert not torch.equal(a[0], c[0])  # another epoch: another order and other augmentations


def test_feeder_draws_the_configured_augmentation(demo_train):
    from riskcl.data.augment import sample_params, to_model_input
    from riskcl.engine.feed import epoch_seed

    def first(augment):
        feeder = BatchFeeder(demo_train, 16, torch.device("cpu"), train=True, seed=3, prefetch=0, augment=augment)
        return next(iter(feeder.batches(2)))[0]

    assert torch.equal(first(None), first({}))  # no settings: the paper's rotation and flips, as before
    strong = {"rotation": 30.0, "flips": "horizontal", "scale": 0.4, "color": 0.2}
    feeder = BatchFeeder(demo_train, 16, torch.device("cpu"), train=True, seed=3, prefetch=0, augment=strong)
    order = feeder._order(2)[:16]
    raw = torch.from_numpy(np.stack([np.asarray(demo_train.images[demo_train.rows[i]]) for i in order]))
    params = sample_params(len(demo_train), torch.Generator().manual_seed(epoch_seed(3, 2) * 1009 + 1), **strong)
    torch.testing.assert_close(first(strong), to_model_input(raw, params[slice(0, 16)]))
    assert not torch.equal(first(strong), first(None))


def test_feeder_evaluation_batches_are_the_normalised_images_in_order(demo_train):
    from riskcl.data.augment import normalize

    feeder = BatchFeeder(demo_train, 50, torch.device("cpu"))
    x, y = next(iter(feeder))
    raw = torch.from_numpy(np.stack([np.asarray(demo_train.images[r]) for r in demo_train.rows[:50]]))
    torch.testing.assert_close(x, normalize(raw.permute(0, 3, 1, 2).float() / 255))
    assert torch.equal(y, torch.from_numpy(np.array(demo_train.targets[:50])))


def test_feeder_shards_an_epoch_across_ranks(demo_train):
    shards = [BatchFeeder(demo_train, 16, torch.device("cpu"), train=True, seed=1, rank=r, world_size=2)
              for r in (0, 1)]
    orders = [s._order(0) for s in shards]
    assert len(orders[0]) == len(orders[1]) == -(-len(demo_train) // 2)
    assert set(orders[0]) | set(orders[1]) == set(range(len(demo_train)))
    assert len(shards[0]) == len(shards[1])  # every rank runs the same number of steps
    assert len(shards[0]) == -(-len(orders[0]) // 16)  # the length is that of the rank's shard


def test_thread_count_is_fixed_unless_auto_shares_the_cores(tmp_path, monkeypatch):
    from riskcl.engine.threads import usable_cores

    assert thread_count(3) == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # `make test` sets it (two test workers share the cores)
    monkeypatch.setattr("riskcl.engine.threads.busy_cores", lambda: usable_cores())  # a fully busy machine ...
    with TrainingSlot(tmp_path) as slot:
        (tmp_path / f"{slot.path.name.rsplit('-', 1)[0]}-1").write_text("1")  # pid 1 is alive: a second training
        assert thread_count(None, slot) == usable_cores()  # ... changes nothing by default
        monkeypatch.setattr("riskcl.engine.threads.busy_cores", lambda: 0)
        assert slot.live() == 2 and thread_count("auto", slot) == max(1, usable_cores() // 2)  # auto shares
        (tmp_path / f"{slot.path.name.rsplit('-', 1)[0]}-999999999").write_text("x")  # a dead one is ignored
        assert slot.live() == 2
    assert not slot.path.exists()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert thread_count("auto") == max(1, usable_cores() // 64) and thread_count(None) == usable_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert thread_count(None) == 1


def test_the_same_seed_gives_the_same_predictions_beside_a_busy_process(tmp_path, monkeypatch):
    """A short training run twice with the default thread count, the second time while another process keeps a
    core busy: the thread count recorded and every prediction are identical."""
    import json
    import subprocess
    import sys

    import numpy as np
    import torch

    from riskcl.config import config_from_dict
    from riskcl.experiment import run_experiment

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cfg = config_from_dict({"name": "repro", "epochs": 1, "progress": False, "seed": 3,
                            "data": {"name": "demo", "image_size": 16, "limit_train": 64},
                            "model": {"name": "resnet10t", "pretrained": False}})
    before = torch.get_num_threads()
    busy = None
    try:
        run_experiment(cfg, tmp_path / "quiet")
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        run_experiment(cfg, tmp_path / "busy")
    finally:
        if busy is not None:
            busy.kill()
        torch.set_num_threads(before)
    threads = [json.loads((tmp_path / r / "metrics.json").read_text())["run"]["threads"] for r in ("quiet", "busy")]
    from riskcl.engine.threads import usable_cores

    assert threads[0] == threads[1] == usable_cores()  # the load chose nothing
    for name in ("predictions.npz", "calib_predictions.npz"):
        a, b = (np.load(tmp_path / r / name) for r in ("quiet", "busy"))
        np.testing.assert_array_equal(a["logits"], b["logits"])
