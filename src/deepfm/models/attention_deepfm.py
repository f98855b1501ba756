"""Attention-DeepFM: DeepFM whose DNN reads field embeddings refined by stacked multi-head
self-attention across fields (AutoInt's interacting layers, Song et al., CIKM 2019).

The first-order and FM terms read the raw embeddings, so the model keeps DeepFM's explicit
second-order part and the attention only reshapes what the DNN sees; with
attention_layers = 0 it is DeepFM.

With `target_attention`, the history field is pooled by attention from the candidate item
(DIN) instead of a fixed pooling, for the FM term and the DNN alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepfm.config import AttentionDeepFMConfig
from deepfm.data.schema import Schema
from deepfm.models.base import RankingModel
from deepfm.models.layers import (
    DNN,
    TargetAttention,
    add_field_embeddings,
    field_attention_stack,
    fm_interaction,
)


class AttentionDeepFM(RankingModel):
    # attention mixes user and item fields, so there is no exact factorised score_matrix: pairs
    # are expanded in chunks; 2,048 pairs (a few MB of activations) measured fastest on CPU
    score_chunk = 1 << 11

    def __init__(self, schema: Schema, features: dict, params: AttentionDeepFMConfig):
        super().__init__(schema, features)
        add_field_embeddings(self, schema, params)  # first: keeps the initialisation order
        self.attention = field_attention_stack(
            params.attention_layers, params.embed_dim, params.attention_heads, params.attention_dim
        )
        self.target_attention = None
        if params.target_attention:
            history = schema.field("history")
            if history is None:
                raise ValueError(
                    "attention_deepfm.target_attention needs the history field: set "
                    "split.history_length > 0, or target_attention: false."
                )
            self.target_attention = TargetAttention(params.embed_dim, history.length)
            # where the history and the candidate's item_id sit among the embedded fields
            self.history_field = self.embedding.field_position(schema, "user", "history")
            self.item_id_field = self.embedding.num_user_fields + self.embedding.field_position(
                schema, "item", "item_id"
            )
        heads = params.attention_heads * params.attention_dim  # the attention's output width
        width = heads if params.attention_layers else params.embed_dim
        self.dnn = DNN.over_fields(self.embedding.num_fields, width, params)

    def forward(self, users: Tensor, items: Tensor, history: Tensor | None = None) -> Tensor:
        emb = self.embed(self.embedding, users, items, history)  # (B, F, k)
        if self.target_attention is not None:
            h = self.history_field
            items_before = self.history_of(history)
            pooled = self.target_attention(
                self.embedding.history_items(items_before),
                emb[:, self.item_id_field],
                items_before > 0,
            )
            emb = torch.cat([emb[:, :h], pooled.unsqueeze(1), emb[:, h + 1 :]], dim=1)
        deep = self.dnn(self.attention(emb).flatten(1))
        return self.first_order(users, items, history) + fm_interaction(emb) + deep
