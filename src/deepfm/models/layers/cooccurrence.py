"""CooccurrenceScore: the item co-occurrence baseline's score as one input of a trained model.

The logit of a candidate c gains a * log(s + EPS), s the co-occurrence score of c against
the history: s = sum_p w_p * N[h_p, c] / R[h_p] over the history items h_0 (most recent),
h_1, ..., w_p = 1 / (p + 1), N[a, b] the number of times b is at most `window` positions from
a (either side) in a user's train sequence and R[a] = sum_b N[a, b]. That is the
item_cooccurrence baseline at its chosen settings (direction both, row-normalised, every
history position, recency power 1).

Two ways to use it (`learned`):
- learned: the term is part of the training logit, and a is learned from `weight` on. This is
  a counting feature: the network learns how far to trust it.
- not learned (a score-level blend): a = `weight` is fixed, chosen on validation, and the term
  is added to the scores outside training only. Training fits the rest of the model alone;
  validation and test rank by model + a * log(s + EPS). On ML-100K's validation split this
  ranks better than the learned term: trained with the term, the network learns to offset it
  where pointwise BCE against random negatives finds it overconfident, which is where it
  ranks well (docs/tuning-log.md, round 11). It is a late-fusion hybrid of the model and the
  co-occurrence baseline, and is reported as one: it lifts SASRec's scores as much
  (benchmarks/cooccurrence_weight.py), which is why it is off by default.

Leave own user out. A training example's target is in its user's train sequence, so its user's
own pairs (h_p, target) are in N: with them the feature would show the label (a positive always
co-occurs with its own history). Every score of user u therefore uses N - N_u and R - R_u, the
counts of the other users only, in training and evaluation alike: u's held-out items were never
in N_u, so their scores are what a training example's were, and the held-out items' scores are
the baseline's up to the normaliser (R - R_u instead of R).

State: the users' own pair counts (sorted keys (u * V + a) * V + b and their counts) are the
checkpoint's part; N and R, their sums over users, are rebuilt from it. N is dense V x V
(11 MB for ML-100K), so it is refused above MAX_CELLS.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MAX_CELLS = 50_000_000
EPS = 1e-3  # s = 0 (no co-occurrence with the history) scores log(EPS), about -6.9


def cooccurrence_user_pairs(
    users: np.ndarray,
    codes: np.ndarray,
    window: int,
    direction: str = "both",
    distance_weight: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user, a, b, weight) of every counted pair of rows at most `window` apart in the same
    user's sequence. Rows must be one user's sequence after another, each in time order."""
    parts: list[tuple[np.ndarray, ...]] = []
    for d in range(1, min(window, len(users) - 1) + 1):
        same = users[:-d] == users[d:]
        if not same.any():
            break  # no sequence is longer than d
        u, a, b = users[:-d][same], codes[:-d][same], codes[d:][same]
        w = np.full(len(a), 1.0 / d if distance_weight else 1.0)
        parts.append((u, a, b, w))
        if direction == "both":
            parts.append((u, b, a, w))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0)
    u, a, b, w = (np.concatenate(col) for col in zip(*parts, strict=True))
    keep = (a > 0) & (b > 0)  # code 0 (unknown) is never counted
    return u[keep].astype(np.int64), a[keep].astype(np.int64), b[keep].astype(np.int64), w[keep]


def _find(keys: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(position, found) of each query in the sorted `keys`."""
    if len(keys) == 0:
        return torch.zeros_like(query), torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(keys, query).clamp_(max=len(keys) - 1)
    return pos, keys[pos] == query


def _lookup(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """values[keys == query] for each query, 0 where the key is absent (keys sorted)."""
    pos, found = _find(keys, query)
    if len(keys) == 0:
        return torch.zeros(query.shape, dtype=values.dtype, device=query.device)
    return torch.where(found, values[pos], torch.zeros((), dtype=values.dtype))


class CooccurrenceScore(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        positions: int,
        window: int,
        weight: float = 0.0,
        learned: bool = True,
    ):
        super().__init__()
        if vocab_size * vocab_size > MAX_CELLS:
            raise ValueError(
                f"cooccurrence_window needs a {vocab_size:,} x {vocab_size:,} table of item pair "
                f"counts (more than {MAX_CELLS:,} cells): set cooccurrence_window to 0 for a "
                "catalogue this large."
            )
        self.vocab_size, self.window = vocab_size, window
        # the users' own pair counts: the fitted state, saved with the model
        self.register_buffer("pair_keys", torch.zeros(0, dtype=torch.long))
        self.register_buffer("pair_counts", torch.zeros(0))
        # derived from the above (_rebuild), not saved
        self.register_buffer("counts", torch.zeros(vocab_size, vocab_size), persistent=False)
        self.register_buffer("row_sums", torch.zeros(vocab_size), persistent=False)
        self.register_buffer("row_keys", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("own_row_sums", torch.zeros(0), persistent=False)
        recency = 1.0 / torch.arange(1, positions + 1, dtype=torch.float64)
        self.register_buffer("recency", recency.float(), persistent=False)
        self.learned = learned
        if learned:  # part of the training logit, from `weight` on
            self.weight = nn.Parameter(torch.tensor(float(weight)))
        else:  # fixed, and added to the scores outside training only (a score-level blend)
            self.register_buffer("weight", torch.tensor(float(weight)))

    def fit(self, users: np.ndarray, codes: np.ndarray) -> None:
        """Count the pairs of the users' train sequences (rows: user by user, in time order)."""
        u, a, b, w = cooccurrence_user_pairs(users, codes, self.window, "both")
        v = self.vocab_size
        keys, inverse = np.unique((u * v + a) * v + b, return_inverse=True)
        counts = np.bincount(inverse, weights=w, minlength=len(keys))
        device = self.pair_keys.device
        self.pair_keys = torch.from_numpy(keys).to(device)
        self.pair_counts = torch.from_numpy(counts).float().to(device)
        self._rebuild()

    def _rebuild(self) -> None:
        v = self.vocab_size
        cells = self.pair_keys % (v * v)  # a * V + b
        counts = torch.zeros(v * v, device=cells.device).index_add_(0, cells, self.pair_counts)
        self.counts = counts.view(v, v)
        self.row_sums = self.counts.sum(dim=1)
        # one key per (user, a): the user's own row sums
        self.row_keys, inverse = torch.unique_consecutive(self.pair_keys // v, return_inverse=True)
        own = torch.zeros(len(self.row_keys), device=cells.device)
        self.own_row_sums = own.index_add_(0, inverse, self.pair_counts)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the pair tables' length is the data's: take the saved shape, then derive the rest
        for name in ("pair_keys", "pair_counts"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=self.counts.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._rebuild()

    def _coefficients(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """(N, n): w_p / (R - R_u)[h_p], 0 on padding and on items no other user has."""
        rows = users.long()[:, None] * self.vocab_size + history
        others = self.row_sums[history] - _lookup(self.row_keys, self.own_row_sums, rows)
        filled = (history > 0) & (others > 0)
        return torch.where(filled, self.recency / others.clamp(min=1e-12), 0.0)

    def score(self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor):
        """(N,) users, (N, L) history codes (most recent first, 0 = padding), (N,) candidate
        codes -> (N,) s, the other users' co-occurrence score."""
        v = self.vocab_size
        users, history = users.long(), history[:, : len(self.recency)].long()
        cand = candidates.long()[:, None]
        pairs = self.counts[history, cand]
        # only a candidate in the user's own sequence has own pairs (each pair is counted both
        # ways, so it has a row): one search per example, then the pairs of those examples
        # only (in training, the positives: a sampled negative is never one of the user's)
        own = _find(self.row_keys, users * v + candidates.long())[1].nonzero().squeeze(1)
        own_keys = (users[own, None] * v + history[own]) * v + cand[own]
        pairs[own] -= _lookup(self.pair_keys, self.pair_counts, own_keys)
        return (self._coefficients(users, history) * pairs).sum(dim=1)

    def score_matrix(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """(U,) users, (U, L) history codes -> (U, V) s for every item_id code."""
        v = self.vocab_size
        history = history[:, : len(self.recency)].long()
        coef = self._coefficients(users, history)  # (U, n)
        out = torch.einsum("un,unv->uv", coef, self.counts[history])
        # minus each user's own pairs (h_p, b): the keys from (u, h_p, 0) to (u, h_p + 1, 0)
        start = (users.long()[:, None] * v + history) * v
        lo = torch.searchsorted(self.pair_keys, start.flatten())
        hi = torch.searchsorted(self.pair_keys, (start + v).flatten())
        n = hi - lo
        at = torch.repeat_interleave(torch.arange(len(n), device=n.device), n)
        entry = lo[at] + torch.arange(len(at), device=n.device) - (torch.cumsum(n, 0) - n)[at]
        row = at // history.shape[1]
        own = coef.flatten()[at] * self.pair_counts[entry]
        out.index_put_((row, self.pair_keys[entry] % v), -own, accumulate=True)
        return out

    def forward(self, users, history, candidates) -> torch.Tensor:
        """(N,) the logit term a * log(s + EPS); 0 in training when a is not learned."""
        if self.training and not self.learned:
            return torch.zeros(len(users), device=self.weight.device)
        s = self.score(users, history, candidates)
        return self.weight * torch.log(s.clamp(min=0.0) + EPS)

    def matrix(self, users, history, candidates) -> torch.Tensor:
        """(U, I): forward for every (user, candidate code) pair."""
        s = self.score_matrix(users, history)[:, candidates.long()]
        return self.weight * torch.log(s.clamp(min=0.0) + EPS)
