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
from deepfm.training.checkpoint import load_model
from deepfm.training.loop import TrainingError, train
from deepfm.training.objectives import (
    NextItemSoftmax,
    Pointwise,
    SampledSoftmax,
    make_objective,
)


def _rated(split):
    s = split.schema
    return RatedIndex(split.train_users, split.train_items, s.num_users, s.num_items)


def _all(batches):
    return [torch.cat(parts) for parts in zip(*batches, strict=True)]


def _examples(users, items, labels, history):
    """One (user, item, label, history) tuple per example, for multiset comparisons."""
    return [
        (int(u), int(i), int(y), tuple(h.tolist()))
        for u, i, y, h in zip(users, items, labels, history, strict=True)
    ]


@pytest.mark.parametrize("observed", [False, True])
def test_pointwise_epoch_holds_the_right_examples_with_their_own_history(split, observed):
    k = 3
    rated = _rated(split)
    objective = Pointwise(
        split, rated, seed=5, negatives_per_positive=k, observed_negatives=observed, device="cpu"
    )
    users, items, labels, history = _all(objective.batches(2, 97, torch.Generator().manual_seed(0)))
    got = _examples(users, items, labels, history)
    rated_in_train = rated.contains(users.numpy(), items.numpy())
    h = split.train_history
    pos = np.flatnonzero(split.train_labels == 1)
    obs = np.flatnonzero(split.train_labels == 0)

    def rows(r, label):
        return Counter(
            (int(split.train_users[i]), int(split.train_items[i]), label, tuple(h[i].tolist()))
            for i in r
        )

    # the train rows: every positive once with label 1; the observed negatives only when the
    # switch is on, with label 0; each with its own history row
    from_train = Counter(e for e, seen in zip(got, rated_in_train, strict=True) if seen)
    assert from_train == rows(pos, 1) + (rows(obs, 0) if observed else Counter())
    # sampled negatives: k per positive, label 0, each with that positive's user and history
    # (a user's history differs from one positive to the next, so the pair names the positive)
    sampled = [e for e, seen in zip(got, rated_in_train, strict=True) if not seen]
    assert {e[2] for e in sampled} == {0}
    per_positive = Counter((u, hist) for u, _, _, hist in sampled)
    assert per_positive == Counter(
        {(int(split.train_users[r]), tuple(h[r].tolist())): k for r in pos}
    )
    assert len(got) == len(pos) * (1 + k) + (len(obs) if observed else 0)


def test_sampled_softmax_groups_hold_each_positive_and_its_own_negatives(split):
    rated = _rated(split)
    objective = SampledSoftmax(split, rated, seed=5, negatives_per_positive=3, device="cpu")
    users, items, history = _all(objective.batches(2, 50, torch.Generator().manual_seed(0)))
    # the same items as the pointwise epoch draws for the same seed and epoch, grouped
    pu, pi, py, prow = epoch_examples(
        split, rated, seed=5, epoch=2, negatives_per_positive=3, observed_negatives=False
    )
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


def test_sampled_softmax_loss_ranks_the_positive_against_its_group(split):
    cfg = parse_config({"deepfm": {"embed_dim": 4, "dnn_hidden": [8], "dropout": 0.0}})
    torch.manual_seed(0)
    model = build_model("deepfm", split.schema, feature_tensors(split), cfg.model_params).eval()
    objective = SampledSoftmax(split, _rated(split), seed=1, negatives_per_positive=4, device="cpu")
    batch = next(objective.batches(1, 16, torch.Generator().manual_seed(0)))
    loss, n = objective.loss(model, batch)
    users, items, history = batch
    manual = []
    for u, group, h in zip(users, items, history, strict=True):
        logits = model(u.repeat(5), group, h.repeat(5, 1))
        manual.append(-torch.log_softmax(logits, 0)[0])
    assert n == 16
    torch.testing.assert_close(loss, torch.stack(manual).mean())


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


def test_softmax_losses_refuse_observed_negatives_and_zero_negatives(split):
    rated = _rated(split)
    both = parse_config(
        {"deepfm": {"loss": "sampled_softmax"}, "train": {"observed_negatives": True}}
    )
    with pytest.raises(TrainingError, match=r"observed_negatives.*needs loss bce"):
        make_objective(both, split, rated, "cpu")
    none = parse_config(
        {"deepfm": {"loss": "sampled_softmax"}, "train": {"negatives_per_positive": 0}}
    )
    with pytest.raises(TrainingError, match=r"negatives_per_positive >= 1"):
        make_objective(none, split, rated, "cpu")


def test_rated_targets_refuse_observed_negatives_and_reach_every_objective(split):
    rated = _rated(split)
    both = parse_config({"train": {"targets": "rated", "observed_negatives": True}})
    with pytest.raises(TrainingError, match=r"targets is 'rated'.*observed_negatives to false"):
        make_objective(both, split, rated, "cpu")
    n_rows, n_pos = len(split.train_labels), int((split.train_labels == 1).sum())
    assert n_pos < n_rows
    gen = torch.Generator().manual_seed(0)
    for section, want in (({"deepfm": {"loss": "sampled_softmax"}}, "deepfm"), ({}, "deepfm")):
        for targets, count in (("positives", n_pos), ("rated", n_rows)):
            cfg = parse_config({**section, "train": {"targets": targets}})
            objective = make_objective(cfg, split, rated, "cpu")
            seen = sum(len(b[0]) for b in objective.batches(0, 64, gen))
            per_target = 1 if section else 1 + cfg.train.negatives_per_positive
            assert seen == count * per_target, (want, targets)
