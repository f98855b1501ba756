"""The optimizer (train.optimizer) and the learning-rate schedule (train.scheduler)."""

from __future__ import annotations

import torch
from torch import nn

from deepfm.config import TrainConfig
from deepfm.evaluation.metrics import parse_key


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    embedding_params, other_params = [], []
    for module in model.modules():
        target = embedding_params if isinstance(module, nn.Embedding) else other_params
        target.extend(p for p in module.parameters(recurse=False) if p.requires_grad)
    groups = [
        {"params": embedding_params, "weight_decay": cfg.embedding_l2},
        {"params": other_params, "weight_decay": cfg.weight_decay},
    ]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.learning_rate)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.learning_rate)
    return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=0.9)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.scheduler == "plateau":  # on the validation monitor, in its direction
        mode = "max" if parse_key(cfg.monitor)[0].higher_is_better else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None
