import itertools

import numpy as np
import pytest
import torch
from torch import nn

from deepfm.config import (
    MODEL_SECTIONS,
    AttentionDeepFMConfig,
    ConfigError,
    DeepFMConfig,
    EASEConfig,
    FMConfig,
    ItemCooccurrenceConfig,
    ItemPopConfig,
    LRConfig,
    SASRecConfig,
    XDeepFMConfig,
)
from deepfm.data.batches import feature_tensors
from deepfm.models import MODELS, RankingModel, build_model
from deepfm.models.layers import DNN, FeatureEmbedding, fm_interaction
from tests.conftest import ML_FIELDS


def test_fm_identity_equals_naive_pairwise_sum():
    torch.manual_seed(0)
    emb = torch.randn(7, 5, 4, dtype=torch.float64)
    naive = torch.zeros(7, dtype=torch.float64)
    for i, j in itertools.combinations(range(5), 2):
        naive += (emb[:, i] * emb[:, j]).sum(-1)
    torch.testing.assert_close(fm_interaction(emb), naive)


def test_registry_matches_params_sections():
    assert set(MODELS) == set(MODEL_SECTIONS)
    names = "attention_deepfm, deepfm, ease, fm, item_cooccurrence, itempop, lr, sasrec, xdeepfm"
    with pytest.raises(ValueError, match=f"unknown model 'nope'; registered: {names}"):
        build_model("nope", None, {}, None)
    with pytest.raises(TypeError, match="model 'fm' takes FMConfig params"):
        build_model("fm", None, {}, DeepFMConfig())


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


# the DeepFM family without its order-aware switches (params.yaml turns them on)
PLAIN = {"recent_items": 0, "history_pooling": "mean"}
SMALL_PARAMS = {
    "attention_deepfm": AttentionDeepFMConfig(
        embed_dim=4,
        attention_layers=2,
        attention_heads=2,
        attention_dim=3,
        dnn_hidden=[16, 8],
        target_attention=False,
        **PLAIN,
    ),
    "deepfm": DeepFMConfig(embed_dim=4, dnn_hidden=[16, 8], dropout=0.0, **PLAIN),
    "ease": EASEConfig(l2=5.0),
    "fm": FMConfig(embed_dim=4),
    "item_cooccurrence": ItemCooccurrenceConfig(window=2, recency_power=0.5),
    "itempop": ItemPopConfig(),
    "lr": LRConfig(),
    "sasrec": SASRecConfig(embed_dim=4, num_layers=2, num_heads=2, dropout=0.0, max_len=8),
    "xdeepfm": XDeepFMConfig(embed_dim=4, cin_layers=[6, 5], dnn_hidden=[16, 8], **PLAIN),
}


# the order-aware switches of the DeepFM family, on together (they need a history field)
ORDER_AWARE = {
    "deepfm+order": DeepFMConfig(
        embed_dim=4, dnn_hidden=[16, 8], dropout=0.0, recent_items=2, history_pooling="position",
    ),
    "deepfm+transformer": DeepFMConfig(
        embed_dim=4, dnn_hidden=[16, 8], dropout=0.1, recent_items=1,
        history_pooling="transformer", history_layers=1,
    ),
    "xdeepfm+order": XDeepFMConfig(
        embed_dim=4, cin_layers=[6, 5], dnn_hidden=[16, 8], recent_items=2,
        history_pooling="position",
    ),
    "attention_deepfm+order": AttentionDeepFMConfig(
        embed_dim=4, attention_layers=1, attention_heads=2, attention_dim=3, dnn_hidden=[16, 8],
        recent_items=1, target_attention=True,
    ),
}  # fmt: skip
CASES = {**SMALL_PARAMS, **ORDER_AWARE}


def test_every_model_has_small_test_params():
    assert set(SMALL_PARAMS) == set(MODELS)


@pytest.mark.parametrize("history_length", [4, 0])
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_shapes_gradients_and_score_matrix(canonical, case, history_length):
    from deepfm.data.splitting import split_dataset

    split = split_dataset(
        *canonical,
        fields=ML_FIELDS,
        seed=7,
        min_positives=3,
        num_negatives=30,
        history_length=history_length,
    )
    torch.manual_seed(0)
    name, params = case.split("+")[0], CASES[case]
    if (case in ORDER_AWARE or MODELS[name].requires_history) and not history_length:
        with pytest.raises(ValueError, match=r"split\.history_length"):
            build_model(name, split.schema, feature_tensors(split), params)
        return
    model = build_model(name, split.schema, feature_tensors(split), params)
    users = torch.from_numpy(split.train_users[:32].astype(np.int64))
    items = torch.from_numpy(split.train_items[:32].astype(np.int64))
    history = torch.from_numpy(split.train_history[:32]) if history_length else None
    if model.trainable:
        out = model(users, items, history)
        assert out.shape == (32,)
        out.sum().backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None for g in grads)
        tables = [m for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)]
        assert tables
        assert all(m.weight.grad.abs().sum() > 0 for m in tables)
        # BatchNorm statistics in eval mode so that both paths compute the same function
        for _ in range(3):
            model(users, items, history)
    else:
        model.fit(split)
    model.eval()
    u = torch.arange(split.schema.num_users)[:9]
    i = torch.arange(split.schema.num_items)
    # nine different histories, one per user (the history need not be that user's own)
    rows = np.linspace(0, len(split.train_history) - 1, 9).astype(np.int64)
    h = torch.from_numpy(split.train_history[rows]) if history_length else None
    pair_h = h.repeat_interleave(len(i), dim=0) if history_length else None
    with torch.no_grad():
        fast = model.score_matrix(u, i, h)
        slow = model(u.repeat_interleave(len(i)), i.repeat(len(u)), pair_h).reshape(len(u), -1)
        chunked = RankingModel.score_matrix(model, u, i, h, chunk=7)  # chunks that split users
        blocked = model.score_matrix(u, i, h, chunk=16)  # several user and item blocks
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blocked, slow, rtol=1e-5, atol=1e-5)
    if history_length and model.trainable:
        # the history is an input: another history changes the scores (LR starts at zero)
        with torch.no_grad():
            for param in model.parameters():
                param.normal_()
        fast = model.score_matrix(u, i, h)
        slow = model(u.repeat_interleave(len(i)), i.repeat(len(u)), pair_h).reshape(len(u), -1)
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)  # no weight left at 0
        other = torch.from_numpy(split.train_history[rows[::-1].copy()])
        assert not torch.allclose(model.score_matrix(u, i, other), fast)
        with pytest.raises(ValueError, match="schema has a history or context field: pass history"):
            model.score_matrix(u, i)


def test_history_is_mean_pooled_without_padding(split):
    emb = FeatureEmbedding(split.schema, 3)
    codes = torch.ones(2, 5, dtype=torch.long)
    history = [torch.tensor([[4, 0, 2, 0], [0, 0, 0, 0]])]
    out = emb.side("user", codes, history)
    assert out.shape == (2, 6, 3)  # five user fields + the history bag
    w = emb.bags["history"].weight
    torch.testing.assert_close(out[0, -1], (w[4] + w[2]) / 2)
    torch.testing.assert_close(out[1, -1], torch.zeros(3))  # empty history: zeros


def test_xdeepfm_params_reject_odd_split_sizes():
    with pytest.raises(ConfigError, match=r"'xdeepfm\.cin_layers' is \[63, 64\].*even"):
        XDeepFMConfig(cin_layers=[63, 64])
    XDeepFMConfig(cin_layers=[63, 64], cin_split_half=False)


def test_default_score_chunk_bounds_cin_blocks():
    # xDeepFM's score_matrix holds a few (pairs, k, H_l) float blocks at once: keep each small
    p = XDeepFMConfig()
    assert MODELS["xdeepfm"].score_chunk * p.embed_dim * max(p.cin_layers) * 4 < 100e6
