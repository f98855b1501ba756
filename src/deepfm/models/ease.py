"""EASE: Steck, "Embarrassingly Shallow Autoencoders for Sparse Data" (WWW 2019). No training.

Fit. X is the binary user x item matrix of the train rows (`input: rated`, every train
rating, or `input: positives`). With G = X^T X + l2 * I and P = G^-1, the item-item weights
are B = -P / diag(P) (column j divided by -P[j, j]) with diag(B) = 0: column j is the ridge
regression of X[:, j] on the other items' columns, min ||X[:, j] - X B[:, j]||^2 +
l2 ||B[:, j]||^2 subject to B[j, j] = 0. Computed in float64, kept in float32 (a dense
num_items^2 buffer: 11 MB for MovieLens-100K, 55 MB for 1M; the fit inverts a dense
float64 num_items^2 matrix).

Score. x_u is the user's train items (per `input`) together with the items of the `history`
argument (the test item's history also holds the validation item), as one binary vector;
score(u, i) = x_u B[:, i]. History codes map back to item indices; code 0 (padding, or an
item unseen in train) is ignored. The users' train items are kept as CSR buffers (row
pointers over users, item indices), so the checkpoint is self-contained without a dense
users x items matrix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from deepfm.config import EASEConfig
from deepfm.data.batches import target_rows
from deepfm.data.schema import Schema
from deepfm.data.splitting import SplitResult
from deepfm.models.base import RankingModel


def ease_weights(x: sp.spmatrix, l2: float) -> np.ndarray:
    """(I, I) float64 B of EASE for a binary (users, I) matrix x."""
    gram = (x.T @ x).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = p / -np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


class EASE(RankingModel):
    trainable = False
    score_chunk = 1 << 22  # forward: pairs x num_items input cells per block

    def __init__(self, schema: Schema, features: dict, params: EASEConfig):
        super().__init__(schema, features)
        self.params = params
        n_items = schema.num_items
        self.register_buffer("weights", torch.zeros(n_items, n_items))
        self.register_buffer("user_indptr", torch.zeros(schema.num_users + 1, dtype=torch.long))
        self.register_buffer("user_items", torch.zeros(0, dtype=torch.long))  # sized by fit
        # item_id code -> item index (-1: code 0, padding / unseen in train), from item_features
        codes = self.item_id_codes()
        code_to_item = torch.full((schema.field("item_id").vocab_size,), -1, dtype=torch.long)
        seen = codes > 0
        code_to_item[codes[seen]] = torch.arange(n_items)[seen]
        self.register_buffer("code_to_item", code_to_item, persistent=False)

    def fit(self, split: SplitResult) -> None:
        rows = target_rows(split, self.params.input)  # every train rating, or the positives
        n_users, n_items = self.schema.num_users, self.schema.num_items
        keys = np.unique(
            split.train_users[rows].astype(np.int64) * n_items + split.train_items[rows]
        )
        users, items = keys // n_items, keys % n_items
        x = sp.csr_matrix(
            (np.ones(len(keys)), (users, items)), shape=(n_users, n_items), dtype=np.float64
        )
        self.weights.copy_(torch.from_numpy(ease_weights(x, self.params.l2)).float())
        device = self.weights.device
        self.user_indptr.copy_(torch.from_numpy(x.indptr.astype(np.int64)))
        self.user_items = torch.from_numpy(x.indices.astype(np.int64)).to(device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # user_items has as many entries as the fitted train set: take the stored size
        stored = state_dict.get(prefix + "user_items")
        if stored is not None:
            self.user_items = torch.empty_like(stored, device=self.user_items.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def inputs(self, users: Tensor, history: Tensor | None = None) -> Tensor:
        """(N, num_items) binary float32: row n = user n's train items and history items."""
        n = len(users)
        device = self.weights.device
        x = torch.zeros(n, self.schema.num_items, device=device)
        starts = self.user_indptr[users]
        counts = self.user_indptr[users + 1] - starts
        row = torch.repeat_interleave(torch.arange(n, device=device), counts)
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        offset = torch.arange(len(row), device=device) - first
        x[row, self.user_items[starts[row] + offset]] = 1.0
        history = self.history_of(history)  # its items; context columns are not items
        if history is not None and history.numel():
            idx = self.code_to_item[history.long()]
            r, c = torch.nonzero(idx >= 0, as_tuple=True)
            x[r, idx[r, c]] = 1.0
        return x

    def forward(self, users: Tensor, items: Tensor, history: Tensor | None = None) -> Tensor:
        block = max(1, self.score_chunk // max(self.schema.num_items, 1))
        parts = []
        for s in range(0, len(users), block):
            h = None if history is None else history[s : s + block]
            x = self.inputs(users[s : s + block], h)
            parts.append((x * self.weights.t()[items[s : s + block]]).sum(1))
        if not parts:
            return torch.zeros(0, device=self.weights.device)
        return torch.cat(parts)

    @torch.no_grad()
    def score_matrix(
        self, users: Tensor, items: Tensor, history: Tensor | None = None, chunk: int | None = None
    ) -> Tensor:
        """x @ B over the whole catalogue, then the asked items' columns."""
        return (self.inputs(users, history) @ self.weights)[:, items]
