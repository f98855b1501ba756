"""The training objectives: what each batch holds and the loss it is turned into."""

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepfm.config import parse_config
from deepfm.data.batches import epoch_examples, feature_tensors
from deepfm.data.sampling import RatedIndex
from deepfm.models import build_model
from deepfm.models.base import RankingModel
from deepfm.models.checkpoint import load_model
from deepfm.models.layers import fm_interaction
from deepfm.training.loop import TrainingError, train
from deepfm.training.objectives import (
    GroupedPointwise,
    NextItemSoftmax,
    Pointwise,
    make_objective,
)


def _rated(split):
    return RatedIndex.of_train(split)


def _all(batches):
    return [torch.cat(parts) for parts in zip(*batches, strict=True)]


def _examples(users, items, labels, history):
    """One (user, item, label, history) tuple per example, for multiset comparisons."""
    return [
        (int(u), int(i), int(y), tuple(h.tolist()))
        for u, i, y, h in zip(users, items, labels, history, strict=True)
    ]


def test_pointwise_epoch_holds_the_right_examples_with_their_own_history(split):
    k = 3
    rated = _rated(split)
    objective = Pointwise(split, rated, seed=5, negatives_per_positive=k, device="cpu")
    users, items, labels, history = _all(objective.batches(2, 97, torch.Generator().manual_seed(0)))
    got = _examples(users, items, labels, history)
    rated_in_train = rated.contains(users.numpy(), items.numpy())
    h = split.train_history
    pos = np.flatnonzero(split.train_labels == 1)

    def rows(r, label):
        return Counter(
            (int(split.train_users[i]), int(split.train_items[i]), label, tuple(h[i].tolist()))
            for i in r
        )

    # the train rows: every positive once with label 1, with its own history row
    from_train = Counter(e for e, seen in zip(got, rated_in_train, strict=True) if seen)
    assert from_train == rows(pos, 1)
    # sampled negatives: k per positive, label 0, each with that positive's user and history
    # (a user's history differs from one positive to the next, so the pair names the positive)
    sampled = [e for e, seen in zip(got, rated_in_train, strict=True) if not seen]
    assert {e[2] for e in sampled} == {0}
    per_positive = Counter((u, hist) for u, _, _, hist in sampled)
    assert per_positive == Counter(
        {(int(split.train_users[r]), tuple(h[r].tolist())): k for r in pos}
    )
    assert len(got) == len(pos) * (1 + k)


def test_grouped_batches_hold_each_target_and_its_own_negatives(split):
    rated = _rated(split)
    objective = GroupedPointwise(split, rated, seed=5, negatives_per_positive=3, device="cpu")
    users, items, history = _all(objective.batches(2, 200, torch.Generator().manual_seed(0)))
    # the same items as the pointwise epoch draws for the same seed and epoch, grouped
    pu, pi, py, prow = epoch_examples(split, rated, seed=5, epoch=2, negatives_per_positive=3)
    pos = py == 1
    expected = {
        (int(u), int(i)): sorted(pi[~pos][prow[~pos] == r].tolist())
        for u, i, r in zip(pu[pos], pi[pos], prow[pos], strict=True)
    }
    got = {(int(u), int(g[0])): sorted(g[1:].tolist()) for u, g in zip(users, items, strict=True)}
    assert got == expected and len(got) == int(pos.sum())
    # every group's history is its positive's own row
    rows = {(int(u), int(i)): r for u, i, r in zip(pu[pos], pi[pos], prow[pos], strict=True)}
    for u, g, h in zip(users, items, history, strict=True):
        assert h.tolist() == split.train_history[rows[(int(u), int(g[0]))]].tolist()
        assert not rated.contains(np.full(3, int(u)), g[1:].numpy()).any()


def test_next_item_softmax_is_cross_entropy_over_the_catalogue(split):
    cfg = parse_config({"model": "sasrec", "sasrec": {"embed_dim": 8, "dropout": 0.0}})
    torch.manual_seed(0)
    model = build_model("sasrec", split.schema, feature_tensors(split), cfg.model_params).eval()
    objective = NextItemSoftmax(split, _rated(split), device="cpu")
    users, targets, history = _all(objective.batches(1, 64, torch.Generator().manual_seed(0)))
    positives = np.flatnonzero(split.train_labels == 1)
    assert len(users) == len(positives)  # every train positive is a target once per epoch
    assert sorted(zip(users.tolist(), targets.tolist(), strict=True)) == sorted(
        zip(split.train_users[positives].tolist(), split.train_items[positives].tolist(),
            strict=True)
    )  # fmt: skip
    loss, _ = objective.loss(model, (users[:32], targets[:32], history[:32]))
    logits = torch.stack(
        [model(u.repeat(split.schema.num_items), torch.arange(split.schema.num_items),
               h.repeat(split.schema.num_items, 1)) for u, h in zip(users[:32], history[:32],
                                                                    strict=True)]
    )  # fmt: skip
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets[:32]))


def test_sasrec_trains_through_the_loop_and_reloads(split, tmp_path):
    cfg = parse_config(
        {"model": "sasrec", "seed": 2, "sasrec": {"embed_dim": 8, "num_layers": 1},
         "train": {"epochs": 3, "min_epochs": 3, "batch_size": 128, "num_threads": 1,
                   "learning_rate": 0.01}}
    )  # fmt: skip
    out = train(cfg, split, tmp_path / "m.pt", progress=False)
    assert out.epochs_run == 3 and np.isfinite(out.kept_val["full_ndcg@10"])
    model, payload = load_model(tmp_path / "m.pt")
    assert payload["model"] == "sasrec" and payload["model_params"]["loss"] == "softmax"
    assert type(model).__name__ == "SASRec"
    assert isinstance(make_objective(cfg, split, _rated(split), "cpu"), NextItemSoftmax)
    bce = parse_config({"model": "sasrec", "sasrec": {"loss": "bce"}})
    assert isinstance(make_objective(bce, split, _rated(split), "cpu"), Pointwise)


def test_grouped_bce_is_pointwise_bce_over_whole_groups_with_as_many_steps(split):
    rated = _rated(split)
    grouped = GroupedPointwise(split, rated, seed=5, negatives_per_positive=3, device="cpu")
    pointwise = Pointwise(split, rated, seed=5, negatives_per_positive=3, device="cpu")
    batches = list(grouped.batches(2, 40, torch.Generator().manual_seed(0)))
    assert all(b[1].shape[1] == 4 for b in batches) and len(batches[0][0]) == 10  # 40 pairs
    flat = list(pointwise.batches(2, 40, torch.Generator().manual_seed(0)))
    assert len(batches) == len(flat)  # train.batch_size counts pairs for both
    # the same pairs as the pointwise epoch, labels 1 for the target and 0 for the rest
    users, items, history = _all(batches)
    g = items.shape[1]
    labels = torch.zeros(items.shape)
    labels[:, 0] = 1
    got = _examples(users.repeat_interleave(g), items.reshape(-1), labels.reshape(-1),
                    history.repeat_interleave(g, dim=0))  # fmt: skip
    want = _examples(*_all(flat))
    assert Counter(got) == Counter(want)
    cfg = parse_config({"deepfm": {"embed_dim": 4, "dnn_hidden": [8], "dropout": 0.0}})
    torch.manual_seed(0)
    model = build_model("deepfm", split.schema, feature_tensors(split), cfg.model_params).eval()
    loss, n = grouped.loss(model, batches[0])
    u, i, h = batches[0]
    flat_logits = model(u.repeat_interleave(4), i.reshape(-1), h.repeat_interleave(4, dim=0))
    want_loss = F.binary_cross_entropy_with_logits(flat_logits, labels[:10].reshape(-1))
    assert n == 40
    torch.testing.assert_close(loss, want_loss)


@pytest.mark.parametrize(
    "section",
    [
        {},
        {
            "history_pooling": "transformer",
            "history_layers": 1,
            "recent_items": 1,
        },
    ],
)
def test_deepfm_group_logits_equal_the_expanded_pairs_with_their_gradients(split, section):
    cfg = parse_config(
        {"deepfm": {"embed_dim": 4, "dnn_hidden": [8, 4], "dropout": 0.0, **section}}
    )
    torch.manual_seed(0)
    model = build_model("deepfm", split.schema, feature_tensors(split), cfg.model_params)
    model.train()
    objective = GroupedPointwise(split, _rated(split), seed=1, negatives_per_positive=4,
                                 device="cpu")  # fmt: skip
    users, items, history = next(objective.batches(0, 100, torch.Generator().manual_seed(0)))
    params = [p for p in model.parameters() if p.requires_grad]
    fast = model.group_logits(users, items, history)
    grads = torch.autograd.grad(fast.pow(2).sum(), params, allow_unused=True)
    slow = RankingModel.group_logits(model, users, items, history)
    slow_grads = torch.autograd.grad(slow.pow(2).sum(), params, allow_unused=True)
    assert fast.shape == (20, 5)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, slow_grads, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            # float32 sums in another order: an element near 0 of a tensor whose entries
            # reach ~1e2-1e4 differs by the rounding of those, not by 1e-5 (seen on AVX-512)
            scale = float(b.abs().max())
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 + 1e-6 * scale)


def test_catalogue_weight_adds_a_softmax_over_every_item_of_the_first_order_and_fm_part(split):
    section = {"embed_dim": 4, "dnn_hidden": [8, 4], "dropout": 0.0, "loss": "bce_grouped"}
    cfg = parse_config({"deepfm": {**section, "history_pooling": "transformer"}})
    torch.manual_seed(0)
    model = build_model("deepfm", split.schema, feature_tensors(split), cfg.model_params).eval()
    objective = make_objective(cfg, split, _rated(split), "cpu")
    batch = next(objective.batches(0, 40, torch.Generator().manual_seed(0)))
    users, items, history = batch
    bce, n = objective.loss(model, batch)
    groups, catalogue = model.group_and_catalogue_logits(users, items, history)
    torch.testing.assert_close(groups, model.group_logits(users, items, history))
    # the slow way: every (user, item) pair's first-order + FM terms, one pair at a time
    num_items = split.schema.num_items
    assert catalogue.shape == (len(users), num_items)
    for row in (0, len(users) - 1):
        u = users[row].repeat(num_items)
        h = history[row].repeat(num_items, 1)
        every = torch.arange(num_items)
        emb = model.embed(model.embedding, u, every, h)
        want = model.first_order(u, every, h) + fm_interaction(emb)
        torch.testing.assert_close(catalogue[row], want, rtol=1e-5, atol=1e-5)
    weighted = make_objective(
        parse_config({"deepfm": {**section, "catalogue_weight": 0.5}}), split, _rated(split), "cpu"
    )
    both, n_both = weighted.loss(model, batch)
    manual = F.cross_entropy(catalogue, items[:, 0])
    assert n_both == n == items.numel()
    torch.testing.assert_close(both, bce + 0.5 * manual)
    assert float(manual) > 0


def test_catalogue_weight_reaches_the_objective_and_needs_bce_grouped(split):
    rated = _rated(split)
    on = parse_config({"deepfm": {"loss": "bce_grouped", "catalogue_weight": 0.25}})
    assert make_objective(on, split, rated, "cpu").catalogue_weight == 0.25
    off = parse_config({"deepfm": {"loss": "bce_grouped"}})
    assert make_objective(off, split, rated, "cpu").catalogue_weight == 0.0
    wrong = parse_config({"deepfm": {"loss": "bce", "catalogue_weight": 0.25}})
    with pytest.raises(TrainingError, match=r"catalogue_weight is 0.25.*set deepfm.loss to bce_gr"):
        make_objective(wrong, split, rated, "cpu")


def test_grouped_bce_refuses_zero_negatives(split):
    rated = _rated(split)
    none = parse_config({"deepfm": {"loss": "bce_grouped"}, "train": {"negatives_per_positive": 0}})
    with pytest.raises(TrainingError, match=r"loss bce_grouped needs.*negatives_per_positive >= 1"):
        make_objective(none, split, rated, "cpu")


def test_rated_targets_reach_every_objective(split):
    rated = _rated(split)
    n_rows, n_pos = len(split.train_labels), int((split.train_labels == 1).sum())
    assert n_pos < n_rows
    gen = torch.Generator().manual_seed(0)
    for section, want in (({"deepfm": {"loss": "bce_grouped"}}, "deepfm"), ({}, "deepfm")):
        for targets, count in (("positives", n_pos), ("rated", n_rows)):
            cfg = parse_config({**section, "train": {"targets": targets}})
            objective = make_objective(cfg, split, rated, "cpu")
            seen = sum(len(b[0]) for b in objective.batches(0, 64, gen))
            per_target = 1 if section else 1 + cfg.train.negatives_per_positive
            assert seen == count * per_target, (want, targets)
