import numpy as np
import pytest
import torch

from deepfm.config import ItemPopConfig
from deepfm.data.batches import feature_tensors
from deepfm.models import build_model


@pytest.mark.parametrize("count", ["ratings", "positives"])
def test_itempop_is_smoothed_train_popularity(split, count):
    model = build_model("itempop", split.schema, feature_tensors(split), ItemPopConfig(count=count))
    model.fit(split)
    items = split.train_items
    counted = items if count == "ratings" else items[split.train_labels == 1]
    counts = np.bincount(counted, minlength=split.schema.num_items)
    scores = model.item_logits.numpy()
    # the same order as the counts, ties included
    order_scores = np.sign(scores[:, None] - scores[None, :])
    assert (order_scores == np.sign(counts[:, None] - counts[None, :])).all()
    n = len(np.unique(split.train_users))
    np.testing.assert_allclose(1 / (1 + np.exp(-scores)), (counts + 1) / (n + 2), rtol=1e-5)


def test_itempop_logits_by_hand():
    # 4 users of whom 3 have train rows (4 rows), 4 items; item 2 is rated by two users (one
    # positively), item 3 by nobody. p = (count + a) / (train users + 2a), a = 1: ratings
    # 2/5, 2/5, 3/5, 1/5; positives 2/5, 1/5, 2/5, 1/5.
    from deepfm.data.schema import Schema

    class Tiny:
        train_users = np.array([0, 0, 1, 2])
        train_items = np.array([0, 2, 1, 2])
        train_labels = np.array([1, 0, 0, 1])

    for count, probs in {"ratings": [2, 2, 3, 1], "positives": [2, 1, 2, 1]}.items():
        model = build_model(
            "itempop",
            Schema([], num_users=4, num_items=4),
            {k: torch.zeros(4, 0) for k in ("user_features", "item_features", "item_genres")},
            ItemPopConfig(count=count, smoothing=1.0),
        )
        model.fit(Tiny)
        p = np.array(probs) / 5
        np.testing.assert_allclose(model.item_logits.numpy(), np.log(p / (1 - p)), rtol=1e-6)
