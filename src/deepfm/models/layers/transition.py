"""ItemTransition: a learned weight for every (earlier item, candidate item) pair.

The logit of a candidate c gains sum_p w_p * T[h_p, c] over the n most recent history items
h_0 (most recent), ..., h_{n-1}: a first-order Markov chain over items with a full-rank,
learned transition table T (the "MC" model that FPMC factorises; Rendle et al., WWW 2010)
and a learned weight w_p per history position. The recent-item fields give the DeepFM family
the factorised transition (an FM dot product of rank embed_dim); this is the memorising one,
a crossed feature (history item x candidate) with a weight of its own, as in Wide & Deep's
cross-product features. It is what the item co-occurrence baseline counts, learned instead.

`symmetric` ties T[a, b] to T[b, a] (one weight per unordered pair), as the co-occurrence
baseline's `direction: both` counts a pair in both directions: each weight then sees the
examples of both orders.

T has one weight per pair of item_id codes, vocabulary**2 of them (2.8M for ML-100K), so it
is refused above MAX_CELLS. It starts at zero (the model without it) and the position weights
at one.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfm.models.layers.embedding import lookup_rows

MAX_CELLS = 50_000_000  # 200 MB of float32 weights, and as much again per Adam moment


class ItemTransition(nn.Module):
    def __init__(self, vocab_size: int, positions: int, symmetric: bool = False):
        super().__init__()
        if vocab_size * vocab_size > MAX_CELLS:
            raise ValueError(
                f"transition_items needs a {vocab_size:,} x {vocab_size:,} table of item pairs "
                f"({vocab_size * vocab_size:,} weights, more than {MAX_CELLS:,}): set "
                "transition_items to 0 for a catalogue this large (recent_items gives the "
                "factorised transition)."
            )
        self.vocab_size, self.symmetric = vocab_size, symmetric
        # one row per (earlier, later) cell: an embedding table of width 1, so that
        # train.sparse_embeddings can give it a row-sparse gradient (LazyAdam) as any table
        # zeros given, not drawn: the global generator is left as it was, so every other
        # weight of the model starts as it does without the table
        self.cells = nn.Embedding(vocab_size * vocab_size, 1, _weight=torch.zeros(vocab_size**2, 1))
        self.position = nn.Parameter(torch.ones(positions))
        self.sparse_gradients = False  # set by training.optim.use_sparse_gradients

    @property
    def weight(self) -> torch.Tensor:
        """(V, V): the table, T[earlier, later]."""
        return self.cells.weight.view(self.vocab_size, self.vocab_size)

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """(N, L) history codes (most recent first, 0 = padding), (N,) candidate codes -> (N,)."""
        earlier = history[:, : len(self.position)].long()
        later = candidates.long()[:, None].expand_as(earlier)
        if self.symmetric:
            earlier, later = torch.minimum(earlier, later), torch.maximum(earlier, later)
        index = earlier * self.vocab_size + later
        if self.sparse_gradients:
            cells = nn.functional.embedding(index, self.cells.weight, sparse=True)
        else:
            cells = lookup_rows(self.cells.weight, index)
        return (cells.squeeze(-1) * self._position_weights(history)).sum(dim=1)

    def matrix(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """(U, L) history codes, (I,) candidate codes -> (U, I): forward for every pair."""
        table = self.weight
        if self.symmetric:  # the upper triangle holds each unordered pair's weight
            table = torch.triu(table) + torch.triu(table, diagonal=1).T
        rows = table[history[:, : len(self.position)].long()]  # (U, n, V)
        return torch.einsum("un,unv->uv", self._position_weights(history), rows)[:, candidates]

    def _position_weights(self, history: torch.Tensor) -> torch.Tensor:
        """(N, n): w_p where history position p holds an item, 0 on padding."""
        filled = history[:, : len(self.position)] > 0
        return filled * self.position
