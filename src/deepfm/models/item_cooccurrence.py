"""ItemCooccurrence: item-to-item co-occurrence counts over the users' train sequences,
scored against the history field. No training.

Fit. A user's sequence is their train rows that `SplitResult.sequence_mask()` keeps (the
positives, or every rating: `split.sequence`), in the protocol's (timestamp, tie-break)
order. Every pair (a -> b) with b at most `window` positions after a in the same sequence
adds 1 to C[a, b], and with `direction: both` also to C[b, a]. C is indexed by item_id
code (V x V, V the item_id vocabulary; code 0, padding and every item unseen in train, has
an all-zero row and column). `normalise: row` divides each row by its sum, so C[a] is a
distribution over what comes near a.

Score. score(u, i) = sum over the first `recent` history positions p (0 = most recent; 0 =
all) of w(p) * C[history[p], code(i)], w(p) = 1 / (p + 1) ** recency_power, plus
`popularity_weight` * pop(i) / max pop, pop(i) = the number of sequence rows of item i. The
popularity term is a tie-breaker (1e-6 by default, below every co-occurrence term in
practice): it ranks items that co-occur with nothing in the history, and is the whole score
for a user with an empty history or when there is no history field (`history` None).
Items unseen in train score 0.

C is a dense float32 buffer (in the checkpoint): V^2 * 4 bytes, 11 MB for MovieLens-100K,
55 MB for 1M.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from deepfm.config import ItemCooccurrenceConfig
from deepfm.data.schema import Schema
from deepfm.data.splitting import SplitResult
from deepfm.models.base import RankingModel
from deepfm.models.layers.cooccurrence import cooccurrence_pairs


class ItemCooccurrence(RankingModel):
    trainable = False

    def __init__(self, schema: Schema, features: dict, params: ItemCooccurrenceConfig):
        super().__init__(schema, features)
        self.params = params
        self.vocab = schema.field("item_id").vocab_size
        self.register_buffer("cooc", torch.zeros(self.vocab, self.vocab))
        self.register_buffer("item_prior", torch.zeros(schema.num_items))

    def fit(self, split: SplitResult) -> None:
        p = self.params
        mask = split.sequence_mask()
        users, items = split.train_users[mask], split.train_items[mask]
        codes = self.item_id_codes().cpu().numpy()[items]
        a, b = cooccurrence_pairs(users, codes, p.window, p.direction)
        v = self.vocab
        keys, inverse = np.unique(a * v + b, return_inverse=True)
        sums = np.bincount(inverse, minlength=len(keys)).astype(np.float64)
        if p.normalise == "row":
            row_sums = np.bincount(keys // v, weights=sums, minlength=v)
            sums = sums / row_sums[keys // v]
        cooc = torch.zeros(v * v, dtype=torch.float32)
        cooc[torch.from_numpy(keys)] = torch.from_numpy(sums).float()
        self.cooc.copy_(cooc.view(v, v))
        counts = np.bincount(items, minlength=self.schema.num_items).astype(np.float64)
        prior = p.popularity_weight * counts / max(counts.max(initial=0.0), 1.0)
        self.item_prior.copy_(torch.from_numpy(prior).float())

    def _weights(self, history: Tensor | None) -> Tensor | None:
        """1 / (p + 1) ** recency_power over the first `recent` (0: all) history positions p
        (context columns are not items)."""
        if history is None or self.history_length == 0:
            return None
        p = self.params
        n = self.history_length if p.recent == 0 else min(self.history_length, p.recent)
        weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** p.recency_power
        return torch.from_numpy(weights).float().to(self.cooc.device)

    def forward(self, users: Tensor, items: Tensor, history: Tensor | None = None) -> Tensor:
        codes = self.item_id_codes()[items]
        out = torch.zeros(len(items), device=self.cooc.device)
        weights = self._weights(history)
        if weights is not None:
            history = history.long()
            for pos in range(len(weights)):  # the same float operations as score_matrix
                out = out + weights[pos] * self.cooc[history[:, pos], codes]
        return out + self.item_prior[items]

    @torch.no_grad()
    def score_matrix(
        self, users: Tensor, items: Tensor, history: Tensor | None = None, chunk: int | None = None
    ) -> Tensor:
        """sum_p w(p) C[history[:, p]] -> (U, V), then the items' code columns."""
        acc = torch.zeros(len(users), self.vocab, device=self.cooc.device)
        weights = self._weights(history)
        if weights is not None:
            history = history.long()
            for pos in range(len(weights)):
                acc = acc + weights[pos] * self.cooc[history[:, pos]]
        return acc[:, self.item_id_codes()[items]] + self.item_prior[items][None, :]
