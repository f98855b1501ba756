"""DNN block: [Linear -> BatchNorm -> ReLU -> Dropout] x n -> Linear(1), He-initialised."""

from __future__ import annotations

import torch
from torch import nn


class DNN(nn.Module):
    def __init__(self, in_dim: int, hidden: list[int], dropout: float, batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            linear = nn.Linear(d_in, d_out)
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        out = nn.Linear(dims[-1], 1)
        nn.init.xavier_uniform_(out.weight)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.layers = nn.Sequential(*layers)

    @property
    def first(self) -> nn.Linear:
        """The first Linear: it is additive over its input blocks, which score_matrix exploits."""
        return self.layers[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B,) logits."""
        return self.layers(x).squeeze(-1)

    def forward_after_first(self, h: torch.Tensor) -> torch.Tensor:
        """Run every layer after the first Linear on its pre-activation `h` (..., hidden[0])."""
        shape = h.shape[:-1]
        h = h.reshape(-1, h.shape[-1])
        return self.layers[1:](h).reshape(shape)
