"""SASRec and its causal Transformer stack."""

import math

import numpy as np
import pytest
import torch

from deepfm.config import ConfigError, SASRecConfig
from deepfm.data.batches import feature_tensors
from deepfm.models import build_model
from deepfm.models.layers import CausalTransformer
from deepfm.models.layers.causal import CausalBlock, causal_mask
from tests.conftest import ML_FIELDS

SMALL = SASRecConfig(embed_dim=8, num_layers=2, num_heads=2, dropout=0.0, max_len=16)


def make_model(split, params=SMALL, seed=0):
    torch.manual_seed(seed)
    model = build_model("sasrec", split.schema, feature_tensors(split), params)
    with torch.no_grad():  # larger than the init so that every part visibly matters
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def test_block_stack_is_causal():
    torch.manual_seed(0)
    stack = CausalTransformer(8, num_layers=2, num_heads=2).eval()
    x = torch.randn(3, 6, 8)
    valid = torch.tensor([[True] * 6, [False, False, True, True, True, True], [False] * 6])
    with torch.no_grad():
        out = stack(x, valid)
        for t in range(5):
            later = x.clone()
            later[:, t + 1 :] += torch.randn(3, 5 - t, 8)
            changed = stack(later, valid)
            torch.testing.assert_close(changed[:, : t + 1], out[:, : t + 1], rtol=0, atol=0)
            assert not torch.allclose(changed[0, t + 1 :], out[0, t + 1 :])
        # an earlier (real) position does change later outputs
        earlier = x.clone()
        earlier[:, 0] += torch.randn(3, 8)  # not a constant shift: LayerNorm removes those
        assert not torch.allclose(stack(earlier, valid)[0, -1], out[0, -1])
        # ... but an earlier padding position does not
        torch.testing.assert_close(stack(earlier, valid)[1, 2:], out[1, 2:], rtol=0, atol=0)
    assert torch.isfinite(out).all()  # an all-padding row too


def reference_block(block: CausalBlock, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The block written out: softmax(Q K^T / sqrt(d_head) + mask) V per head."""
    attn = block.attn
    h, hd = attn.num_heads, attn.head_dim
    d = x.shape[-1]
    y = block.attn_norm(x)
    w, bias = attn.qkv.weight, attn.qkv.bias
    q, k, v = (y @ w[i * d : (i + 1) * d].T + bias[i * d : (i + 1) * d] for i in range(3))
    heads = []
    for j in range(h):
        s = slice(j * hd, (j + 1) * hd)
        scores = q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v[..., s])
    x = x + attn.out(torch.cat(heads, dim=-1))
    y = block.ffn_norm(x)
    ffn = block.ffn
    return x + ffn[3](torch.relu(ffn[0](y)))


def test_attention_block_matches_reference_float64():
    torch.manual_seed(0)
    block = CausalBlock(12, num_heads=3, dropout=0.3).double().eval()
    x = torch.randn(4, 7, 12, dtype=torch.float64)
    valid = torch.rand(4, 7) > 0.3
    valid[0] = True
    valid[1] = False
    allowed = torch.zeros(4, 7, 7, dtype=torch.bool)
    for r in range(4):
        for t in range(7):
            for s in range(t + 1):
                allowed[r, t, s] = bool(valid[r, s]) or s == t
    torch.testing.assert_close(causal_mask(valid, 7)[:, 0], allowed)
    with torch.no_grad():
        got = block(x, causal_mask(valid, 7))
        want = reference_block(block, x, allowed)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_the_last_row_alone_is_the_whole_stacks_last_row():
    """What SASRec and the family's history encoder read: last=True computes the final
    block's last position only, and gives the same row (float64: to rounding)."""
    torch.manual_seed(0)
    for layers in (1, 2):
        stack = CausalTransformer(12, num_layers=layers, num_heads=3, dropout=0.3).double()
        x = torch.randn(5, 7, 12, dtype=torch.float64)
        valid = torch.rand(5, 7) > 0.3
        valid[0], valid[1] = True, False
        with torch.no_grad():
            last = stack.eval()(x, valid, last=True)
            whole = stack(x, valid)[:, -1]
        assert last.shape == (5, 12)
        torch.testing.assert_close(last, whole, rtol=1e-12, atol=1e-12)


def test_training_attention_without_drops_is_the_fused_kernels():
    """In training, on the CPU, the attention weights' dropout is layers.dnn.Dropout on
    weights computed by hand; with a rate that drops nothing it equals torch's fused
    scaled_dot_product_attention (the path of evaluation and other devices)."""
    torch.manual_seed(0)
    stack = CausalTransformer(12, num_layers=2, num_heads=3, dropout=0.3).double()
    for module in stack.modules():
        if hasattr(module, "threshold"):  # a rate above 0 that keeps every element
            module.p, module.threshold, module.scale = 1e-9, -32768, 1.0
    x = torch.randn(4, 7, 12, dtype=torch.float64)
    valid = torch.rand(4, 7) > 0.3
    valid[0] = True
    with torch.no_grad():
        trained = stack.train()(x, valid)
        evaluated = stack.eval()(x, valid)
    torch.testing.assert_close(trained, evaluated, rtol=1e-12, atol=1e-12)


def test_training_with_dropout_stays_causal():
    """The hand-written training attention keeps the mask: with the same random draws, a
    change at later positions leaves every earlier output as it was."""
    stack = CausalTransformer(8, num_layers=2, num_heads=2, dropout=0.3).train()
    x = torch.randn(3, 6, 8)
    valid = torch.tensor([[True] * 6, [False, False, True, True, True, True], [False] * 6])
    with torch.no_grad():
        torch.manual_seed(1)
        out = stack(x, valid)
        later = x.clone()
        later[:, 4:] += torch.randn(3, 2, 8)
        torch.manual_seed(1)
        changed = stack(later, valid)
    torch.testing.assert_close(changed[:, :4], out[:, :4], rtol=0, atol=0)
    assert not torch.allclose(changed[0, 4:], out[0, 4:])
    assert torch.isfinite(out).all()


def test_older_history_item_changes_the_state(split):
    model = make_model(split)
    history = torch.tensor([[5, 3, 7, 2]])
    with torch.no_grad():
        state = model.user_state(history)
        older = model.user_state(torch.tensor([[5, 3, 7, 9]]))  # the oldest item differs
        reordered = model.user_state(torch.tensor([[3, 5, 7, 2]]))  # the order matters
    assert not torch.allclose(state, older)
    assert not torch.allclose(state, reordered)


def test_padding_and_truncation_leave_the_state_unchanged(split):
    model = make_model(split)
    with torch.no_grad():
        short = model.user_state(torch.tensor([[5, 3, 7, 0], [0, 0, 0, 0]]))
        long = model.user_state(torch.tensor([[5, 3, 7, 0, 0, 0, 0, 0, 0], [0] * 9]))
        torch.testing.assert_close(long, short, rtol=1e-6, atol=1e-6)
        # a history longer than max_len keeps its max_len most recent items
        model.max_len = 3
        cut = model.user_state(torch.tensor([[5, 3, 7, 8, 4, 2]]))
        model.max_len = SMALL.max_len
        torch.testing.assert_close(cut, short[:1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("item_bias", [False, True])
def test_score_matrix_forward_and_catalogue_logits_agree(split, item_bias):
    params = SASRecConfig(embed_dim=8, num_layers=1, num_heads=2, dropout=0.0, item_bias=item_bias)
    model = make_model(split, params)
    n_items = split.schema.num_items
    users = torch.arange(5)
    history = torch.from_numpy(split.train_history[[0, 3, 10, 20, 40]].astype(np.int64))
    history[4] = 0  # one empty history
    items = torch.arange(n_items)
    with torch.no_grad():
        matrix = model.score_matrix(users, items, history)
        pairs = model(
            users.repeat_interleave(n_items),
            items.repeat(len(users)),
            history.repeat_interleave(n_items, dim=0),
        ).reshape(len(users), n_items)
        catalogue = model.catalogue_logits(users, history)
        some = torch.tensor([n_items - 1, 0, 3])
        part = model.score_matrix(users, some, history)
    assert catalogue.shape == (5, n_items)
    torch.testing.assert_close(matrix, pairs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(catalogue, matrix, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part, catalogue[:, some], rtol=1e-5, atol=1e-5)
    # the logit is h . E[item_id code] (+ bias)
    codes = model.item_id_codes()[items]
    want = model.user_state(history) @ model.item_embedding.weight[codes].T
    if item_bias:
        want = want + model.item_bias[codes]
    torch.testing.assert_close(matrix, want.detach(), rtol=1e-5, atol=1e-5)


def test_empty_history_is_finite_with_finite_gradients(split):
    params = SASRecConfig(embed_dim=8, num_layers=2, num_heads=2, dropout=0.2, max_len=16)
    torch.manual_seed(0)
    model = build_model("sasrec", split.schema, feature_tensors(split), params).train()
    history = torch.tensor([[0, 0, 0, 0], [4, 0, 0, 0], [0, 0, 0, 0]])
    users = torch.tensor([0, 1, 2])
    logits = model.catalogue_logits(users, history)
    assert torch.isfinite(logits).all()
    targets = torch.from_numpy(split.train_items[:3].astype(np.int64))
    torch.nn.functional.cross_entropy(logits, targets).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        a = model.user_state(history)
    torch.testing.assert_close(a[0], a[2])  # empty is one learned state


def test_needs_the_history_field(canonical):
    from deepfm.data.splitting import split_dataset

    split = split_dataset(
        *canonical, fields=ML_FIELDS, seed=7, min_positives=3, num_negatives=30, history_length=0
    )
    with pytest.raises(ValueError, match=r"needs the history field.*split\.history_length"):
        build_model("sasrec", split.schema, feature_tensors(split), SMALL)


def test_missing_history_argument_is_a_clear_error(split):
    model = make_model(split)
    with pytest.raises(ValueError, match="schema has a history or context field: pass history"):
        model.catalogue_logits(torch.tensor([0, 1]))


def test_deterministic_training_steps(split):
    def run() -> list[torch.Tensor]:
        params = SASRecConfig(embed_dim=8, num_layers=2, num_heads=2, dropout=0.2, max_len=16)
        torch.manual_seed(3)
        model = build_model("sasrec", split.schema, feature_tensors(split), params).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        users = torch.from_numpy(split.train_users[:64].astype(np.int64))
        items = torch.from_numpy(split.train_items[:64].astype(np.int64))
        history = torch.from_numpy(split.train_history[:64])
        for _ in range(3):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model.catalogue_logits(users, history), items)
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = run(), run()
    finally:
        torch.use_deterministic_algorithms(before)
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_config_heads_must_divide_embed_dim():
    with pytest.raises(ConfigError, match=r"'sasrec\.num_heads' is 3; it must divide"):
        SASRecConfig(embed_dim=64, num_heads=3)
