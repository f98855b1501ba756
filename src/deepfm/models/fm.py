"""FM (Rendle, ICDM 2010): bias + first order + all pairwise inner products of field
embeddings. DeepFM without the DNN, to show what the DNN adds."""

from __future__ import annotations

import torch
from torch import Tensor

from deepfm.config import FMConfig
from deepfm.data.schema import Schema
from deepfm.models.base import RankingModel
from deepfm.models.layers import FeatureEmbedding, fm_interaction, fm_interaction_matrix


class FM(RankingModel):
    def __init__(self, schema: Schema, features: dict, params: FMConfig):
        super().__init__(schema, features)
        self.embedding = FeatureEmbedding(schema, params.embed_dim, field_dims=params.field_dims)
        self.add_first_order(schema)  # after the embedding: keeps the initialisation order

    def forward(self, users: Tensor, items: Tensor, history: Tensor | None = None) -> Tensor:
        emb = self.embed(self.embedding, users, items, history)  # (B, F, k)
        return self.first_order(users, items, history) + fm_interaction(emb)

    @torch.no_grad()
    def score_matrix(
        self, users: Tensor, items: Tensor, history: Tensor | None = None, chunk: int | None = None
    ) -> Tensor:
        """Exact: pairs within a side are a user (or item) part; pairs across sides sum to
        <sum of user fields, sum of item fields>, one matrix product."""
        eu = self.embed_side(self.embedding, "user", users, history)  # (U, Fu, k)
        ei = self.embed_side(self.embedding, "item", items)  # (I, Fi, k)
        return self.first_order_matrix(users, items, history) + fm_interaction_matrix(eu, ei)
