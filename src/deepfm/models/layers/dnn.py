"""DNN block: [Linear -> BatchNorm -> ReLU -> Dropout] x n -> Linear(1), He-initialised."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Dropout(nn.Module):
    """Inverted dropout whose CPU mask costs a third of torch's.

    Why: on CPU torch draws a dropout mask with bernoulli_, one Mersenne-Twister float per
    element, which was 27% of a whole DeepFM training step on 2 cores. Here each element gets
    16 random bits sliced from 64-bit draws (4 elements per draw), so the drop probability is
    round(p * 65536) / 65536 (0.2 stays 0.2 to 1e-5). Other devices keep F.dropout (fused
    and fast there). Seeded by the same global generator as everything else.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}.")
        self.p = p
        self.threshold = -32768 + round(p * 65536)  # keep an element if its int16 >= this
        self.scale = 65536 / (32768 - self.threshold)  # 1 / the exact keep rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        draws = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        bits = draws.view(torch.int16)[:n].view(x.shape)
        return x * (bits >= self.threshold).to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DNN(nn.Module):
    def __init__(self, in_dim: int, hidden: list[int], dropout: float, batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for d_in, d_out in itertools.pairwise(dims):
            linear = nn.Linear(d_in, d_out)
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(Dropout(dropout))
        out = nn.Linear(dims[-1], 1)
        nn.init.xavier_uniform_(out.weight)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.layers = nn.Sequential(*layers)

    @classmethod
    def over_fields(cls, num_fields: int, width: int, params) -> DNN:
        """The DNN of a DeepFM-family model over its flattened (num_fields, width) fields, as
        its params section (dnn_hidden, dropout, batch_norm) asks."""
        return cls(num_fields * width, list(params.dnn_hidden), params.dropout, params.batch_norm)

    @property
    def first(self) -> nn.Linear:
        """The first Linear: it is additive over its input blocks, which score_matrix exploits."""
        return self.layers[0]

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B,) logits."""
        return self.layers(x).squeeze(-1)

    @torch.no_grad()
    def folded_linears(self) -> list[tuple[Tensor, Tensor]]:
        """Inference-mode (W, b) of each Linear with the BatchNorm after it folded in.

        In eval mode BatchNorm is the affine map y = (x - mean) / sqrt(var + eps) * g + beta,
        so it merges into the preceding Linear; dropout is the identity. Scoring a U x I
        matrix then touches each big intermediate once instead of three times.
        """
        assert not self.training, "folding BatchNorm needs eval mode (running statistics)"
        out: list[tuple[Tensor, Tensor]] = []
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                out.append((layer.weight, layer.bias))
            elif isinstance(layer, nn.BatchNorm1d):
                w, b = out[-1]
                scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
                out[-1] = (w * scale[:, None], (b - layer.running_mean) * scale + layer.bias)
        return out

    @torch.no_grad()
    def first_by_side(self, user_flat: Tensor, item_flat: Tensor, folded):
        """The first (folded) Linear split by input block: (U, Du) user inputs and (I, Di) item
        inputs -> (U, H) and (I, H) whose broadcast sum is the pre-activation of every pair
        (the Linear is additive over its input blocks; the bias goes to the user side)."""
        w, b = folded[0]
        du = user_flat.shape[1]
        return torch.addmm(b, user_flat, w[:, :du].T), item_flat @ w[:, du:].T

    @torch.no_grad()
    def forward_from_first(self, h: Tensor, folded) -> Tensor:
        """Finish the inference forward pass from the first (folded) Linear's output
        `h` (..., hidden[0]); `folded` is folded_linears()."""
        shape = h.shape[:-1]
        h = h.reshape(-1, h.shape[-1]).relu_()
        for w, b in folded[1:-1]:
            h = torch.addmm(b, h, w.T).relu_()
        w, b = folded[-1]
        return torch.addmm(b, h, w.T).reshape(shape)
