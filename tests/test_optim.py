"""train.sparse_embeddings: row-sparse embedding gradients and LazyAdam, checked against
torch's Adam and SparseAdam, a hand-worked step, and the dense training path."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from deepfm.config import ConfigError, parse_config
from deepfm.data.batches import feature_tensors
from deepfm.models import build_model
from deepfm.training.optim import (
    LazyAdam,
    clip_gradients,
    make_optimizer,
    summed_rows,
    use_sparse_gradients,
)


def _squared_error_step(weight, optimizer, codes, target, sparse: bool) -> None:
    optimizer.zero_grad()
    ((F.embedding(codes, weight, sparse=sparse) - target) ** 2).sum().backward()
    optimizer.step()


def test_summed_rows_equal_coalesce_and_repeat_bit_for_bit():
    torch.manual_seed(3)
    weight = nn.Parameter(torch.randn(500, 16))
    codes = torch.randint(0, 500, (4096, 39)) % 97 * 5  # 97 distinct rows, each many times
    (F.embedding(codes, weight, sparse=True) * torch.randn(4096, 39, 16)).sum().backward()
    rows, summed = summed_rows(weight.grad)
    reference = weight.grad.coalesce()
    assert torch.equal(rows, reference.indices()[0]) and len(rows) == 97
    torch.testing.assert_close(summed, reference.values(), rtol=1e-5, atol=1e-4)
    assert torch.equal(rows[1:] > rows[:-1], torch.ones(96, dtype=torch.bool))
    for _ in range(3):  # a fixed summation order: the same bits every time
        again_rows, again = summed_rows(weight.grad)
        assert torch.equal(again_rows, rows) and torch.equal(again, summed)


def test_lazy_adam_with_every_row_in_every_batch_is_adam():
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    dense, lazy = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    adam = torch.optim.Adam([{"params": [dense], "weight_decay": 0.05}], lr=0.1)
    lazy_adam = LazyAdam([{"params": [lazy], "weight_decay": 0.05}], lr=0.1)
    for _ in range(6):
        codes = torch.randperm(6).repeat(2)  # every row, each twice (duplicates are summed)
        target = torch.randn(12, 3)
        _squared_error_step(dense, adam, codes, target, sparse=False)
        _squared_error_step(lazy, lazy_adam, codes, target, sparse=True)
    assert not torch.allclose(dense, start)
    torch.testing.assert_close(lazy, dense, rtol=0, atol=1e-6)


def test_lazy_adam_leaves_rows_outside_the_batch_alone_as_sparse_adam_does():
    torch.manual_seed(1)
    start = torch.randn(10, 4)
    ref, lazy = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    sparse_adam, lazy_adam = torch.optim.SparseAdam([ref], lr=0.05), LazyAdam([lazy], lr=0.05)
    kept = 0
    for step in range(8):
        codes = torch.randint(0, 7, (4,))  # rows 7..9 never appear
        target = torch.randn(4, 4)
        before = {k: v.clone() for k, v in lazy_adam.state[lazy].items()}
        _squared_error_step(ref, sparse_adam, codes, target, sparse=True)
        _squared_error_step(lazy, lazy_adam, codes, target, sparse=True)
        if step:  # the moments of rows outside this batch did not decay (dense Adam's would)
            unseen = [r for r in range(7) if r not in set(codes.tolist())]
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(lazy_adam.state[lazy][key][unseen], before[key][unseen])
            kept += len(unseen)
    assert kept > 0  # else the loop above checked nothing
    torch.testing.assert_close(lazy, ref, rtol=0, atol=1e-6)
    assert torch.equal(lazy[7:], start[7:])


def test_one_lazy_adam_step_by_hand_with_weight_decay():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.25], [3.0, 1.0]])
    p = nn.Parameter(w.clone())
    opt = LazyAdam([{"params": [p], "weight_decay": 0.1}], lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    opt.zero_grad()
    F.embedding(torch.tensor([0, 2, 2]), p, sparse=True).sum().backward()  # row 2 twice
    opt.step()
    for row, count in ((0, 1.0), (2, 2.0)):
        g = count + 0.1 * w[row]  # gradient of the sum plus decay of that row only
        m, v = 0.1 * g, 0.01 * g * g
        update = 0.01 / (1 - 0.9) * m / ((v / (1 - 0.99)).sqrt() + 1e-8)  # Adam's eps
        torch.testing.assert_close(p[row], w[row] - update, rtol=0, atol=1e-7)
    assert torch.equal(p[1], w[1])  # not in the batch: no decay, no step
    assert float(opt.state[p]["step"]) == 1


def test_sparse_clipping_equals_dense_clipping():
    torch.manual_seed(2)
    start, lin = torch.randn(8, 3), nn.Linear(3, 1)
    codes = torch.tensor([1, 4, 4, 6])
    grads = {}
    for sparse in (False, True):
        weight = nn.Parameter(start.clone())
        lin.zero_grad()
        lin(F.embedding(codes, weight, sparse=sparse)).pow(2).sum().mul(50).backward()
        params = [weight, *lin.parameters()]
        clip_gradients(params, 0.5)
        grad = weight.grad.to_dense() if sparse else weight.grad
        grads[sparse] = [grad, *(p.grad.clone() for p in lin.parameters())]
    norm = torch.stack([g.norm() for g in grads[False]]).norm()
    assert norm == pytest.approx(0.5, rel=1e-4)  # it was far above: clipping happened
    for dense, sparse in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(sparse, dense, rtol=0, atol=1e-6)


def _model_and_batch(split, sparse: bool):
    cfg = parse_config(
        {
            "seed": 0,
            "train": {"sparse_embeddings": sparse, "learning_rate": 0.01},
            "deepfm": {"embed_dim": 8, "dnn_hidden": [16], "dropout": 0.0},
        }
    )
    torch.manual_seed(0)
    model = build_model("deepfm", split.schema, feature_tensors(split), cfg.model_params)
    if sparse:
        use_sparse_gradients(model)
    n = 64
    batch = (
        torch.as_tensor(split.train_users[:n]).long(),
        torch.as_tensor(split.train_items[:n]).long(),
        torch.as_tensor(split.train_labels[:n]).float(),
        torch.as_tensor(split.train_history[:n]).long(),
    )
    return cfg, model, batch


def test_sparse_gradients_change_no_score_and_the_first_step_equals_adam(split):
    """The first Adam step moves a row with zero gradient by 0/(0+eps) = 0, so dense Adam and
    LazyAdam agree after one step on every weight, embeddings, first-order table and DNN."""
    states, logits = {}, {}
    for sparse in (False, True):
        cfg, model, (users, items, labels, history) = _model_and_batch(split, sparse)
        model.train()
        logits[sparse] = model(users, items, history).detach()
        optimizer = make_optimizer(model, cfg.train)
        assert isinstance(optimizer, LazyAdam) == sparse
        for group in optimizer.param_groups:
            # a row whose gradients nearly cancel gets g / (|g| + eps) from rounding noise
            # that differs by summation order; a larger eps keeps the comparison meaningful
            group["eps"] = 1e-3
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model(users, items, history), labels).backward()
        table = model.embedding.tables["user"].weight
        assert table.grad.is_sparse == sparse
        optimizer.step()
        states[sparse] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.testing.assert_close(logits[True], logits[False], rtol=0, atol=0)
    moved = 0
    for key, dense in states[False].items():
        torch.testing.assert_close(states[True][key], dense, rtol=0, atol=1e-6)
        moved += not torch.equal(dense, _model_and_batch(split, False)[1].state_dict()[key])
    assert moved >= 4  # embeddings, first-order weights, DNN layers all took a step


def test_sparse_embeddings_need_adam():
    with pytest.raises(ConfigError, match=r"'train\.sparse_embeddings' is true with"):
        parse_config({"train": {"sparse_embeddings": True, "optimizer": "sgd"}})
