"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

A pure sequence model: the user is the history field (their most recent items before the
example) and nothing else. Each item is its item_id embedding times sqrt(d) plus a learned
positional embedding, then dropout, a CausalTransformer and its final LayerNorm; the user
state h is the output at the most recent position. Positions count back from the most recent
item, so extra left padding changes nothing; a history longer than `max_len` keeps its
max_len most recent items. An empty history gives a learned, finite "no history" state (the
padding position attends to itself only; its input is the position-0 embedding).

logit(u, i) = h_u . E[item_id(i)] (+ b[item_id(i)] with item_bias), with E the input table
(shared, as in the paper). An item without a train code (item_id code 0) is scored with row
0 of E, which the input side never reads (padding inputs are zeroed).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepfm.config import SASRecConfig
from deepfm.data.schema import Schema
from deepfm.models.base import RankingModel
from deepfm.models.layers import CausalTransformer
from deepfm.models.layers.dnn import Dropout
from deepfm.models.layers.embedding import lookup_rows


class SASRec(RankingModel):
    requires_history = True

    def __init__(self, schema: Schema, features: dict, params: SASRecConfig):
        super().__init__(schema, features)
        if schema.field("history") is None:
            raise ValueError(
                "SASRec is a sequence model and needs the history field, which this split does "
                "not have (split.history_length is 0): set split.history_length > 0 in "
                "params.yaml and rerun the split stage."
            )
        item_id = schema.field("item_id")
        d = params.embed_dim
        self.max_len = params.max_len
        self.scale = d**0.5
        self.item_embedding = nn.Embedding(item_id.vocab_size, d, padding_idx=0)
        self.position_embedding = nn.Embedding(params.max_len, d)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.item_bias = nn.Parameter(torch.zeros(item_id.vocab_size)) if params.item_bias else None
        self.input_dropout = Dropout(params.dropout)
        self.encoder = CausalTransformer(d, params.num_layers, params.num_heads, params.dropout)

    def user_state(self, history: Tensor) -> Tensor:
        """(B, L) item_id codes, most recent first, 0-padded -> (B, d) user states."""
        history = history.long()[:, : self.max_len]
        seq = history.flip(1)  # chronological, left-padded: the last column is the most recent
        valid = seq > 0
        n = seq.shape[1]
        x = lookup_rows(self.item_embedding.weight, seq) * (valid.unsqueeze(-1) * self.scale)
        # column j of the chronological row is n - 1 - j items back from the most recent
        x = x + self.position_embedding.weight[:n].flip(0)
        return self.encoder(self.input_dropout(x), valid, last=True)

    def _state(self, users: Tensor, history: Tensor | None) -> Tensor:
        # side_inputs checks that there is one history row per user (same error as the others)
        history = self.side_inputs("user", users, history)[1][0]  # the history comes first
        return self.user_state(history)

    def item_vectors(self, items: Tensor) -> tuple[Tensor, Tensor | None]:
        """(I,) item indices -> (I, d) output embeddings and (I,) biases (None without)."""
        codes = self.item_id_codes()[items]
        bias = None if self.item_bias is None else self.item_bias[codes]
        return lookup_rows(self.item_embedding.weight, codes), bias

    def forward(self, users: Tensor, items: Tensor, history: Tensor | None = None) -> Tensor:
        h = self._state(users, history)
        e, b = self.item_vectors(items)
        logits = (h * e).sum(-1)
        return logits if b is None else logits + b

    def catalogue_logits(self, users: Tensor, history: Tensor | None = None) -> Tensor:
        """(B,) users with their (B, L) history -> (B, num_items) logits of every item index
        0..num_items-1: the full-softmax loss takes cross_entropy(these, target item index)."""
        h = self._state(users, history)
        e, b = self.item_vectors(torch.arange(self.schema.num_items, device=h.device))
        logits = h @ e.T
        return logits if b is None else logits + b

    @torch.no_grad()
    def score_matrix(
        self, users: Tensor, items: Tensor, history: Tensor | None = None, chunk: int | None = None
    ) -> Tensor:
        """Exact U x I logits: one state per user, (U, d) @ (d, I)."""
        h = self._state(users, history)
        e, b = self.item_vectors(items)
        logits = h @ e.T
        return logits if b is None else logits + b
