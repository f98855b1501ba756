"""The optimizer (train.optimizer), its sparse-gradient form (train.sparse_embeddings) and
the learning-rate schedule (train.scheduler)."""

from __future__ import annotations

import math

import torch
from torch import nn

from deepfm.config import TrainConfig
from deepfm.evaluation.metrics import parse_key
from deepfm.models.layers import FeatureEmbedding


class LazyAdam(torch.optim.Adam):
    """Adam in which a parameter with a row-sparse gradient (an embedding table under
    train.sparse_embeddings) updates only the rows the batch used: their moments and weights,
    with the bias correction of the table's step count (as torch.optim.SparseAdam), and
    weight decay added to those rows' gradients. Dense gradients take torch's Adam unchanged.
    A step then costs the rows a batch touches, not the vocabulary: the dense step over a
    click log's 374k x 64 table was most of an epoch (docs/performance.md)."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    self._sparse_step(p, group)
                    p.grad = None  # done: torch's Adam below skips it
        return super().step(closure)

    def _sparse_step(self, p: torch.Tensor, group: dict) -> None:
        rows, values = summed_rows(p.grad)  # one row per distinct code, duplicates summed
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        if group["weight_decay"]:
            values = values + group["weight_decay"] * p[rows]
        exp_avg = state["exp_avg"][rows].lerp_(values, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        # eps after the bias correction, as torch's Adam (SparseAdam adds it before): with
        # every row in every batch, LazyAdam is Adam
        denom = exp_avg_sq.sqrt_().div_(math.sqrt(1 - beta2**step)).add_(group["eps"])
        p.index_add_(0, rows, exp_avg / denom, alpha=-group["lr"] / (1 - beta1**step))


def summed_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A row-sparse gradient's distinct rows, ascending, and each row's summed values: what
    coalesce() gives. On the CPU they come from torch.unique and index_add_, which sums each
    row's entries in their order in the gradient (coalesce's unstable sort fixes no order):
    a click-log step (2M rows, batch 4096, embed_dim 16) ran 1.26x faster than with
    coalesce, whose CPU sort and reduction took a quarter of the step. Other devices keep
    coalesce: index_add_ there adds atomically, in no fixed order."""
    if grad.device.type != "cpu":
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    indices, values = grad._indices()[0], grad._values()
    rows, inverse = torch.unique(indices, return_inverse=True)
    summed = values.new_zeros((len(rows), *values.shape[1:])).index_add_(0, inverse, values)
    return rows, summed


def use_sparse_gradients(model: nn.Module) -> None:
    """Every embedding lookup of the model gets a row-sparse gradient (for LazyAdam)."""
    for module in model.modules():
        if isinstance(module, FeatureEmbedding):
            module.sparse_gradients = True
            # FeatureEmbedding looks its tables up itself (never through their forward):
            # the flag only tells DDP to expect, and all-reduce, a sparse gradient for them
            for table in module.modules():
                if isinstance(table, nn.Embedding):
                    table.sparse = True


def clip_gradients(parameters, max_norm: float) -> None:
    """Scale all gradients so that their global 2-norm is at most max_norm, as
    nn.utils.clip_grad_norm_ does, which cannot read sparse gradients."""
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        nn.utils.clip_grad_norm_(params, max_norm)
        return
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # a code used twice counts once, with its summed grad
    squares = [(p.grad.values() if p.grad.is_sparse else p.grad).pow(2).sum() for p in params]
    total = torch.stack(squares).sum().sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(scale)


def scaled_learning_rate(cfg: TrainConfig) -> float:
    """train.learning_rate under train.lr_scaling: learning_rate x r (linear) or x sqrt(r)
    (sqrt), r = batch_size / lr_reference_batch; as given under none."""
    ratio = cfg.batch_size / cfg.lr_reference_batch
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scaling]
    return cfg.learning_rate * factor


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    embedding_params, other_params = [], []
    for module in model.modules():
        target = embedding_params if isinstance(module, nn.Embedding) else other_params
        target.extend(p for p in module.parameters(recurse=False) if p.requires_grad)
    groups = [
        {"params": embedding_params, "weight_decay": cfg.embedding_l2},
        {"params": other_params, "weight_decay": cfg.weight_decay},
    ]
    lr = scaled_learning_rate(cfg)
    if cfg.optimizer == "adam":
        adam = LazyAdam if cfg.sparse_embeddings else torch.optim.Adam
        return adam(groups, lr=lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """Stepped once per epoch. With train.warmup_epochs = w > 0, epochs 1..w run at
    1/(w+1) .. w/(w+1) of the rate, then the schedule runs over the other epochs - w."""
    if cfg.scheduler == "plateau":  # on the validation monitor, in its direction
        mode = "max" if parse_key(cfg.monitor)[0].higher_is_better else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    w = cfg.warmup_epochs
    if cfg.scheduler == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs - w)
    elif w:
        main = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        return None
    if not w:
        return main
    # built after `main`, so the optimizer's rate starts at the warm-up's first factor
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1 / (w + 1), end_factor=1.0, total_iters=w
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[w])
