"""CIN, the Compressed Interaction Network of xDeepFM (Lian et al., KDD 2018).

Layer l forms every product X^{l-1}_h * X^0_j of a previous feature map and a base field,
element-wise along the embedding axis, so interactions stay vector-wise (as in FM) while
their degree grows by one per layer; a learned linear map over the H_{l-1} * F products
compresses them to H_l maps (the paper's 1x1 convolution). Each output map is sum-pooled
over the embedding axis and the pooled maps of all layers go through one Linear.

Internally the embedding axis sits before the map axis, (B, k, H): the compression is then
a single (B*k, H*F) x (H*F, H_l) matrix product on contiguous memory, and the largest
tensor is the (B, k, H_{l-1} * F) product block.

score_pairs scores every (user, item) pair of two blocks without that product block: the
compression is linear in the base fields, and the base fields split into a user part and an
item part, so layer l is
    X^l_o = act(b_o + sum_h X^{l-1}_h * (Mu_oh + Mi_oh)),   Mu_oh = sum_{j in user} W_ohj x0_j
with Mu computed once per user and Mi once per item. A pair then costs 2 * H_{l-1} * H_l
multiply-adds per embedding dimension instead of F * H_{l-1} * H_l.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CIN(nn.Module):
    def __init__(self, num_fields: int, layer_sizes: list[int], split_half: bool = True):
        super().__init__()
        if not layer_sizes:
            raise ValueError("CIN needs at least one layer size.")
        if any(h < 1 for h in layer_sizes):
            raise ValueError(f"CIN layer sizes must be positive, got {list(layer_sizes)}.")
        odd = [h for h in layer_sizes[:-1] if h % 2]
        if split_half and odd:
            raise ValueError(
                f"CIN with split_half needs even sizes for every layer but the last "
                f"(half of each goes to the output, half to the next layer); got "
                f"{list(layer_sizes)}."
            )
        self.compress = nn.ModuleList()
        self.direct: list[int] = []  # maps of each layer that go to the output
        prev = num_fields
        for i, size in enumerate(layer_sizes):
            self.compress.append(nn.Linear(prev * num_fields, size))
            # split_half: half of each layer but the last feeds the next layer, half goes out
            prev = size // 2 if split_half and i < len(layer_sizes) - 1 else size
            self.direct.append(prev)
        self.output_dim = sum(self.direct)
        self.out = nn.Linear(self.output_dim, 1)

    def _split(self, h: Tensor, keep: int) -> tuple[Tensor, Tensor]:
        """A layer's maps (last axis) -> (maps for the next layer, maps for the output)."""
        if keep < h.shape[-1]:
            # split_half: the first half feeds the next layer, the second goes out
            return h[..., : h.shape[-1] - keep], h[..., h.shape[-1] - keep :]
        return h, h

    def forward(self, x0: Tensor) -> Tensor:
        """(B, F, k) field embeddings -> (B,) logits."""
        b, _, k = x0.shape
        base = x0.transpose(1, 2)  # (B, k, F)
        hidden = base
        pooled = []
        for layer, keep in zip(self.compress, self.direct, strict=True):
            z = (hidden.unsqueeze(-1) * base.unsqueeze(-2)).reshape(b, k, -1)  # (B, k, H*F)
            hidden, direct = self._split(torch.relu(layer(z)), keep)  # (B, k, H_l)
            pooled.append(direct.sum(1))
        return self.out(torch.cat(pooled, dim=1)).squeeze(-1)

    @torch.no_grad()
    def score_pairs(self, xu: Tensor, xi: Tensor) -> Tensor:
        """(U, Fu, k) user-side and (I, Fi, k) item-side fields -> (U, I) logits, equal to
        forward(cat([xu[u], xi[i]])) for every pair (user fields first). Memory is a few
        (U, k, I, H_l) blocks: callers bound U * I."""
        n_u, f_u, k = xu.shape
        n_i, f_i, _ = xi.shape
        bu, bi = xu.transpose(1, 2), xi.transpose(1, 2)  # (U, k, Fu), (I, k, Fi)
        # X^0 of every pair, laid out (U, k, I, F) so both products below are batched GEMMs
        user_part = bu[:, :, None, :].expand(n_u, k, n_i, f_u)
        hidden = torch.cat([user_part, bi.permute(1, 0, 2)[None].expand(n_u, k, n_i, f_i)], -1)
        pooled = []
        for layer, keep in zip(self.compress, self.direct, strict=True):
            w = layer.weight.reshape(layer.out_features, -1, f_u + f_i)  # (H_l, H_{l-1}, F)
            mu = torch.einsum("ukj,ohj->ukho", bu, w[..., :f_u])  # (U, k, H_{l-1}, H_l)
            mi = torch.einsum("ikj,ohj->ikho", bi, w[..., f_u:])  # (I, k, H_{l-1}, H_l)
            out = hidden @ mu  # batched over (user, dim): (I, H_{l-1}) x (H_{l-1}, H_l)
            out += (hidden.permute(2, 1, 0, 3) @ mi).permute(2, 1, 0, 3)  # over (item, dim)
            out += layer.bias
            hidden, direct = self._split(torch.relu(out), keep)  # (U, k, I, H_l)
            pooled.append(direct.sum(1))  # (U, I, kept maps)
        return self.out(torch.cat(pooled, dim=-1)).squeeze(-1)
