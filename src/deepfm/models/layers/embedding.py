"""FeatureEmbedding: every field of the schema -> one vector per field.

Sparse fields share one table with per-field offsets (one gather for all of them);
sequence fields (genres) are mean-pooled bags in which padding code 0 is left out of the
mean. Lookups are split by side (user / item) so a model can embed U users and I items once
and combine them into a U x I score matrix without materialising U*I rows of features.
On the CPU they are `index_select` on the weights rather than nn.Embedding / nn.EmbeddingBag
calls: same values, but the backward (an index_add instead of a sort-and-reduce) was 2-3x
faster on these small, dense tables. On a GPU they are `F.embedding`, whose backward is
deterministic and fast there, where index_select's is serial per repeated row under
torch.use_deterministic_algorithms (35x slower on an H200: docs/performance.md).

`field_dims` gives some fields their own size (a 3-code gender field needs fewer dimensions
than a 1,700-code item id): such a field gets its own table and a bias-free Linear up to the
common `dim`, so every model still sees (N, F, dim). Fields of the common size keep the
shared-table fast path.

The history (the user's most recent items, most recent first) can carry order two ways:
`history_pooling="position"` pools it with a learned weight per position (softmax over the
filled positions; all-zero logits at the start make it the plain mean), and
`recent_items=n` makes each of the n most recent items a user-side field of its own, with its
own table: an FM interaction between the last item and the candidate is then a factorised
item-to-item transition (FPMC, Rendle et al., WWW 2010). Both stay on the user side, so
models that factorise a score matrix into user and item parts keep doing so.

`sparse_gradients` (set by training under train.sparse_embeddings) makes every lookup's
backward a row-sparse gradient: with a click log's vocabulary of millions of codes, a dense
gradient and optimizer step over every row cost more than the batch itself.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from deepfm.data.schema import Schema
from deepfm.models.layers.causal import CausalTransformer
from deepfm.models.layers.dnn import Dropout


class FeatureEmbedding(nn.Module):
    def __init__(
        self,
        schema: Schema,
        dim: int,
        init_std: float = 1e-2,
        field_dims: dict | None = None,
        recent_items: int = 0,
        history_pooling: str = "mean",
        history_layers: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        history = schema.field("history")
        _check_history_options(history, recent_items, history_pooling)
        own = _own_sizes(schema, dim, field_dims)
        # The order below is the order in which torch's generator draws the initial weights:
        # changing it changes every model's starting point (and so its results).
        self.dim = dim
        self.sides: dict[str, dict] = {}
        self.tables = nn.ModuleDict()
        self.bags = nn.ModuleDict()
        self.own_tables = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        for side in ("user", "item"):
            self._add_side(schema, side, own)
        self.recent = nn.ModuleList(
            nn.Embedding(history.vocab_size, dim, padding_idx=0) for _ in range(recent_items)
        )
        self.history_pooling = history_pooling
        self.sparse_gradients = False
        if history_pooling == "position":
            self.history_position = nn.Parameter(torch.zeros(history.length))
        self.num_user_fields = self.side_width(schema, "user") + recent_items
        self.num_item_fields = self.side_width(schema, "item")
        self.num_fields = self.num_user_fields + self.num_item_fields
        self._init_tables(init_std)
        # a dense field's vector is its (scaled) value times a learned vector; made last, so
        # schemas without dense fields draw the same initial weights as before they existed
        dense = {side: len(schema.by_source(side, "dense")) for side in ("user", "item")}
        self.dense = nn.ParameterDict(
            {side: nn.Parameter(torch.randn(n, dim) * init_std) for side, n in dense.items() if n}
        )
        if history_pooling == "transformer":
            self.history_encoder = HistoryEncoder(history.length, dim, history_layers, dropout)

    def _add_side(self, schema: Schema, side: str, own: dict[str, int]) -> None:
        """One side's tables: the shared table of its fields of the common size, a table (and
        a projection up to `dim`) per field of its own size, a bag table per sequence field;
        and the buffers and column lists that `side` reads them by."""
        dim = self.dim
        sparse = side_sparse(schema, side)
        shared = [f for f in sparse if f.name not in own]
        separate = [f for f in sparse if f.name in own]
        sequence = schema.by_source(side, "sequence")
        offsets = torch.tensor([0] + [f.vocab_size for f in shared], dtype=torch.long)
        self.register_buffer(f"{side}_offsets", offsets.cumsum(0)[:-1], persistent=False)
        if shared:
            self.tables[side] = nn.Embedding(int(offsets.sum()), dim)
        for f in separate:
            self.own_tables[f.name] = nn.Embedding(f.vocab_size, own[f.name])
        for f in sequence:
            self.bags[f.name] = nn.Embedding(f.vocab_size, own.get(f.name, dim), padding_idx=0)
        for f in [*separate, *sequence]:
            if f.name in own:
                self.projections[f.name] = nn.Linear(own[f.name], dim, bias=False)
        # sparse parts come out as [shared, separate]; `order` puts them back into column
        # order. A side's fields leave as: sparse, dense, sequence (schema order).
        produced = [*shared, *separate]
        order = sorted(range(len(produced)), key=lambda p: sparse.index(produced[p]))
        identity = order == list(range(len(order)))
        self.register_buffer(
            f"{side}_order", None if identity else torch.tensor(order), persistent=False
        )
        self.sides[side] = {
            "shared_columns": [f.column for f in shared],
            "separate": [(f.name, f.column) for f in separate],
            "sequence": [(f.name, f.column) for f in sequence],
        }

    def _init_tables(self, init_std: float) -> None:
        """Every lookup table drawn again from N(0, init_std), padding rows zero."""
        tables = [*self.tables.values(), *self.bags.values(), *self.own_tables.values()]
        for module in [*tables, *self.recent]:
            nn.init.normal_(module.weight, std=init_std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[0].zero_()

    @staticmethod
    def side_width(schema: Schema, side: str) -> int:
        """How many field vectors one side yields (before recent_items)."""
        return len(side_sparse(schema, side)) + sum(
            len(schema.by_source(side, k)) for k in ("dense", "sequence")
        )

    def field_position(self, schema: Schema, side: str, name: str) -> int:
        """Where field `name` sits among one side's output vectors (sparse by column, then
        dense, then sequence fields)."""
        sparse = sorted(side_sparse(schema, side), key=lambda f: f.column)
        names = [f.name for f in sparse]
        names += [f.name for f in schema.by_source(side, "dense")]
        names += [f.name for f in schema.by_source(side, "sequence")]
        return names.index(name)

    def side(
        self, side: str, codes: Tensor, bags: list[Tensor], dense: Tensor | None = None
    ) -> Tensor:
        """codes: (N, n_sparse) field codes of one side, in column order; bags: one (N, L) code
        matrix per sequence field; dense: (N, n_dense) values or None. Returns
        (N, n_fields_of_side, dim): sparse fields, dense fields, sequence fields."""
        spec = self.sides[side]
        sparse = []
        if spec["shared_columns"]:
            shared = codes if not spec["separate"] else codes[:, spec["shared_columns"]]
            offsets = getattr(self, f"{side}_offsets")
            sparse.append(self._lookup(self.tables[side].weight, shared + offsets))
        for name, column in spec["separate"]:
            own = self._lookup(self.own_tables[name].weight, codes[:, column])
            sparse.append(self.projections[name](own)[:, None])
        parts = []
        if sparse:
            out = torch.cat(sparse, dim=1) if len(sparse) > 1 else sparse[0]
            order = getattr(self, f"{side}_order")
            parts.append(out if order is None else out[:, order])
        if side in self.dense:
            parts.append(dense.unsqueeze(-1).to(self.dense[side].dtype) * self.dense[side])
        history = None
        for (name, _), bag in zip(spec["sequence"], bags, strict=True):
            if name == "history":
                history = bag
            rows = self._lookup(self.bags[name].weight, bag)
            if name == "history" and self.history_pooling == "position":
                pooled = _weighted_bag(rows, bag, self.history_position)
            elif name == "history" and self.history_pooling == "transformer":
                if name in self.projections:  # the encoder works at the common size
                    rows = self.projections[name](rows)
                parts.append(self.history_encoder(rows, bag).unsqueeze(1))
                continue
            else:
                pooled = _mean_bag(rows, bag)
            if name in self.projections:
                pooled = self.projections[name](pooled)
            parts.append(pooled.unsqueeze(1))
        if not parts:  # a side without fields (the ctr protocol's placeholder item)
            weight = next(iter(self.parameters()))
            return weight.new_zeros(len(codes), 0, self.dim)
        out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if side == "user" and len(self.recent):
            recent = [self._lookup(t.weight, history[:, p]) for p, t in enumerate(self.recent)]
            out = torch.cat([out, torch.stack(recent, dim=1)], dim=1)
        return out

    def history_items(self, history: Tensor) -> Tensor:
        """(N, L) history codes -> (N, L, dim) embeddings from the history table (padding: 0),
        for models that pool the history themselves (target attention)."""
        return self._lookup(self.bags["history"].weight, history)

    def _lookup(self, weight: Tensor, codes: Tensor) -> Tensor:
        """weight[codes] for any shape of codes: (..., ) -> (..., dim)."""
        if self.sparse_gradients:
            return nn.functional.embedding(codes, weight, sparse=True)
        return lookup_rows(weight, codes)


def add_field_embeddings(model: nn.Module, schema: Schema, params) -> None:
    """The field embeddings of a DeepFM-family model (DeepFM, xDeepFM, Attention-DeepFM):
    model.embedding, the FeatureEmbedding that `params` (the model's section: embed_dim,
    field_dims, dropout and the order-aware switches) asks for, then the model's first-order
    part (RankingModel.add_first_order). In that order: it is the order in which torch draws
    their initial weights, so the models start where they always have."""
    model.embedding = FeatureEmbedding(
        schema,
        params.embed_dim,
        field_dims=params.field_dims,
        recent_items=params.recent_items,
        history_pooling=params.history_pooling,
        history_layers=params.history_layers,
        dropout=params.dropout,
    )
    model.add_first_order(schema)


def lookup_rows(weight: Tensor, codes: Tensor) -> Tensor:
    """weight[codes] for any shape of codes, (...,) -> (..., dim), with the backward that is
    fast on the weight's device (the module docstring says why the two differ)."""
    if weight.device.type != "cpu":
        return nn.functional.embedding(codes, weight)
    return weight.index_select(0, codes.reshape(-1)).view(*codes.shape, weight.shape[1])


def side_sparse(schema: Schema, side: str) -> list:
    """One side's sparse fields, columns as in the codes the model passes: on the user side
    the context fields follow the user's own, their columns shifted past them."""
    fields = list(schema.by_source(side, "sparse"))
    if side == "user":
        shift = len(fields)
        fields += [
            dataclasses.replace(f, column=shift + f.column)
            for f in schema.by_source("context", "sparse")
        ]
    return fields


def _check_history_options(history, recent_items: int, history_pooling: str) -> None:
    """recent_items and history_pooling read the history field: it must be there, and hold
    at least recent_items items."""
    if (recent_items or history_pooling != "mean") and history is None:
        raise ValueError(
            "recent_items and history_pooling need the history field: set "
            "split.history_length > 0, or recent_items: 0 and history_pooling: mean."
        )
    if history is not None and recent_items > history.length:
        raise ValueError(
            f"recent_items is {recent_items} but the history holds {history.length} items "
            "(split.history_length): lower recent_items or raise split.history_length."
        )


def _own_sizes(schema: Schema, dim: int, field_dims: dict[str, int] | None) -> dict[str, int]:
    """The fields that field_dims gives a size other than `dim`, with that size (checked:
    fields of the schema that have a table, positive sizes)."""
    field_dims = dict(field_dims or {})
    names = [f.name for f in schema.fields]
    unknown = sorted(set(field_dims) - set(names))
    if unknown:
        raise ValueError(
            f"field_dims names unknown fields {', '.join(unknown)}; fields: {', '.join(names)}."
        )
    dense = sorted(set(field_dims) & {f.name for f in schema.fields if f.kind == "dense"})
    if dense:
        raise ValueError(
            f"field_dims names dense fields {', '.join(dense)}: a number has no table; "
            "its vector always has the common size. Remove it from field_dims."
        )
    bad = {k: v for k, v in field_dims.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(f"field_dims sizes must be positive integers, got {bad}.")
    # a field whose size equals `dim` needs no projection: it stays on the fast path
    return {name: size for name, size in field_dims.items() if size != dim}


class HistoryEncoder(nn.Module):
    """(N, L, dim) history rows of (N, L) codes, most recent first, 0-padded -> (N, dim): the
    most recent position's output of a causal self-attention stack over the history in
    chronological order (the Behavior Sequence Transformer's encoder, Chen et al. 2019, with
    SASRec's blocks). Positions count back from the most recent item, so padding on the left
    changes nothing; an empty history gives a learned constant."""

    def __init__(self, length: int, dim: int, num_layers: int, dropout: float):
        super().__init__()
        self.positions = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.dropout = Dropout(dropout)
        self.encoder = CausalTransformer(dim, num_layers, 1, dropout)

    def forward(self, rows: Tensor, codes: Tensor) -> Tensor:
        n = codes.shape[1]
        valid = (codes > 0).flip(1)  # chronological, left-padded: the last column is the newest
        x = rows.flip(1) * valid.unsqueeze(-1).to(rows.dtype) + self.positions[:n].flip(0)
        return self.encoder(self.dropout(x), valid, last=True)


def _weighted_bag(rows: Tensor, codes: Tensor, logits: Tensor) -> Tensor:
    """(N, L, dim) looked-up rows of (N, L) 0-padded codes -> (N, dim): softmax(logits) over
    each row's filled positions."""
    present = codes > 0
    scores = logits[: codes.shape[1]].expand(codes.shape).masked_fill(~present, -torch.inf)
    share = torch.softmax(scores, dim=1).nan_to_num(0.0)  # an empty bag pools to zeros
    return (rows * share.unsqueeze(-1)).sum(1)


def _mean_bag(rows: Tensor, codes: Tensor) -> Tensor:
    """(N, L, dim) looked-up rows of (N, L) 0-padded codes -> (N, dim) mean of the
    non-padding rows (zeros for an empty bag)."""
    present = (codes > 0).to(rows.dtype)
    share = present / present.sum(1, keepdim=True).clamp(min=1)
    return (rows * share.unsqueeze(-1)).sum(1)
