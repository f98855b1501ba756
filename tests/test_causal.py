"""The causal leave-one-out, end to end, for every registered model (docs/protocol.md).

A planted future: after each evaluated user's test item come ratings of the test item's
"twin" and of other items (one in the test item's own second, placed after it by the
tie-break). A live system could not know them when the held-out items came, so:

- appending them changes no metric and no per-user rank, validation or test, bit for bit;
- removing the ratings strictly between a user's validation and test items changes no
  validation metric or rank.

Under `split.cut: none` (the older reading, where they train) the same planted future moves
the metrics: the check has teeth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepfm.config import parse_config
from deepfm.data.splitting import split_dataset
from deepfm.evaluation.protocol import evaluate_checkpoint
from deepfm.models import MODELS
from deepfm.training.loop import train
from tests.conftest import ML_FIELDS, PARAMS

# each model's params.yaml section, run small and short: the invariances are about what the
# model is given, not how well it learns
SMALL = {"embed_dim": 8, "dnn_hidden": [16], "cin_layers": [8, 8], "attention_dim": 4}
SHORT = {"epochs": 2, "min_epochs": 2}  # also where a section's own `train:` asks for more
CASES = {name: {k: SMALL.get(k, v) for k, v in PARAMS[name].items()} for name in MODELS}
for _section in CASES.values():
    if "train" in _section:
        _section["train"] = {**_section["train"], **SHORT}
# the family's history encoder with the catalogue softmax (tuning log, rounds 13-14)
CASES["deepfm+encoder"] = {
    **CASES["deepfm"],
    **{"history_pooling": "transformer", "loss": "bce_grouped", "catalogue_weight": 0.5},
}


def _config(case: str, cut: str, tie_break: str = "item_id"):
    model = case.split("+")[0]
    train_params = {**SHORT, "val_every": 1, "batch_size": 64, "num_threads": 1}
    return parse_config({
        "seed": 5, "model": model, model: CASES[case], "train": train_params,
        "split": {"history_length": 4, "sequence": "rated", "tie_break": tie_break, "cut": cut},
    })  # fmt: skip


def _split(cfg, interactions, users, items):
    s = cfg.split
    return split_dataset(
        interactions, users, items, fields=ML_FIELDS, seed=cfg.seed,
        min_positives=s.min_positives, num_negatives=25, history_length=s.history_length,
        sequence=s.sequence, tie_break=s.tie_break, cut=s.cut,
    )  # fmt: skip


def _run(cfg, interactions, users, items, folder) -> dict:
    """Train and evaluate as the train and eval stages do: {split: (metrics, ranks)}."""
    data = _split(cfg, interactions, users, items)
    checkpoint = folder / "model.pt"
    train(cfg, data, checkpoint, progress=False)
    result = evaluate_checkpoint(data, checkpoint, ks=[5, 10], batch_users=8, threads=1)
    ranks = result.ranks.drop(columns="num_candidates")
    return {
        name: (result.metrics[name], ranks[ranks.split == name].reset_index(drop=True))
        for name in ("val", "test")
    }


def _planted_future(interactions, users, items, tie_break: str) -> pd.DataFrame:
    """Label-0 ratings after each evaluated user's test item: its twin (the next item id)
    a second later, another unrated item later still, and with the item_id tie-break one in
    the test item's own second with a larger item id (ordered after it)."""
    held = _split(_config("itempop", "causal", tie_break), interactions, users, items)
    rated = set(zip(interactions.user_id, interactions.item_id, strict=True))
    when = interactions.set_index(["user_id", "item_id"]).timestamp
    ids = items.item_id.to_numpy()
    rows = []
    for u, t in zip(held.user_ids[held.test.users], held.item_ids[held.test.items], strict=True):
        after_t = np.roll(ids, -int(np.searchsorted(ids, t)) - 1)  # t + 1, t + 2, ... wrapping
        unrated = [i for i in after_t if (u, i) not in rated]
        stamp = int(when[u, t])
        rows += [(u, unrated[0], 2.0, stamp + 1), (u, unrated[1], 1.0, stamp + 100)]
        same_second = [i for i in unrated[2:] if i > t]
        if tie_break == "item_id" and same_second:
            rows.append((u, same_second[0], 3.0, stamp))
    future = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    future = future.astype(interactions.dtypes[future.columns].to_dict())
    return future.assign(label=np.int8(0)).astype({"label": interactions.label.dtype})


def _between(interactions, users, items) -> pd.Series:
    """Which rows lie strictly between their user's validation and test items."""
    held = _split(_config("itempop", "causal"), interactions, users, items)
    seen = {(held.user_ids[u], held.item_ids[i]) for u, i in held.test_seen}
    val = {(held.user_ids[u], held.item_ids[i]) for u, i in zip(held.val.users, held.val.items,
                                                               strict=True)}  # fmt: skip
    pairs = zip(interactions.user_id, interactions.item_id, strict=True)
    return pd.Series([p in seen - val for p in pairs], index=interactions.index)


def _same(a: dict, b: dict, name: str) -> bool:
    (ma, ra), (mb, rb) = a[name], b[name]
    return ma == mb and ra.equals(rb)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_future_changes_no_metric_of_any_model(canonical, tmp_path, case):
    interactions, users, items = canonical
    future = _planted_future(interactions, users, items, "item_id")
    assert (future.groupby("user_id").size() >= 2).all() and (future.rating == 3).any()
    with_future = pd.concat([interactions, future], ignore_index=True)
    cfg = _config(case, "causal")
    base = _run(cfg, interactions, users, items, tmp_path / "a")
    more = _run(cfg, with_future, users, items, tmp_path / "b")
    assert _same(base, more, "val") and _same(base, more, "test")
    between = _between(interactions, users, items)
    assert between.sum() > 10
    fewer = _run(cfg, interactions[~between], users, items, tmp_path / "c")
    assert _same(base, fewer, "val")


@pytest.mark.parametrize("case", ["item_cooccurrence", "deepfm"])
def test_the_future_changes_nothing_under_the_random_tie_break(canonical, tmp_path, case):
    interactions, users, items = canonical
    # coarse timestamps: many same-second ratings, whose seeded order must not move when
    # ratings are added after them
    coarse = interactions.assign(timestamp=interactions.timestamp // 10**6 * 10**6)
    future = _planted_future(coarse, users, items, "random")
    cfg = _config(case, "causal", tie_break="random")
    base = _run(cfg, coarse, users, items, tmp_path / "a")
    more = _run(cfg, pd.concat([coarse, future], ignore_index=True), users, items, tmp_path / "b")
    assert _same(base, more, "val") and _same(base, more, "test")


@pytest.mark.parametrize("case", sorted(CASES))
def test_without_the_cut_the_planted_future_moves_the_metrics(canonical, tmp_path, case):
    interactions, users, items = canonical
    future = _planted_future(interactions, users, items, "item_id")
    cfg = _config(case, "none")
    base = _run(cfg, interactions, users, items, tmp_path / "a")
    more = _run(cfg, pd.concat([interactions, future], ignore_index=True), users, items,
                tmp_path / "b")  # fmt: skip
    assert not (_same(base, more, "val") and _same(base, more, "test"))
