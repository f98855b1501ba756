"""The switches for large-batch and GPU training (issue: beyond one machine): the learning
rate scaling rule and warm-up, epochs built on the training device, torch.compile."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from deepfm.config import ConfigError, TrainConfig, parse_config
from deepfm.data.batches import DeviceEpochs, epoch_examples, sample_negatives_torch
from deepfm.data.sampling import RatedIndex
from deepfm.training.loop import train
from deepfm.training.objectives import GroupedPointwise, Pointwise
from deepfm.training.optim import make_optimizer, make_scheduler, scaled_learning_rate


def _rated(split):
    s = split.schema
    return RatedIndex(split.train_users, split.train_items, s.num_users, s.num_items)


@pytest.mark.parametrize(
    ("rule", "batch", "want"),
    [("none", 16384, 1e-3), ("linear", 16384, 8e-3), ("sqrt", 16384, 1e-3 * math.sqrt(8)),
     ("sqrt", 512, 5e-4), ("linear", 2048, 1e-3)],
)  # fmt: skip
def test_the_learning_rate_scales_with_the_batch_by_the_declared_rule(rule, batch, want):
    cfg = TrainConfig(learning_rate=1e-3, batch_size=batch, lr_scaling=rule)
    assert scaled_learning_rate(cfg) == pytest.approx(want, rel=1e-12)
    optimizer = make_optimizer(torch.nn.Linear(2, 1), cfg)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([want, want], rel=1e-12)


@pytest.mark.parametrize("scheduler", ["cosine", "none"])
def test_warm_up_ramps_the_rate_then_the_schedule_runs_over_the_remaining_epochs(scheduler):
    cfg = TrainConfig(epochs=7, warmup_epochs=3, scheduler=scheduler, learning_rate=1.0)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    schedule = make_scheduler(optimizer, cfg)
    rates = []
    for _ in range(cfg.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    main = [1.0, 1.0, 1.0, 1.0]
    if scheduler == "cosine":  # CosineAnnealingLR over the 4 epochs after the warm-up
        main = [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    np.testing.assert_allclose(rates, [0.25, 0.5, 0.75, *main], atol=1e-12)
    # without warm-up the cosine schedule is torch's own, over every epoch, as before
    plain = make_scheduler(torch.optim.SGD([weight], lr=1.0), TrainConfig(epochs=7))
    assert type(plain) is torch.optim.lr_scheduler.CosineAnnealingLR and plain.T_max == 7


def test_warm_up_errors():
    with pytest.raises(ConfigError, match=r"'train\.warmup_epochs' is 5 but 'train\.epochs'"):
        parse_config({"train": {"epochs": 5, "min_epochs": 5, "warmup_epochs": 5}})
    with pytest.raises(ConfigError, match=r"warmup_epochs' needs train\.scheduler cosine"):
        parse_config({"train": {"warmup_epochs": 2, "scheduler": "plateau"}})


def _rated_pairs(seed=1, num_users=20, num_items=30):
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(num_users):
        k = 5 + u  # up to 24 of 30 rated: several rejection rounds
        items.extend(rng.choice(num_items, size=k, replace=False).tolist())
        users.extend([u] * k)
    return (
        np.array(users),
        np.array(items),
        RatedIndex(np.array(users), np.array(items), num_users, num_items),
    )


def _draw(rated, users, per_user, seed):
    t = torch.from_numpy
    return sample_negatives_torch(
        t(users), per_user, t(rated.keys), t(rated.counts()), rated.num_items,
        torch.Generator().manual_seed(seed),
    )  # fmt: skip


def test_device_negatives_are_never_rated_about_uniform_and_seeded():
    users, items, rated = _rated_pairs()
    query = np.repeat(np.arange(20), 50)
    neg_u, neg_i = _draw(rated, query, 40, seed=2)
    assert neg_u.dtype == neg_i.dtype == torch.int64
    np.testing.assert_array_equal(neg_u.numpy(), np.repeat(query, 40))  # entry-major
    pairs = set(zip(users.tolist(), items.tolist(), strict=True))  # independent of RatedIndex
    assert not any((u, i) in pairs for u, i in zip(neg_u.tolist(), neg_i.tolist(), strict=True))
    own = neg_i[neg_u == 0].numpy()
    allowed = np.setdiff1d(np.arange(30), rated.items_of(0))
    counts = np.bincount(own, minlength=30)[allowed]
    expected = len(own) / len(allowed)
    assert counts.min() > 0 and ((counts - expected) ** 2 / expected).sum() < 60  # df 24
    assert torch.equal(_draw(rated, query, 40, seed=2)[1], neg_i)
    assert not torch.equal(_draw(rated, query, 40, seed=3)[1], neg_i)


def test_device_negatives_refuse_a_user_who_rated_everything():
    rated = RatedIndex(np.array([0, 0, 1]), np.array([0, 1, 0]), 2, 2)
    with pytest.raises(ValueError, match="user index 0 rated every item"):
        _draw(rated, np.array([1, 0]), 2, seed=0)


@pytest.mark.parametrize("targets", ["positives", "rated"])
def test_device_epochs_hold_what_the_host_epoch_holds_with_other_negatives(split, targets):
    rated = _rated(split)
    kw = dict(seed=5, negatives_per_positive=3, targets=targets)
    host = epoch_examples(split, rated, epoch=2, **kw)
    device = DeviceEpochs(split, rated, device="cpu", **kw)
    got = [t.numpy() for t in device.examples(2)]
    assert [len(a) for a in got] == [len(a) for a in host]
    # the same layout: the targets, then their negatives in the same slots
    negative = np.zeros(len(host[0]), bool)
    n_targets = int((host[2] == 1).sum())
    negative[n_targets : n_targets * 4] = True
    for g, h in zip(got, host, strict=True):
        np.testing.assert_array_equal(g[~negative], h[~negative])
    for column in (0, 2, 3):  # users, labels, rows of the negatives: as on the host
        np.testing.assert_array_equal(got[column][negative], host[column][negative])
    neg_u, neg_i = got[0][negative], got[1][negative]
    assert not rated.contains(neg_u, neg_i).any()
    assert not np.array_equal(neg_i, host[1][negative])  # another stream
    again = [t.numpy() for t in device.examples(2)]
    np.testing.assert_array_equal(again[1], got[1])  # seeded by (seed, epoch)
    assert not np.array_equal(device.examples(3)[1].numpy()[negative], neg_i)


def test_device_epochs_reach_the_pointwise_and_grouped_batches(split):
    rated = _rated(split)
    kw = dict(seed=5, negatives_per_positive=3, device="cpu", device_epochs=True)
    pointwise = Pointwise(split, rated, **kw)
    batches = list(pointwise.batches(1, 64, torch.Generator().manual_seed(0)))
    users, items, labels = (torch.cat([b[k] for b in batches]) for k in range(3))
    draws = pointwise.on_device.negatives(1)
    assert Counter(items[labels == 0].tolist()) == Counter(draws[1].tolist())
    grouped = GroupedPointwise(split, rated, **kw)
    for users, group, _history in grouped.batches(1, 64, torch.Generator().manual_seed(0)):
        u = np.repeat(users.numpy(), group.shape[1] - 1)
        assert not rated.contains(u, group[:, 1:].reshape(-1).numpy()).any()
        assert rated.contains(users.numpy(), group[:, 0].numpy()).all()


def _cfg(**train):
    return parse_config(
        {"seed": 3,
         "deepfm": {"embed_dim": 8, "dnn_hidden": [16], "dropout": 0.0, "batch_norm": False,
                    "recent_items": 1, "history_pooling": "position"},
         "train": {"epochs": 3, "min_epochs": 3, "batch_size": 64, "num_threads": 1,
                   "val_every": 3, **train}}
    )  # fmt: skip


def test_training_with_device_epochs_is_reproducible_and_learns(split, tmp_path):
    runs = [train(_cfg(device_epochs=True), split, tmp_path / f"{i}.pt") for i in range(2)]
    assert runs[0].kept_val == runs[1].kept_val
    host = train(_cfg(), split, tmp_path / "host.pt")
    assert runs[0].kept_val != host.kept_val  # other negatives, other numbers
    assert runs[0].kept_val["full_ndcg@10"] > 0.5 * host.kept_val["full_ndcg@10"]


def test_compiled_training_steps_match_the_eager_ones(split, tmp_path):
    eager = train(_cfg(epochs=1, min_epochs=1, val_every=1), split, tmp_path / "e.pt")
    compiled = train(
        _cfg(epochs=1, min_epochs=1, val_every=1, compile_mode="default"), split, tmp_path / "c.pt"
    )
    for key, value in eager.kept_val.items():
        assert compiled.kept_val[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key


def test_compile_under_several_processes_is_refused():
    with pytest.raises(ConfigError, match=r"'train\.compile_mode' is 'default' with"):
        parse_config({"train": {"compile_mode": "default", "processes": 2}})
