"""DeepFM (Guo et al., IJCAI 2017): first-order + FM + DNN over shared field embeddings."""

from __future__ import annotations

import torch
from torch import nn

from deepfm.config import DeepFMConfig
from deepfm.data.schema import Schema
from deepfm.models.base import RankingModel
from deepfm.models.layers import DNN, FeatureEmbedding, fm_interaction


class DeepFM(RankingModel):
    def __init__(self, schema: Schema, features: dict, params: DeepFMConfig):
        super().__init__(schema, features)
        self.embedding = FeatureEmbedding(schema, params.embed_dim)
        self.linear = FeatureEmbedding(schema, 1, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(()))
        self.dnn = DNN(
            self.embedding.num_fields * params.embed_dim,
            list(params.dnn_hidden),
            params.dropout,
            params.batch_norm,
        )

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        emb = self.embed(self.embedding, users, items)  # (B, F, k)
        first_order = self.embed(self.linear, users, items).sum(dim=(1, 2))
        return self.bias + first_order + fm_interaction(emb) + self.dnn(emb.flatten(1))

    @torch.no_grad()
    def score_matrix(self, users: torch.Tensor, items: torch.Tensor, chunk: int = 0):
        """Exact U x I logits without expanding pairs: the linear term, the FM term and the DNN's
        first Linear are all sums of a user part and an item part."""
        eu = self.embed_side(self.embedding, "user", users)  # (U, Fu, k)
        ei = self.embed_side(self.embedding, "item", items)  # (I, Fi, k)
        lin_u = self.embed_side(self.linear, "user", users).sum(dim=(1, 2))
        lin_i = self.embed_side(self.linear, "item", items).sum(dim=(1, 2))
        su, si = eu.sum(1), ei.sum(1)
        fm_u = 0.5 * (su.pow(2).sum(-1) - eu.pow(2).sum((1, 2)))
        fm_i = 0.5 * (si.pow(2).sum(-1) - ei.pow(2).sum((1, 2)))
        additive = (lin_u + fm_u)[:, None] + (lin_i + fm_i)[None, :] + su @ si.T + self.bias
        folded = self.dnn.folded_linears()
        w, b = folded[0]  # (H, (Fu + Fi) * k), user fields first
        split = eu.shape[1] * eu.shape[2]
        hu = torch.addmm(b, eu.flatten(1), w[:, :split].T)  # (U, H)
        hi = ei.flatten(1) @ w[:, split:].T  # (I, H)
        deep = self.dnn.forward_from_first(hu[:, None, :] + hi[None, :, :], folded)  # (U, I)
        return additive + deep
