import itertools

import numpy as np
import pytest
import torch

from deepfm.config import MODEL_SECTIONS, DeepFMConfig, ItemPopConfig
from deepfm.data.batches import feature_tensors
from deepfm.models import MODELS, build_model
from deepfm.models.layers import DNN, FeatureEmbedding, fm_interaction


def test_fm_identity_equals_naive_pairwise_sum():
    torch.manual_seed(0)
    emb = torch.randn(7, 5, 4, dtype=torch.float64)
    naive = torch.zeros(7, dtype=torch.float64)
    for i, j in itertools.combinations(range(5), 2):
        naive += (emb[:, i] * emb[:, j]).sum(-1)
    torch.testing.assert_close(fm_interaction(emb), naive)


def test_registry_matches_params_sections():
    assert set(MODELS) == set(MODEL_SECTIONS)
    with pytest.raises(ValueError, match="unknown model 'nope'; registered: deepfm, itempop"):
        build_model("nope", None, {}, None)


def test_genre_bag_mean_excludes_padding(split):
    emb = FeatureEmbedding(split.schema, 3)
    codes = torch.zeros(2, 2, dtype=torch.long)
    bags = [torch.tensor([[1, 2, 0, 0], [1, 0, 0, 0]])]
    out = emb.side("item", codes, bags)
    w = emb.bags["genres"].weight
    torch.testing.assert_close(out[0, -1], (w[1] + w[2]) / 2)
    torch.testing.assert_close(out[1, -1], w[1])


def test_dnn_shapes_and_he_init():
    torch.manual_seed(0)
    dnn = DNN(64, [256, 32], dropout=0.1)
    assert dnn(torch.randn(10, 64)).shape == (10,)
    std = dnn.first.weight.std().item()
    assert abs(std - np.sqrt(2 / 64)) < 0.02


@pytest.mark.parametrize("name", ["deepfm", "itempop"])
def test_forward_shapes_gradients_and_score_matrix(split, name):
    torch.manual_seed(0)
    params = {
        "deepfm": DeepFMConfig(embed_dim=4, dnn_hidden=[16, 8], dropout=0.0),
        "itempop": ItemPopConfig(),
    }[name]
    model = build_model(name, split.schema, feature_tensors(split), params)
    users = torch.from_numpy(split.train_users[:32].astype(np.int64))
    items = torch.from_numpy(split.train_items[:32].astype(np.int64))
    if model.trainable:
        out = model(users, items)
        assert out.shape == (32,)
        out.sum().backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None for g in grads)
        assert any(g.abs().sum() > 0 for g in model.embedding.parameters())
        # BatchNorm statistics in eval mode so that both paths compute the same function
        for _ in range(3):
            model(users, items)
    else:
        model.fit(split.train_users, split.train_items, split.train_labels)
    model.eval()
    u = torch.arange(split.schema.num_users)[:9]
    i = torch.arange(split.schema.num_items)
    with torch.no_grad():
        fast = model.score_matrix(u, i)
        slow = model(u.repeat_interleave(len(i)), i.repeat(len(u))).reshape(len(u), len(i))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_itempop_orders_by_train_popularity(split):
    model = build_model("itempop", split.schema, feature_tensors(split), ItemPopConfig())
    model.fit(split.train_users, split.train_items, split.train_labels)
    pos_counts = np.bincount(
        split.train_items[split.train_labels == 1], minlength=split.schema.num_items
    )
    scores = model.item_logits.numpy()
    order = np.argsort(pos_counts, kind="stable")
    assert (np.diff(scores[order]) >= -1e-6).all()
