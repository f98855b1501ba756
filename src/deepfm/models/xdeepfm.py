"""xDeepFM (Lian et al., KDD 2018): first order + CIN (explicit, vector-wise interactions of
bounded degree) + DNN (implicit, bit-wise ones) over shared field embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from deepfm.config import XDeepFMConfig
from deepfm.data.schema import Schema
from deepfm.models.base import RankingModel
from deepfm.models.layers import CIN, DNN, add_field_embeddings


class XDeepFM(RankingModel):
    # score_matrix works on 64 x 64 blocks of (user, item) pairs: each holds a few (k, H_l)
    # activations per pair, 16 MB apiece with 64 maps; larger blocks were slower on CPU
    score_chunk = 1 << 12

    def __init__(self, schema: Schema, features: dict, params: XDeepFMConfig):
        super().__init__(schema, features)
        add_field_embeddings(self, schema, params)  # first: keeps the initialisation order
        self.cin = CIN(self.embedding.num_fields, list(params.cin_layers), params.cin_split_half)
        self.dnn = DNN.over_fields(self.embedding.num_fields, params.embed_dim, params)

    def forward(self, users: Tensor, items: Tensor, history: Tensor | None = None) -> Tensor:
        emb = self.embed(self.embedding, users, items, history)  # (B, F, k)
        first = self.first_order(users, items, history)
        return first + self.cin(emb) + self.dnn(emb.flatten(1))

    @torch.no_grad()
    def score_matrix(
        self, users: Tensor, items: Tensor, history: Tensor | None = None, chunk: int | None = None
    ) -> Tensor:
        """Exact U x I logits from per-user and per-item parts: the linear term and the DNN's
        first Linear are additive as in DeepFM, and the CIN scores blocks of pairs without
        forming its per-pair field products (CIN.score_pairs)."""
        block = max(1, math.isqrt(chunk or self.score_chunk))
        eu = self.embed_side(self.embedding, "user", users, history)  # (U, Fu, k)
        ei = self.embed_side(self.embedding, "item", items)  # (I, Fi, k)
        folded = self.dnn.folded_linears()
        hu, hi = self.dnn.first_by_side(eu.flatten(1), ei.flatten(1), folded)  # (U, H), (I, H)
        out = self.first_order_matrix(users, items, history)
        for u0 in range(0, len(users), block):
            us = slice(u0, u0 + block)
            for i0 in range(0, len(items), block):
                its = slice(i0, i0 + block)
                deep = self.dnn.forward_from_first(hu[us, None, :] + hi[None, its, :], folded)
                out[us, its] += self.cin.score_pairs(eu[us], ei[its]) + deep
        return out
