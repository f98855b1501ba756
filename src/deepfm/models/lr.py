"""LR: logistic regression on the one-hot fields, a bias plus one weight per feature value.

The floor every interaction model must clear: it can only learn "this user likes many
items" plus "this item is liked by many users", i.e. a personalised popularity.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepfm.config import LRConfig
from deepfm.data.schema import Schema
from deepfm.models.base import RankingModel


class LR(RankingModel):
    def __init__(self, schema: Schema, features: dict, params: LRConfig):
        super().__init__(schema, features)
        self.add_first_order(schema)

    def forward(self, users: Tensor, items: Tensor, history: Tensor | None = None) -> Tensor:
        return self.first_order(users, items, history)

    @torch.no_grad()
    def score_matrix(
        self, users: Tensor, items: Tensor, history: Tensor | None = None, chunk: int | None = None
    ) -> Tensor:
        """Exact: the logit is a user part plus an item part."""
        return self.first_order_matrix(users, items, history)
