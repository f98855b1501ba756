"""DeepFM (Guo et al., IJCAI 2017): first-order + FM + DNN over shared field embeddings."""

from __future__ import annotations

import torch
from torch import Tensor

from deepfm.config import DeepFMConfig
from deepfm.data.schema import Schema
from deepfm.models.base import RankingModel, group_pairs
from deepfm.models.layers import DNN, add_field_embeddings, fm_interaction, fm_interaction_matrix


class DeepFM(RankingModel):
    def __init__(self, schema: Schema, features: dict, params: DeepFMConfig):
        super().__init__(schema, features)
        add_field_embeddings(self, schema, params)  # first: keeps the initialisation order
        self.dnn = DNN.over_fields(self.embedding.num_fields, params.embed_dim, params)

    def forward(self, users: Tensor, items: Tensor, history: Tensor | None = None) -> Tensor:
        emb = self.embed(self.embedding, users, items, history)  # (B, F, k)
        first = self.first_order(users, items, history)
        return first + fm_interaction(emb) + self.dnn(emb.flatten(1))

    def group_logits(self, users: Tensor, groups: Tensor, history: Tensor | None = None) -> Tensor:
        """(B, G) logits, equal to the expanded pairs' (RankingModel's), with the user side
        (its history encoder included) embedded once per row, not once per pair."""
        eu = self.embed_side(self.embedding, "user", users, history)  # (B, Fu, k)
        return self._group_logits(eu, users, groups, history)

    def group_and_catalogue_logits(
        self, users: Tensor, groups: Tensor, history: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """group_logits, and the (B, num_items) factorised part of the logit of every item
        in the catalogue: the first-order and FM terms, without the DNN (which would cost a
        pass per (row, item) pair). The user side is embedded once for both."""
        eu = self.embed_side(self.embedding, "user", users, history)  # (B, Fu, k)
        every = torch.arange(len(self.item_features), device=users.device)
        ea = self.embed_side(self.embedding, "item", every)  # (I, Fi, k)
        catalogue = self.first_order_matrix(users, every, history) + fm_interaction_matrix(eu, ea)
        return self._group_logits(eu, users, groups, history), catalogue

    def _group_logits(self, eu, users, groups, history) -> Tensor:
        b, g = groups.shape
        ei = self.embed_side(self.embedding, "item", groups.reshape(-1))  # (B * G, Fi, k)
        emb = torch.cat([eu.repeat_interleave(g, dim=0), ei], dim=1)  # (B * G, F, k)
        first = self.first_order(*group_pairs(users, groups, history))
        return (first + fm_interaction(emb) + self.dnn(emb.flatten(1))).view(b, g)

    @torch.no_grad()
    def score_matrix(
        self, users: Tensor, items: Tensor, history: Tensor | None = None, chunk: int | None = None
    ) -> Tensor:
        """Exact U x I logits without expanding pairs: the linear term, the FM term and the DNN's
        first Linear are all sums of a user part and an item part."""
        eu = self.embed_side(self.embedding, "user", users, history)  # (U, Fu, k)
        ei = self.embed_side(self.embedding, "item", items)  # (I, Fi, k)
        additive = self.first_order_matrix(users, items, history) + fm_interaction_matrix(eu, ei)
        folded = self.dnn.folded_linears()
        hu, hi = self.dnn.first_by_side(eu.flatten(1), ei.flatten(1), folded)  # (U, H), (I, H)
        deep = self.dnn.forward_from_first(hu[:, None, :] + hi[None, :, :], folded)  # (U, I)
        return additive + deep
