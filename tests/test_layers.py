import dataclasses
import math

import pytest
import torch

from deepfm.models.layers import CIN, FeatureEmbedding, FieldAttention, field_attention_stack


def cin_reference(cin: CIN, x0: torch.Tensor) -> torch.Tensor:
    """CIN written from the paper's equations with explicit loops over maps, fields and
    embedding dimensions, reading the weights of `cin`."""
    b, m, k = x0.shape
    out = torch.zeros(b, dtype=x0.dtype)
    pooled = []
    prev = [x0[:, j] for j in range(m)]  # X^0: m maps of (B, k)
    for layer, keep in zip(cin.compress, cin.direct, strict=True):
        w, bias = layer.weight, layer.bias  # (H_l, H_{l-1} * m), (H_l,)
        maps = []
        for h in range(w.shape[0]):
            acc = torch.zeros(b, k, dtype=x0.dtype) + bias[h]
            for i in range(len(prev)):
                for j in range(m):
                    acc = acc + w[h, i * m + j] * prev[i] * x0[:, j]
            maps.append(torch.relu(acc))
        n_next = len(maps) - keep
        prev = maps[:n_next] if n_next else maps
        pooled.extend(mp.sum(-1) for mp in maps[n_next:])
    p = torch.stack(pooled, dim=1)
    for o in range(p.shape[1]):
        out = out + cin.out.weight[0, o] * p[:, o]
    return out + cin.out.bias[0]


@pytest.mark.parametrize(
    ("sizes", "split_half"), [([4, 6, 3], True), ([4, 6, 3], False), ([5], True)]
)
def test_cin_matches_loop_reference(sizes, split_half):
    torch.manual_seed(0)
    cin = CIN(3, sizes, split_half=split_half).double()
    with torch.no_grad():  # default init gives tiny outputs; make every term count
        for p in cin.parameters():
            p.uniform_(-1, 1)
    x0 = torch.randn(2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(cin(x0), cin_reference(cin, x0))
    expected = sum(h // 2 for h in sizes[:-1]) + sizes[-1] if split_half else sum(sizes)
    assert cin.output_dim == expected


def test_cin_shapes_gradients_and_odd_sizes():
    cin = CIN(5, [8, 6], split_half=True)
    x0 = torch.randn(7, 5, 4, requires_grad=True)
    out = cin(x0)
    assert out.shape == (7,)
    out.sum().backward()
    assert x0.grad.abs().sum() > 0
    assert all(p.grad is not None for p in cin.parameters())
    with pytest.raises(ValueError, match=r"split_half needs even sizes.*\[7, 6\]"):
        CIN(5, [7, 6], split_half=True)
    CIN(5, [7, 5], split_half=False)  # odd sizes are fine without split_half
    CIN(5, [8, 5], split_half=True)  # ... and for the last layer


def test_field_attention_shapes_gradients_and_residual_projection():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 8, requires_grad=True)
    layer = FieldAttention(8, num_heads=2, head_dim=5, dropout=0.1)
    out = layer(x)
    assert out.shape == (4, 6, 10)
    assert isinstance(layer.residual, torch.nn.Linear)  # 8 != 2 * 5
    out.pow(2).sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in layer.parameters())
    assert isinstance(FieldAttention(8, 2, 4).residual, torch.nn.Identity)
    assert FieldAttention(8, 2, 4, residual=False).residual is None

    stack = field_attention_stack(3, 8, num_heads=2, head_dim=4)
    assert len(stack) == 3
    assert stack(x).shape == (4, 6, 8)
    assert field_attention_stack(0, 8, 2, 4)(x) is x


def attention_reference(layer: FieldAttention, x: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention written out per example, head and query field, from the
    weights of `layer`: softmax over the keys of q.k / sqrt(head_dim), the heads concatenated,
    the residual added, then LayerNorm."""
    b, f, _ = x.shape
    heads, d = layer.num_heads, layer.head_dim
    w_q, w_k, w_v = layer.qkv.weight.split(heads * d)  # each (heads * d, dim)
    out = torch.zeros(b, f, heads * d, dtype=x.dtype)
    for n in range(b):
        for h in range(heads):
            rows = slice(h * d, (h + 1) * d)
            q, k, v = (x[n] @ w[rows].T for w in (w_q, w_k, w_v))  # each (F, d)
            for i in range(f):
                logits = torch.stack([q[i] @ k[j] / math.sqrt(d) for j in range(f)])
                weights = torch.exp(logits - logits.max())
                weights = weights / weights.sum()
                out[n, i, rows] = sum(weights[j] * v[j] for j in range(f))
    if layer.residual is not None:
        out = out + layer.residual(x)
    if isinstance(layer.norm, torch.nn.LayerNorm):
        mean = out.mean(-1, keepdim=True)
        var = out.var(-1, unbiased=False, keepdim=True)
        out = (out - mean) / torch.sqrt(var + layer.norm.eps)
        out = out * layer.norm.weight + layer.norm.bias
    return out


@pytest.mark.parametrize(
    ("dim", "heads", "head_dim", "residual", "layer_norm"),
    [(6, 2, 3, True, True), (5, 2, 4, True, True), (6, 3, 2, False, True), (6, 2, 3, True, False)],
)
def test_field_attention_matches_a_direct_implementation(
    dim, heads, head_dim, residual, layer_norm
):
    torch.manual_seed(0)
    layer = FieldAttention(dim, heads, head_dim, residual=residual, layer_norm=layer_norm).double()
    if layer_norm:  # non-trivial affine parameters, so a skipped or misplaced norm shows
        torch.nn.init.normal_(layer.norm.weight)
        torch.nn.init.normal_(layer.norm.bias)
    # fields of different scales give softmax weights far from uniform
    x = torch.randn(3, 5, dim, dtype=torch.float64) * torch.arange(1, 6).double()[None, :, None]
    torch.testing.assert_close(layer(x), attention_reference(layer, x))


@pytest.mark.parametrize("layer_norm", [True, False])
def test_field_attention_is_permutation_equivariant(layer_norm):
    torch.manual_seed(0)
    stack = field_attention_stack(2, 8, num_heads=2, head_dim=3, layer_norm=layer_norm).eval()
    x = torch.randn(3, 7, 8)
    perm = torch.randperm(7)
    torch.testing.assert_close(stack(x[:, perm]), stack(x)[:, perm])


def test_feature_embedding_per_field_sizes(split):
    schema = split.schema
    plain = FeatureEmbedding(schema, 6)
    sized = FeatureEmbedding(schema, 6, field_dims={"gender": 2, "genres": 3, "item_id": 6})
    # item_id has the common size: it stays in the shared table
    assert set(sized.own_tables) == {"gender"}
    assert set(sized.projections) == {"gender", "genres"}
    assert "item_id" not in sized.projections

    codes = torch.as_tensor(split.user_features[:5]).long()
    history = [torch.as_tensor(split.train_history[:5]).long()]
    out = sized.side("user", codes, history)
    assert out.shape == plain.side("user", codes, history).shape == (5, plain.num_user_fields, 6)
    # field order is unchanged: gender (column 1) comes back projected in place
    gender = schema.by_source("user", "sparse")[1]
    assert gender.name == "gender"
    proj = sized.projections["gender"](sized.own_tables["gender"](codes[:, 1]))
    torch.testing.assert_close(out[:, 1], proj)
    shared = sized.tables["user"].weight
    torch.testing.assert_close(out[:, 0], shared[codes[:, 0]])
    torch.testing.assert_close(out[:, 2], shared[codes[:, 2] + sized.user_offsets[1]])

    item_codes = torch.zeros(2, 2, dtype=torch.long)
    bags = [torch.tensor([[1, 2, 0, 0], [1, 0, 0, 0]])]
    item_out = sized.side("item", item_codes, bags)
    assert item_out.shape == (2, plain.num_item_fields, 6)
    w = sized.bags["genres"].weight  # (20, 3): mean over non-padding codes, then projected
    assert w.shape[1] == 3
    torch.testing.assert_close(item_out[0, -1], sized.projections["genres"]((w[1] + w[2]) / 2))

    out.sum().backward()
    assert sized.own_tables["gender"].weight.grad.abs().sum() > 0
    assert sized.projections["gender"].weight.grad.abs().sum() > 0


def test_feature_embedding_default_state_dict_is_unchanged(split):
    # checkpoints written before field_dims existed must still load
    keys = set(FeatureEmbedding(split.schema, 4).state_dict())
    assert keys == {
        "tables.user.weight", "tables.item.weight", "bags.genres.weight", "bags.history.weight"
    }  # fmt: skip


def test_feature_embedding_rejects_unknown_fields(split):
    with pytest.raises(ValueError, match="unknown fields nope; fields: user_id"):
        FeatureEmbedding(split.schema, 4, field_dims={"nope": 2})
    with pytest.raises(ValueError, match="positive integers"):
        FeatureEmbedding(split.schema, 4, field_dims={"gender": 0})


@pytest.mark.parametrize("name", ["deepfm", "xdeepfm", "attention_deepfm"])
def test_the_deepfm_family_draws_its_field_embeddings_first(split, name):
    # add_field_embeddings: the embedding, then the first-order part, before any other module,
    # so that torch's generator gives every model the initial weights it always had
    from deepfm.config import MODEL_SECTIONS
    from deepfm.data.batches import feature_tensors
    from deepfm.models import build_model

    params = MODEL_SECTIONS[name](
        embed_dim=4, dnn_hidden=[8], recent_items=2, field_dims={"gender": 2}
    )
    torch.manual_seed(0)
    model = build_model(name, split.schema, feature_tensors(split), params)
    assert [child for child, _ in model.named_children()][:2] == ["embedding", "linear"]
    torch.manual_seed(0)
    embedding = FeatureEmbedding(
        split.schema,
        4,
        field_dims={"gender": 2},
        recent_items=2,
        history_pooling=params.history_pooling,
        dropout=params.dropout,
    )
    linear = FeatureEmbedding(split.schema, 1, init_std=0.0)
    for built, alone in ((model.embedding, embedding), (model.linear, linear)):
        assert built.state_dict().keys() == alone.state_dict().keys()
        for key, value in built.state_dict().items():
            assert torch.equal(value, alone.state_dict()[key]), key


@pytest.mark.parametrize("split_half", [True, False])
def test_cin_score_pairs_equals_forward_on_every_pair(split_half):
    torch.manual_seed(0)
    cin = CIN(5, [6, 4, 3], split_half=split_half).double()
    xu, xi = torch.randn(3, 2, 4).double(), torch.randn(7, 3, 4).double()
    pairs = torch.cat([xu.repeat_interleave(7, 0), xi.repeat(3, 1, 1)], dim=1)
    torch.testing.assert_close(cin.score_pairs(xu, xi), cin(pairs).reshape(3, 7))


def test_cpu_dropout_rate_scale_and_gradient():
    from deepfm.models.layers.dnn import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.2)
    x = torch.ones(1000, 257, requires_grad=True)  # odd size: the last 64-bit draw is sliced
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.005  # 257,000 draws: the std of the rate is 0.0008
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.8))  # inverted scaling
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient goes through the same mask
    # columns and rows are not correlated by the 4-elements-per-draw slicing
    assert (y == 0).float().mean(0).std().item() < 0.05
    drop.eval()
    assert torch.equal(drop(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)


def test_recent_items_are_fields_of_their_own_and_position_pooling_starts_as_the_mean(split):
    from deepfm.models.layers import FeatureEmbedding

    emb = FeatureEmbedding(split.schema, 3, recent_items=2, history_pooling="position")
    mean = FeatureEmbedding(split.schema, 3)
    assert emb.num_user_fields == mean.num_user_fields + 2
    codes = torch.ones(3, 5, dtype=torch.long)
    history = torch.tensor([[4, 2, 7, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    out = emb.side("user", codes, [history])
    assert out.shape == (3, 8, 3)  # five user fields, the history bag, two recent items
    w = emb.bags["history"].weight
    torch.testing.assert_close(out[0, 5], (w[4] + w[2] + w[7]) / 3)  # zero logits: the mean
    torch.testing.assert_close(out[0, 6], emb.recent[0].weight[4])  # the most recent item
    torch.testing.assert_close(out[0, 7], emb.recent[1].weight[2])  # the one before it
    torch.testing.assert_close(out[1, 7], torch.zeros(3))  # padding: nothing
    torch.testing.assert_close(out[2, 5:], torch.zeros(3, 3))  # empty history: zeros
    with torch.no_grad():
        emb.history_position.copy_(torch.tensor([1.0, 0.0, -1.0, 3.0]))
    out = emb.side("user", codes, [history])
    share = torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0)  # position 4 is padding
    torch.testing.assert_close(out[0, 5], share[0] * w[4] + share[1] * w[2] + share[2] * w[7])
    torch.testing.assert_close(out[1, 5], w[5])
    with pytest.raises(ValueError, match=r"recent_items is 5 but the history holds 4"):
        FeatureEmbedding(split.schema, 3, recent_items=5)


def test_transformer_pooling_is_the_encoder_over_the_filled_history_alone(split):
    from deepfm.models.layers import FeatureEmbedding

    torch.manual_seed(0)
    emb = FeatureEmbedding(split.schema, 4, history_pooling="transformer", history_layers=2)
    emb.eval()
    codes = torch.ones(3, 5, dtype=torch.long)
    history = torch.tensor([[4, 2, 7, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    out = emb.side("user", codes, [history])
    assert out.shape == (3, 6, 4)  # five user fields and the encoded history
    enc, w = emb.history_encoder, emb.bags["history"].weight
    for row, filled in [(0, [7, 2, 4]), (1, [5])]:  # chronological: the newest last
        n = len(filled)
        x = w[torch.tensor(filled)] + enc.positions[:n].flip(0)  # position 0: the newest
        want = enc.encoder(x[None])[0, -1]  # no padding at all
        torch.testing.assert_close(out[row, 5], want)
    assert torch.isfinite(out[2]).all()  # an empty history: a constant, not NaN
    # the newest item moves the state; the order of the others matters too
    swapped = emb.side("user", codes[:1], [torch.tensor([[2, 4, 7, 0]])])
    assert not torch.allclose(swapped[0, 5], out[0, 5])
    small = FeatureEmbedding(
        split.schema, 4, history_pooling="transformer", history_layers=1,
        field_dims={"history": 2},
    )  # fmt: skip
    assert small.side("user", codes, [history]).shape == (3, 6, 4)  # projected, then encoded
    with pytest.raises(ValueError, match=r"history_pooling"):
        FeatureEmbedding(
            dataclasses.replace(
                split.schema, fields=tuple(f for f in split.schema.fields if f.name != "history")
            ),
            4,
            history_pooling="transformer",
        )


def test_target_attention_matches_a_direct_computation():
    from deepfm.models.layers import TargetAttention

    torch.manual_seed(0)
    layer = TargetAttention(4, length=3, hidden=5).double()
    with torch.no_grad():
        layer.position.copy_(torch.tensor([0.5, -0.2, 0.1]))
    keys = torch.randn(2, 3, 4, dtype=torch.float64)
    query = torch.randn(2, 4, dtype=torch.float64)
    present = torch.tensor([[True, True, False], [False, False, False]])
    out = layer(keys, query, present)
    lin1, lin2 = layer.score[0], layer.score[2]
    raw = []
    for p in range(2):  # the filled positions of row 0
        x = torch.cat([keys[0, p], query[0], keys[0, p] * query[0], keys[0, p] - query[0]])
        raw.append(lin2(torch.relu(lin1(x)))[0] + layer.position[p])
    weights = torch.softmax(torch.stack(raw), 0)
    torch.testing.assert_close(out[0], weights[0] * keys[0, 0] + weights[1] * keys[0, 1])
    torch.testing.assert_close(out[1], torch.zeros(4, dtype=torch.float64))  # empty: zeros
    # the candidate steers the pooling: another query, other weights
    other = layer(keys, -query, present)
    assert not torch.allclose(other[0], out[0])


def test_lookup_rows_uses_the_fast_deterministic_backward_of_each_device():
    # On a GPU, index_select's deterministic backward accumulates repeated rows serially (35x
    # slower on an H200); embedding's sort-and-reduce backward is used there instead. The meta
    # device stands in for a GPU: any device but the CPU takes that path.
    from deepfm.models.layers.embedding import lookup_rows

    codes = torch.tensor([[0, 1], [1, 1], [3, 0]])
    weight = torch.randn(4, 3, requires_grad=True)
    cpu = lookup_rows(weight, codes)
    assert torch.equal(cpu, weight.detach()[codes])
    cpu.sum().backward()
    assert torch.equal(weight.grad[:, 0], torch.tensor([2.0, 3.0, 0.0, 1.0]))
    assert "IndexSelect" in cpu.grad_fn.next_functions[0][0].name()
    meta = torch.empty(4, 3, device="meta", requires_grad=True)
    out = lookup_rows(meta, codes.to("meta"))
    assert out.shape == (3, 2, 3) and out.grad_fn.name() == "EmbeddingBackward0"
