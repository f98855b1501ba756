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

    @torch.no_grad()
    def folded_linears(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Inference-mode (W, b) of each Linear with the BatchNorm after it folded in.

        In eval mode BatchNorm is the affine map y = (x - mean) / sqrt(var + eps) * g + beta,
        so it merges into the preceding Linear; dropout is the identity. Scoring a U x I
        matrix then touches each big intermediate once instead of three times.
        """
        assert not self.training, "folding BatchNorm needs eval mode (running statistics)"
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                out.append((layer.weight, layer.bias))
            elif isinstance(layer, nn.BatchNorm1d):
                w, b = out[-1]
                scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
                out[-1] = (w * scale[:, None], (b - layer.running_mean) * scale + layer.bias)
        return out

    @torch.no_grad()
    def first_by_side(self, user_flat: torch.Tensor, item_flat: torch.Tensor, folded):
        """The first (folded) Linear split by input block: (U, Du) user inputs and (I, Di) item
        inputs -> (U, H) and (I, H) whose broadcast sum is the pre-activation of every pair
        (the Linear is additive over its input blocks; the bias goes to the user side)."""
        w, b = folded[0]
        du = user_flat.shape[1]
        return torch.addmm(b, user_flat, w[:, :du].T), item_flat @ w[:, du:].T

    @torch.no_grad()
    def forward_from_first(self, h: torch.Tensor, folded) -> torch.Tensor:
        """Finish the inference forward pass from the first (folded) Linear's output
        `h` (..., hidden[0]); `folded` is folded_linears()."""
        shape = h.shape[:-1]
        h = h.reshape(-1, h.shape[-1]).relu_()
        for w, b in folded[1:-1]:
            h = torch.addmm(b, h, w.T).relu_()
        w, b = folded[-1]
        return torch.addmm(b, h, w.T).reshape(shape)
