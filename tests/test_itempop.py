import numpy as np
import pytest

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
