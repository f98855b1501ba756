"""FM (Rendle, ICDM 2010): bias + first order + all pairwise inner products of field
embeddings. DeepFM without the DNN, to show what the DNN adds."""

from __future__ import annotations

import torch
from torch import nn

from deepfm.config import FMConfig
from deepfm.data.schema import Schema
from deepfm.models.base import RankingModel
from deepfm.models.layers import FeatureEmbedding, fm_interaction


class FM(RankingModel):
    def __init__(self, schema: Schema, features: dict, params: FMConfig):
        super().__init__(schema, features)
        self.embedding = FeatureEmbedding(schema, params.embed_dim)
        self.linear = FeatureEmbedding(schema, 1, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        emb = self.embed(self.embedding, users, items)  # (B, F, k)
        first_order = self.embed(self.linear, users, items).sum(dim=(1, 2))
        return self.bias + first_order + fm_interaction(emb)

    @torch.no_grad()
    def score_matrix(self, users: torch.Tensor, items: torch.Tensor, chunk: int | None = None):
        """Exact: pairs within a side are a user (or item) part; pairs across sides sum to
        <sum of user fields, sum of item fields>, one matrix product."""
        eu = self.embed_side(self.embedding, "user", users)  # (U, Fu, k)
        ei = self.embed_side(self.embedding, "item", items)  # (I, Fi, k)
        lin_u = self.embed_side(self.linear, "user", users).sum(dim=(1, 2))
        lin_i = self.embed_side(self.linear, "item", items).sum(dim=(1, 2))
        su, si = eu.sum(1), ei.sum(1)
        fm_u = 0.5 * (su.pow(2).sum(-1) - eu.pow(2).sum((1, 2)))
        fm_i = 0.5 * (si.pow(2).sum(-1) - ei.pow(2).sum((1, 2)))
        return (lin_u + fm_u)[:, None] + (lin_i + fm_i)[None, :] + su @ si.T + self.bias
