"""The shared base of every model: feature lookup tables and the scoring interface.

A model scores (user index, item index) pairs. The feature matrices from the split stage
are buffers of the model, so a checkpoint is self-contained and batching moves only integer
vectors. What changes from one example to the next on the user side comes with the call as
`history`, an (N, L + C) int matrix: the history field (the user's L most recent items before
the example, item_id codes, 0-padded), then the codes of the C context fields (columns of the
interaction itself, which join the user side's sparse fields). A schema with neither takes
None; a model that reads the history alone takes `history_of(history)`. A model scores
aligned pairs (`forward`, training) and every user x item pair (`score_matrix`, evaluation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepfm.data.schema import Schema
from deepfm.data.splitting import feature_names


class RankingModel(nn.Module):
    trainable = True
    # a model that cannot work without the history field (a pure sequence model) raises a
    # ValueError naming split.history_length at construction when the schema lacks it
    requires_history = False
    # pairs per forward pass in the default score_matrix: peak memory is about this times the
    # model's per-pair activations, so models with big intermediates (CIN) lower it
    score_chunk = 1 << 18

    def __init__(self, schema: Schema, features: dict[str, Tensor]):
        super().__init__()
        self.schema = schema
        # one buffer per feature array the schema declares (deepfm.data.splitting.SplitResult)
        for name in feature_names(schema):
            dense = name.endswith("_dense")
            self.register_buffer(name, features[name].float() if dense else features[name].long())
        history = schema.field("history")
        self.history_length = history.length if history is not None else 0
        self.num_context = len(schema.by_source("context", "sparse"))
        # the per-example matrix (`history`): the split's history codes, then the context
        # codes; a model may read only the first history_length of the split's codes
        # (Schema.reading_history), so the context columns are counted from the end
        self.uses_history = bool(self.history_length or self.num_context)

    def history_of(self, history: Tensor | None) -> Tensor | None:
        """The history codes of a per-example matrix, without its context columns."""
        return None if history is None else history[:, : self.history_length]

    def item_id_codes(self) -> Tensor:
        """(num_items,) the item_id code of every item index (0: unseen in train), the
        vocabulary of the history field."""
        return self.item_features[:, self.schema.field("item_id").column]

    def side_inputs(
        self, side: str, idx: Tensor, history: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """One side's inputs for indices `idx`: the sparse codes (N, n_sparse), one (N, L)
        code matrix per sequence field in schema order (the history first, from `history`),
        and the dense values (N, n_dense) or None."""
        codes = getattr(self, f"{side}_features")[idx]
        dense = (
            getattr(self, f"{side}_dense")[idx] if self.schema.by_source(side, "dense") else None
        )
        bags = [
            getattr(self, f"{side}_{f.name}")[idx]
            for f in self.schema.by_source(side, "sequence")
            if f.name != "history"
        ]
        if side == "item" or not self.uses_history:
            return codes, bags, dense
        width = self.history_length + self.num_context
        if history is None or history.shape[0] != len(idx) or history.shape[1] < width:
            raise ValueError(
                "this model's schema has a history or context field: pass history, one row "
                f"per user of at least {self.history_length} item_id codes, then "
                f"{self.num_context} context codes ({len(idx)} x >= {width}; got "
                f"{'none' if history is None else tuple(history.shape)}), e.g. "
                "SplitResult.train_history or HeldOut.history."
            )
        if self.num_context:  # context fields are sparse fields of the user side
            context = history[:, history.shape[1] - self.num_context :]
            codes = torch.cat([codes, context.long()], dim=1)
        if self.history_length:
            bags = [history[:, : self.history_length].long(), *bags]
        return codes, bags, dense

    def embed_side(
        self, embedding: nn.Module, side: str, idx: Tensor, history: Tensor | None = None
    ) -> Tensor:
        return embedding.side(side, *self.side_inputs(side, idx, history))

    def embed(
        self, embedding: nn.Module, users: Tensor, items: Tensor, history: Tensor | None = None
    ) -> Tensor:
        """(B,) users, (B,) items -> (B, F, dim): user fields first, then item fields."""
        eu = self.embed_side(embedding, "user", users, history)
        return torch.cat([eu, self.embed_side(embedding, "item", items)], dim=1)

    def add_first_order(self, schema: Schema) -> None:
        """The first-order (logistic-regression) part every model but ItemPop has: a bias and
        one weight per feature value (a 1-dim FeatureEmbedding)."""
        from deepfm.models.layers import FeatureEmbedding

        self.linear = FeatureEmbedding(schema, 1, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(()))

    def first_order(self, users: Tensor, items: Tensor, history: Tensor | None = None) -> Tensor:
        """(B,) bias + first-order term of aligned pairs."""
        return self.bias + self.embed(self.linear, users, items, history).sum(dim=(1, 2))

    def first_order_matrix(
        self, users: Tensor, items: Tensor, history: Tensor | None = None
    ) -> Tensor:
        """(U, I) bias + first-order term: a user part plus an item part."""
        lin_u = self.embed_side(self.linear, "user", users, history).sum(dim=(1, 2))
        lin_i = self.embed_side(self.linear, "item", items).sum(dim=(1, 2))
        return lin_u[:, None] + lin_i[None, :] + self.bias

    def forward(self, users: Tensor, items: Tensor, history: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def group_logits(self, users: Tensor, groups: Tensor, history: Tensor | None = None) -> Tensor:
        """(B,) users and a (B, G) group of candidate items each -> (B, G) logits, in one
        forward pass over the B * G pairs (training mode included: BatchNorm sees them all)."""
        return self(*group_pairs(users, groups, history)).reshape(groups.shape)

    @torch.no_grad()
    def score_matrix(
        self, users: Tensor, items: Tensor, history: Tensor | None = None, chunk: int | None = None
    ) -> Tensor:
        """(U,) users (with their (U, L) history) x (I,) items -> (U, I) logits, by expanding
        pairs in chunks of `chunk` (default: the class's score_chunk)."""
        chunk = chunk or self.score_chunk
        n_u, n_i = len(users), len(items)
        pair_row = torch.arange(n_u, device=users.device).repeat_interleave(n_i)
        pair_i = items.repeat(n_u)
        parts = []
        for s in range(0, n_u * n_i, chunk):
            rows = pair_row[s : s + chunk]
            h = None if history is None else history[rows]
            parts.append(self(users[rows], pair_i[s : s + chunk], h))
        return torch.cat(parts).reshape(n_u, n_i)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def group_pairs(users: Tensor, groups: Tensor, history: Tensor | None) -> tuple:
    """(B,) users with a (B, G) group of items each (and their (B, L) history) -> the B * G
    aligned pairs (users, items, history), group by group."""
    g = groups.shape[1]
    return (
        users.repeat_interleave(g),
        groups.reshape(-1),
        None if history is None else history.repeat_interleave(g, dim=0),
    )
