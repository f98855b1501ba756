"""Score held-out users and compute every metric of the protocol from one score matrix.

Each evaluation user is scored against the whole catalogue once (in blocks of users); the
sampled metrics read the candidate columns of that matrix and the full-ranking metrics
rank the held-out item against every item not excluded for that user. Which metrics, and
their keys' order, come from the registry (deepfm.evaluation.metrics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepfm.data.batches import history_tensor
from deepfm.data.sampling import RatedIndex
from deepfm.data.splitting import HeldOut, release_mapped_pages, seen_before_test
from deepfm.evaluation import metrics as M
from deepfm.models.base import RankingModel
from deepfm.utils import rng_for


@dataclass
class EvalResult:
    metrics: dict[str, float]
    users: np.ndarray
    items: np.ndarray
    sampled_rank: np.ndarray
    full_rank: np.ndarray
    num_candidates: np.ndarray


def evaluate_held_out(
    model: RankingModel,
    held: HeldOut,
    train_rated: RatedIndex,
    *,
    ks: list[int],
    batch_users: int = 256,
    also_exclude: RatedIndex | None = None,
    device="cpu",
) -> EvalResult:
    """Metrics for one held-out split. also_exclude: more (user, item) pairs to drop from the
    full ranking beyond train_rated (for the test item: what the user rated before it)."""
    # a context, not a decorator: mutation tools skip decorated functions (docs/testing.md)
    with torch.inference_mode():
        was_training = model.training
        model.eval()
        num_items = train_rated.num_items
        all_items = torch.arange(num_items, device=device)
        n = len(held.users)
        sampled_rank = np.empty(n, dtype=np.int64)
        full_rank = np.empty(n, dtype=np.int64)
        n_cand = np.empty(n, dtype=np.int64)
        # the pooled metrics' pairs (the positive, then its valid candidates, user by user):
        # one float32 a pair, the only state that grows with the number of users
        pairs = M.PooledPairs(n * (held.candidates.shape[1] + 1), np.float32)
        for start in range(0, n, batch_users):
            sl = slice(start, start + batch_users)
            users = held.users[sl].astype(np.int64)
            pos = held.items[sl].astype(np.int64)
            u = len(users)
            history = history_tensor(held.history[sl], device)
            scores = model.score_matrix(torch.from_numpy(users).to(device), all_items, history)
            scores = scores.float().cpu()
            rows = torch.arange(u)
            pos_t = torch.from_numpy(pos)
            pos_scores = scores[rows, pos_t]

            cand = torch.from_numpy(held.candidates[sl].astype(np.int64))
            release_mapped_pages(held.candidates)  # read once: off this process's RSS
            valid = cand >= 0
            cand_scores = scores.gather(1, cand.clamp(min=0))
            sampled_rank[sl] = M.pessimistic_rank(pos_scores, cand_scores, valid).numpy()
            n_cand[sl] = valid.sum(1).numpy() + 1
            in_pairs = torch.cat([torch.ones(u, 1, dtype=torch.bool), valid], 1)
            lab = torch.zeros(u, cand.shape[1] + 1, dtype=torch.int8)
            lab[:, 0] = 1
            pairs.add(
                lab[in_pairs].numpy(),
                torch.cat([pos_scores[:, None], cand_scores], 1)[in_pairs].numpy(),
            )

            # full ranking: everything except the user's train items (and `also_exclude`)
            keep = torch.ones(u, num_items, dtype=torch.bool)
            for rated in (train_rated, also_exclude):
                if rated is not None:
                    r_rows, r_cols = rated.pairs_of(users)
                    keep[torch.from_numpy(r_rows), torch.from_numpy(r_cols)] = False
            keep[rows, pos_t] = False  # the positive does not compete with itself
            full_rank[sl] = M.pessimistic_rank(pos_scores, scores, keep).numpy()

        out: dict[str, float] = M.compute(
            ks, ranks={M.SAMPLED: sampled_rank, M.FULL: full_rank}, pairs={M.SAMPLED: pairs}
        )
        out["users"] = n
        model.train(was_training)
    return EvalResult(out, held.users, held.items, sampled_rank, full_rank, n_cand)


def user_sample(n_users: int, sample_users: int, seed: int) -> np.ndarray | None:
    """Positions of `sample_users` of the n_users evaluation users (eval.sample_users), drawn
    from `seed`, in user order; None for every user (0, or at least n_users)."""
    if not sample_users or sample_users >= n_users:
        return None
    return np.sort(rng_for(seed, "eval-users").choice(n_users, sample_users, replace=False))


def evaluate_split(
    model: RankingModel,
    split,
    train_rated: RatedIndex,
    *,
    ks: list[int],
    batch_users: int = 256,
    device: torch.device | str = "cpu",
    which: tuple[str, ...] = ("val", "test"),
    sample: np.ndarray | None = None,
) -> dict[str, EvalResult]:
    """The protocol's evaluation of a SplitResult: the validation item ranked against every
    item the user had not rated before it (train_rated: the train rows), the test item against
    every item not rated before it (also the validation item and the ratings between, known by
    then). Both held-out sets list the same eligible users in user order.
    sample: positions of the users to evaluate (user_sample), or None for all."""
    if not np.array_equal(split.val.users, split.test.users):
        raise ValueError("validation and test users differ; rerun the split stage.")
    held = {name: getattr(split, name) for name in ("val", "test")}
    if sample is not None:
        held = {name: h.take(sample) for name, h in held.items()}
    seen = seen_before_test(split)
    num_users = len(train_rated.indptr) - 1
    rated_before = RatedIndex(seen[:, 0], seen[:, 1], num_users, train_rated.num_items)
    exclude = {"val": None, "test": rated_before}
    options = dict(ks=ks, batch_users=batch_users, device=device)
    return {
        name: evaluate_held_out(
            model, held[name], train_rated, also_exclude=exclude[name], **options
        )
        for name in which
    }
