"""LR: logistic regression on the one-hot fields, a bias plus one weight per feature value.

The floor every interaction model must clear: it can only learn "this user likes many
items" plus "this item is liked by many users", i.e. a personalised popularity.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfm.config import LRConfig
from deepfm.data.schema import Schema
from deepfm.models.base import RankingModel
from deepfm.models.layers import FeatureEmbedding


class LR(RankingModel):
    def __init__(self, schema: Schema, features: dict, params: LRConfig):
        super().__init__(schema, features)
        self.linear = FeatureEmbedding(schema, 1, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.bias + self.embed(self.linear, users, items).sum(dim=(1, 2))

    @torch.no_grad()
    def score_matrix(self, users: torch.Tensor, items: torch.Tensor, chunk: int | None = None):
        """Exact: the logit is a user part plus an item part."""
        lin_u = self.embed_side(self.linear, "user", users).sum(dim=(1, 2))
        lin_i = self.embed_side(self.linear, "item", items).sum(dim=(1, 2))
        return lin_u[:, None] + lin_i[None, :] + self.bias
