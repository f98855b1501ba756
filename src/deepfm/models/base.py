"""The shared base of every model: feature lookup tables and the scoring interface.

A model scores (user index, item index) pairs. The feature matrices from the split stage
are buffers of the model, so a checkpoint is self-contained and batching moves only two
integer vectors.

- forward(users, items) -> (B,) logits for aligned pairs (training);
- score_matrix(users, items) -> (U, I) logits for every pair (evaluation). The default
  expands pairs in chunks; models whose parts are additive over user and item fields
  override it with an exact factorised version.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfm.data.schema import Schema


class RankingModel(nn.Module):
    trainable = True
    # pairs per forward pass in the default score_matrix: peak memory is about this times the
    # model's per-pair activations, so models with big intermediates (CIN) lower it
    score_chunk = 1 << 18

    def __init__(self, schema: Schema, features: dict[str, torch.Tensor]):
        super().__init__()
        self.schema = schema
        self.register_buffer("user_features", features["user_features"].long())
        self.register_buffer("item_features", features["item_features"].long())
        self.register_buffer("item_genres", features["item_genres"].long())

    def side_inputs(self, side: str, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if side == "user":
            return self.user_features[idx], []
        return self.item_features[idx], [self.item_genres[idx]]

    def embed_side(self, embedding: nn.Module, side: str, idx: torch.Tensor) -> torch.Tensor:
        codes, bags = self.side_inputs(side, idx)
        return embedding.side(side, codes, bags)

    def embed(self, embedding: nn.Module, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B,) users, (B,) items -> (B, F, dim): user fields first, then item fields."""
        return torch.cat(
            [self.embed_side(embedding, "user", users), self.embed_side(embedding, "item", items)],
            dim=1,
        )

    def add_first_order(self, schema: Schema) -> None:
        """The first-order (logistic-regression) part every model but ItemPop has: a bias and
        one weight per feature value (a 1-dim FeatureEmbedding)."""
        from deepfm.models.layers import FeatureEmbedding

        self.linear = FeatureEmbedding(schema, 1, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(()))

    def first_order(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B,) bias + first-order term of aligned pairs."""
        return self.bias + self.embed(self.linear, users, items).sum(dim=(1, 2))

    def first_order_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(U, I) bias + first-order term: a user part plus an item part."""
        lin_u = self.embed_side(self.linear, "user", users).sum(dim=(1, 2))
        lin_i = self.embed_side(self.linear, "item", items).sum(dim=(1, 2))
        return lin_u[:, None] + lin_i[None, :] + self.bias

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def score_matrix(
        self, users: torch.Tensor, items: torch.Tensor, chunk: int | None = None
    ) -> torch.Tensor:
        """(U,) users x (I,) items -> (U, I) logits, by expanding pairs in chunks of `chunk`
        (default: the class's score_chunk)."""
        chunk = chunk or self.score_chunk
        n_u, n_i = len(users), len(items)
        pair_u = users.repeat_interleave(n_i)
        pair_i = items.repeat(n_u)
        out = torch.cat(
            [self(pair_u[s : s + chunk], pair_i[s : s + chunk]) for s in range(0, n_u * n_i, chunk)]
        )
        return out.reshape(n_u, n_i)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
