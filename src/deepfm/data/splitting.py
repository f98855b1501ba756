"""The evaluation protocol's split (docs/protocol.md), vectorized: a causal (or `cut: none`)
leave-one-out on positives by (timestamp, tie-break), the fixed evaluation candidates, the
encoders fitted on the train split only, each example's history and context codes, and for
serving only (`deepfm recommend` / `score`) each user's latest history, the ratings after
their test item and the context fields' vocabularies.

Users and items are addressed by their row in the canonical users / items tables
("index"); the feature matrices map an index to the embedding codes of its fields.
"""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.random import Generator

from deepfm.data.declaration import FieldSpec
from deepfm.data.fields import encode_context, encode_fields
from deepfm.data.rowsplit import CTRSplit, read_ctr_split, split_ctr, write_ctr_split
from deepfm.data.sampling import concat_ranges, in_sorted
from deepfm.data.schema import Field, Schema
from deepfm.io import atomic_dir, read_json, read_npy, write_json, write_npy
from deepfm.utils import rng_for

SEQUENCES = ("positives", "rated")
TIE_BREAKS = ("item_id", "random")
CUTS = ("causal", "none")

# Drawing candidates: users per block of the rejection draw (block * num_negatives draws),
# and of the dense draw (block * num_items keys), to bound memory.
_CANDIDATE_BLOCK_DRAWS = 1 << 22
_CANDIDATE_BLOCK_CELLS = 1 << 24
# Rows per block when computing the train rows' history (a few int64 temporaries per row).
_HISTORY_BLOCK_ROWS = 1 << 20


@dataclass
class HeldOut:
    users: np.ndarray  # (n,) user index
    items: np.ndarray  # (n,) held-out positive item index
    candidates: np.ndarray  # (n, num_negatives) item index, -1 where the user has fewer
    # (n, history_length + n_context) int32: item_id codes of the preceding items (0-padded),
    # then the codes of the held-out interaction's context fields
    history: np.ndarray

    def take(self, rows: np.ndarray) -> HeldOut:
        """The held-out rows `rows` (positions), e.g. a sample of evaluation users."""
        return HeldOut(*(a[rows] for a in (self.users, self.items, self.candidates, self.history)))


@dataclass
class SplitResult:
    train_users: np.ndarray
    train_items: np.ndarray
    train_labels: np.ndarray
    train_history: np.ndarray  # (n_train, history_length + n_context): as HeldOut.history
    val: HeldOut
    test: HeldOut
    # the model's lookup tables, by buffer name: "user_features" / "item_features" (one code
    # column per sparse field), "<side>_<name>" (one 0-padded code matrix per sequence field)
    # and "user_dense" / "item_dense" (one scaled float column per dense field, when declared)
    features: dict[str, np.ndarray]
    user_ids: np.ndarray  # (num_users,) raw dataset id of each user index
    item_ids: np.ndarray  # (num_items,) raw dataset id of each item index
    schema: Schema
    summary: dict
    # Serving only, never read by training or evaluation: (num_users, history_length +
    # n_context), each user's example as of the end of their data (_latest); None in a split
    # written before it existed
    latest: np.ndarray | None = None
    # the context fields' vocabularies (fields.context_vocabularies); {} without such fields
    vocabs: dict = dataclasses.field(default_factory=dict)
    # (n, 2) int32 (user, item): the validation item, then the ratings between it and the
    # test item; None in a split written before it existed (seen_before_test)
    test_seen: np.ndarray | None = None
    # Serving only: (n, 2) int32 (user, item), the ratings after each user's test item
    # (`cut: causal`), which no model sees; empty under `cut: none` (they are train rows)
    after_test: np.ndarray | None = None

    @property
    def user_features(self) -> np.ndarray:
        return self.features["user_features"]

    @property
    def item_features(self) -> np.ndarray:
        return self.features["item_features"]

    def sequence_mask(self) -> np.ndarray:
        """Which train rows make up the users' sequences (the history field's items):
        positives only, or every rating (split.sequence)."""
        if self.summary.get("sequence") == "rated":  # absent in splits written before it
            return np.ones(len(self.train_labels), dtype=bool)
        return self.train_labels == 1


def seen_before_test(split) -> np.ndarray:
    """(n, 2) int32 (user, item): what each test user rated before the test item beyond the
    train rows, which the test item's full ranking leaves out: the split's test_seen, or the
    validation items for a split written before it existed (or any object with val / test)."""
    seen = getattr(split, "test_seen", None)
    if seen is not None:
        return seen
    return np.stack([split.val.users, split.val.items], axis=1).astype(np.int32)


def leave_one_out(
    user_idx: np.ndarray, label: np.ndarray, min_positives: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the validation and test positives.

    Rows must already be ordered by (user, timestamp, item_id); both outputs are ordered by user.
    """
    pos_rows = np.flatnonzero(label == 1)
    pos_users = user_idx[pos_rows]
    # last positive of each user's run, and how many positives the user has
    is_last = np.r_[pos_users[1:] != pos_users[:-1], True]
    last = np.flatnonzero(is_last)
    counts = np.diff(np.r_[-1, last])
    eligible = counts >= min_positives
    test_rows = pos_rows[last[eligible]]
    val_rows = pos_rows[last[eligible] - 1]
    return val_rows, test_rows


@dataclass
class ProtocolRows:
    """Each row's role in the protocol, rows ordered by (user, timestamp, tie-break)."""

    val: np.ndarray  # row of each eligible user's validation item, by user
    test: np.ndarray  # row of each eligible user's test item, by user
    in_train: np.ndarray  # (n_rows,) bool: a train row
    between: np.ndarray  # rows strictly between a user's validation and test items (causal)
    after: np.ndarray  # rows after a user's test item (causal)

    def known_before(self, name: str) -> np.ndarray:
        """(n_rows,) bool: the rows a live system knows when the user's `name` ("val" or
        "test") item comes, that item included (what its candidates are drawn around)."""
        known = self.in_train.copy()
        known[self.val] = True
        if name == "test":
            known[self.between] = True
            known[self.test] = True
        return known


def protocol_rows(
    user_idx: np.ndarray, label: np.ndarray, min_positives: int, cut: str = "causal"
) -> ProtocolRows:
    """The leave-one-out rows and what trains: `cut` "causal", each eligible user's rows
    strictly before their validation item (and every row of the users who are not evaluated),
    or "none", every row but the held-out ones. Rows ordered as in leave_one_out."""
    val_rows, test_rows = leave_one_out(user_idx, label, min_positives)
    in_train = np.ones(len(user_idx), dtype=bool)
    in_train[val_rows] = False
    in_train[test_rows] = False
    between = after = np.empty(0, dtype=np.int64)
    if cut == "causal":
        # a user's rows are contiguous: after the test row come the rest of that user's rows
        user_end = np.searchsorted(user_idx, user_idx[test_rows], side="right")
        between = concat_ranges(val_rows + 1, test_rows - val_rows - 1)
        after = concat_ranges(test_rows + 1, user_end - test_rows - 1)
        in_train[between] = False
        in_train[after] = False
    return ProtocolRows(val_rows, test_rows, in_train, between, after)


def tie_break_keys(seed: int, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """A seeded pseudo-random uint64 per (user, item) pair (splitmix64's finaliser): the
    random order of a user's same-second ratings. A row's key depends on that row alone, so
    adding or removing other ratings never reorders the ones that stay."""
    salt = np.uint64(rng_for(seed, "tie-break").integers(0, 2**63))
    with np.errstate(over="ignore"):
        x = (user_idx.astype(np.uint64) << np.uint64(32)) ^ item_idx.astype(np.uint64) ^ salt
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def recent_items(
    user_idx: np.ndarray, item_codes: np.ndarray, counted: np.ndarray, length: int, rows=None
) -> np.ndarray:
    """(n_rows, length): for every row (or only `rows`), the codes of the same user's `length`
    most recent counted rows strictly before it, most recent first, 0-padded.

    Rows must be ordered by (user, timestamp, tie-break), the order that defines the split,
    so a row never sees an item that the protocol places after it.
    """
    rows = np.arange(len(user_idx)) if rows is None else rows
    return _recent(user_idx, item_codes, np.flatnonzero(counted), length, rows)


def _recent(user_idx, item_codes, counted_rows, length, rows) -> np.ndarray:
    """recent_items, given the positions of the counted rows (np.flatnonzero(counted)): a
    caller that goes through the rows in blocks computes them once."""
    before = np.searchsorted(counted_rows, rows)  # counted rows above each row
    return _counted_back(user_idx, item_codes, counted_rows, before, user_idx[rows], length)


def _counted_back(user_idx, item_codes, counted_rows, before, owners, length) -> np.ndarray:
    """(len(before), length): the codes of the `length` counted rows before position `before`
    of counted_rows, most recent first, 0 where that row is not of the user in `owners`."""
    out = np.zeros((len(before), length), dtype=np.int32)
    for back in range(1, length + 1):
        source = counted_rows[np.maximum(before - back, 0)] if len(counted_rows) else before
        same_user = (before - back >= 0) & (user_idx[source] == owners)
        out[:, back - 1] = np.where(same_user, item_codes[source], 0)
    return out


def latest_items(
    user_idx: np.ndarray, item_codes: np.ndarray, counted: np.ndarray, length: int, num_users: int
) -> np.ndarray:
    """(num_users, length): for every user, the codes of their `length` most recent counted
    rows of all, most recent first, 0-padded: what `recent_items` gives a row placed after
    the user's last one. Rows must be ordered by (user, timestamp, tie-break)."""
    counted_rows = np.flatnonzero(counted)
    users = np.arange(num_users)
    # counted rows up to each user's last one: one past its position in counted_rows
    end = np.searchsorted(user_idx[counted_rows], users, side="right")
    return _counted_back(user_idx, item_codes, counted_rows, end, users, length)


def sample_candidates(
    users: np.ndarray, rated_keys: np.ndarray, num_items: int, num_negatives: int, rng: Generator
) -> np.ndarray:
    """For each user, `num_negatives` distinct items not in its rated set, uniformly at random.

    `rated_keys` is the sorted array user * num_items + item of every rated pair. Returns a
    (len(users), num_negatives) int32 matrix of item indices, sorted per row, padded with -1
    where a user has fewer unrated items than asked for.

    Cost O(ratings + users x num_negatives), never users x items: most users are drawn by
    rejection (_draw_sparse); a user who rated more than half of the catalogue, or has fewer
    than twice as many unrated items as asked for, by one random key per item (_draw_dense):
    num_items keys, which is then less than twice its ratings plus 2 x num_negatives (and
    draws ML-100K's candidates exactly as before this split had a rejection path, 1,682 items
    being fewer than 2 x 999). Users go in blocks (bounded memory), all from one generator:
    the same seed, the same candidates.
    """
    blocks = list(candidate_blocks(users, rated_keys, num_items, num_negatives, rng))
    return np.concatenate(blocks) if blocks else np.full((0, num_negatives), -1, np.int32)


def candidate_blocks(
    users: np.ndarray, rated_keys: np.ndarray, num_items: int, num_negatives: int, rng: Generator
) -> Iterator[np.ndarray]:
    """sample_candidates, one block of consecutive users at a time, in order."""
    users = np.asarray(users, dtype=np.int64)
    take = min(num_negatives, num_items)
    lo = np.searchsorted(rated_keys, users * num_items)
    hi = np.searchsorted(rated_keys, (users + 1) * num_items)
    unrated = num_items - (hi - lo)
    dense = (unrated < 2 * take) | (2 * unrated < num_items)
    step = max(1, _CANDIDATE_BLOCK_DRAWS // max(take, 1))  # users per block
    dense_step = max(1, _CANDIDATE_BLOCK_CELLS // max(num_items, 1))
    for start in range(0, len(users), step):
        out = np.full((min(step, len(users) - start), num_negatives), -1, dtype=np.int32)
        if take:
            block = np.arange(start, start + len(out))
            rows = np.flatnonzero(dense[block])
            for s in range(0, len(rows), dense_step):
                r = rows[s : s + dense_step]
                b = block[r]
                out[r, :take] = _draw_dense(lo[b], hi[b], rated_keys, num_items, take, rng)
            rows = np.flatnonzero(~dense[block])
            if len(rows):
                b = block[rows]
                out[rows, :take] = _draw_sparse(lo[b], hi[b], rated_keys, num_items, take, rng)
        yield out


def _draw_dense(lo, hi, rated_keys, num_items, take, rng) -> np.ndarray:
    """(len(lo), take): one uniform key per (user, item) cell, rated items keyed last; the
    `take` smallest keys are a uniform take-subset of the unrated items. Users whose rated
    keys are rated_keys[lo:hi]; -1 padding where fewer are unrated."""
    keys = rng.random((len(lo), num_items))
    rows = np.repeat(np.arange(len(lo)), hi - lo)
    keys[rows, rated_keys[concat_ranges(lo, hi - lo)] % num_items] = np.inf
    chosen = (
        np.argpartition(keys, take - 1, axis=1)[:, :take]
        if take < num_items
        else np.argsort(keys, axis=1)[:, :take]
    )
    valid = np.take_along_axis(keys, chosen, axis=1) < np.inf
    chosen = np.where(valid, chosen, num_items)  # push padding to the end when sorting
    chosen.sort(axis=1)
    chosen[chosen == num_items] = -1
    return chosen


def _draw_sparse(lo, hi, rated_keys, num_items, take, rng) -> np.ndarray:
    """(len(lo), take): a uniform take-subset of each user's unrated items by rejection, for
    users with at least 2 * take unrated items and at least half of the catalogue unrated.

    Each round draws, for every row still short of `take`, exactly as many uniform items as
    it lacks, and keeps those not rated, not kept before and not drawn twice in the round.
    Exact: every step treats a user's unrated items alike (it only asks whether an item is
    rated or already kept), so the law of the kept set is invariant under any permutation of
    them, and the only such law on take-subsets is the uniform one. A draw is kept with
    probability at least 1/4 (at most half the catalogue is rated, at most take <= unrated / 2
    items are kept), so the rounds are few. Pairs are keyed row * num_items + item in sorted
    arrays, so each membership test is one searchsorted.
    """
    n = len(lo)
    counts = hi - lo
    # the rows' rated pairs as sorted row keys (rated_keys is sorted by user, then item)
    rated = np.repeat(np.arange(n, dtype=np.int64) * num_items, counts) + (
        rated_keys[concat_ranges(lo, counts)] % num_items
    )
    kept = np.empty(0, dtype=np.int64)
    need = np.full(n, take, dtype=np.int64)
    active = np.arange(n, dtype=np.int64)
    while len(active):
        short = need[active]
        draw = np.repeat(active * num_items, short) + rng.integers(0, num_items, int(short.sum()))
        draw.sort()  # (np.unique is several times slower: it hashes first)
        draw = draw[np.r_[True, draw[1:] != draw[:-1]]]  # an item drawn twice counts once
        draw = draw[~in_sorted(rated, draw) & ~in_sorted(kept, draw)]
        kept = np.insert(kept, np.searchsorted(kept, draw), draw)  # stays sorted
        need -= np.bincount(draw // num_items, minlength=n)
        active = active[need[active] > 0]
    # exactly `take` keys per row, sorted by row then item
    return (kept % num_items).astype(np.int32).reshape(n, take)


def split_dataset(
    interactions: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    *,
    fields: Sequence[FieldSpec],
    seed: int,
    min_positives: int,
    num_negatives: int,
    history_length: int = 0,
    sequence: str = "positives",
    tie_break: str = "item_id",
    cut: str = "causal",
    folder: Path | None = None,
) -> SplitResult:
    """The split of the canonical tables; sequence, tie_break and cut as in config.SplitConfig.
    folder: where write_split will write (split_processed's out_dir): the largest arrays go
    straight to their files there, block by block, and the result maps them (read-only)."""
    _check_choices(sequence, tie_break, cut)
    user_idx, item_idx, label, order = _ordered(interactions, users, items, seed, tie_break, cut)
    rows = protocol_rows(user_idx, label, min_positives, cut)
    ratings = _Ratings(user_idx, item_idx, label, rows)
    # Encoders see the train split only: a user or item that occurs only in val/test is unknown.
    train_u, train_i = user_idx[rows.in_train], item_idx[rows.in_train]
    encoded, context_codes = _encode(fields, interactions, users, items, order, rows.in_train,
                                     train_u, train_i)  # fmt: skip
    del order
    big = _BigArrays(folder)
    histories = _histories(big, ratings, encoded, context_codes, history_length, sequence,
                           len(users))  # fmt: skip
    del context_codes
    n_unrated = _draw_candidates(big, ratings, cut, len(items), num_negatives, seed)
    held = _held_out(ratings, big, histories.examples)
    summary = _summary(users, len(items), ratings, train_i, held, n_unrated, num_negatives,
                       histories, history_length, sequence, tie_break, cut)  # fmt: skip
    if encoded.scalers:  # how each dense field was filled and scaled (fitted on train only)
        summary["dense_scalers"] = encoded.scalers
    seen = np.sort(np.r_[rows.val, rows.between])  # by user, then protocol order
    return SplitResult(
        train_users=train_u,
        train_items=train_i,
        train_labels=label[rows.in_train],
        train_history=big.get("train_history"),
        val=held["val"],
        test=held["test"],
        features=encoded.features,
        user_ids=_id_array(users["user_id"]),
        item_ids=_id_array(items["item_id"]),
        schema=_schema(encoded, history_length, len(users), len(items)),
        summary=summary,
        latest=histories.latest,
        vocabs=encoded.vocabs,
        test_seen=ratings.pairs(seen),
        after_test=ratings.pairs(rows.after),
    )


def _check_choices(sequence: str, tie_break: str, cut: str) -> None:
    if sequence not in SEQUENCES or tie_break not in TIE_BREAKS or cut not in CUTS:
        raise ValueError(
            f"sequence must be one of {SEQUENCES} (got {sequence!r}), tie_break one of "
            f"{TIE_BREAKS} (got {tie_break!r}) and cut one of {CUTS} (got {cut!r})."
        )


@dataclass
class _Ratings:
    """The interactions as the protocol reads them: rows in its order (_ordered), each row's
    user and item index and label, and each row's role."""

    user_idx: np.ndarray  # (n_rows,) int32
    item_idx: np.ndarray  # (n_rows,) int32
    label: np.ndarray  # (n_rows,) int8
    rows: ProtocolRows

    def pairs(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), 2) int32: the (user, item) of each of `rows`."""
        return np.stack([self.user_idx[rows], self.item_idx[rows]], axis=1).astype(np.int32)


def _ordered(interactions, users, items, seed: int, tie_break: str, cut: str):
    """(user_idx, item_idx, label, order): the interactions' rows in the protocol's order,
    (user, timestamp, tie-break), and `order`, their positions in the table."""
    # int32 indices and codes throughout: at ML-32M size every int64 copy of a per-rating
    # column costs 256 MB
    user_idx = _index_of(users["user_id"], interactions["user_id"])
    item_idx = _index_of(items["item_id"], interactions["item_id"])
    if tie_break == "item_id":  # the items table is sorted by item_id: the same order
        ties = item_idx
    elif cut == "none":  # the older draw, kept so that `cut: none` numbers reproduce: a
        # permutation of the whole table, which every added row reshuffles
        ties = rng_for(seed, "tie-break").permutation(len(interactions))
    else:
        ties = tie_break_keys(seed, user_idx, item_idx)
    order = np.lexsort((ties, interactions["timestamp"].to_numpy(), user_idx))
    label = interactions["label"].to_numpy()[order].astype(np.int8)
    return user_idx[order], item_idx[order], label, order


@dataclass
class _Encoded:
    """The declared fields, encoded (_encode)."""

    flat: list[Field]  # the users' and items' sparse and dense fields
    bags: dict[str, list[Field]]  # their sequence fields, by side
    features: dict[str, np.ndarray]  # SplitResult.features
    scalers: dict  # the dense fields' fitted scalers
    context_fields: list[Field]
    vocabs: dict  # the context fields' vocabularies (SplitResult.vocabs)

    @property
    def item_id(self) -> Field:
        return next(f for f in self.flat if f.name == "item_id")


def _encode(
    fields, interactions, users, items, order, in_train, train_u, train_i
) -> tuple[_Encoded, np.ndarray]:
    """The fields encoded on the train rows (train_u / train_i) only, and apart the context
    codes of every row ((n_rows, n_context) int32, protocol order), which the caller frees
    once the examples hold them."""
    flat, bags, features, scalers = encode_fields(
        fields,
        {"user": users, "item": items},
        {"user": np.unique(train_u), "item": np.unique(train_i)},
    )
    context_fields, context_codes, vocabs = encode_context(fields, interactions, order, in_train)
    return _Encoded(flat, bags, features, scalers, context_fields, vocabs), context_codes


@dataclass
class _Histories:
    """What changes from one example to the next travels with the example: its history
    codes, then its context codes (one (n, history_length + n_context) int32 matrix per
    split; the train rows' is in _BigArrays' "train_history")."""

    examples: dict[str, np.ndarray]  # "val" and "test"
    train_filled: int  # how many of the train rows' history slots are filled (the summary)
    latest: np.ndarray  # serving only: SplitResult.latest


def _histories(big, ratings, encoded, context_codes, length, sequence, num_users) -> _Histories:
    """Each example's history holds the counted rows strictly before it: for a train example or
    the validation item, train rows only; for the test item also the validation item and
    the ratings between them, all known by then. No example ever sees a later rating."""
    user_idx, rows = ratings.user_idx, ratings.rows
    item_id = encoded.item_id
    item_codes = encoded.features["item_features"][:, item_id.column].astype(np.int32)
    item_codes = item_codes[ratings.item_idx]
    label = ratings.label
    rule = np.ones(len(label), dtype=bool) if sequence == "rated" else label == 1
    counted = np.flatnonzero(rows.in_train & rule)
    before_test = (rows.in_train | rows.known_before("test")) & rule
    before_test[rows.val] = True
    examples = {
        "val": _examples(user_idx, item_codes, counted, length, context_codes, rows.val),
        "test": _examples(
            user_idx, item_codes, np.flatnonzero(before_test), length, context_codes, rows.test
        ),
    }
    del before_test
    filled = _train_examples(big, user_idx, item_codes, counted, length, context_codes,
                             rows.in_train)  # fmt: skip
    latest = _latest(user_idx, item_codes, rule, length, context_codes, num_users)
    return _Histories(examples, filled, latest)


def _held_out(ratings: _Ratings, big, examples: dict[str, np.ndarray]) -> dict[str, HeldOut]:
    """The validation and test items, their candidates (in `big`) and their examples."""
    return {
        name: HeldOut(
            ratings.user_idx[r], ratings.item_idx[r], big.get(f"{name}_candidates"), examples[name]
        )
        for name, r in (("val", ratings.rows.val), ("test", ratings.rows.test))
    }


def _schema(encoded: _Encoded, history_length: int, num_users: int, num_items: int) -> Schema:
    """The split's fields, in schema order: user sparse, user dense, the context fields, the
    history, other user bags, then the item's."""
    flat, bags = encoded.flat, encoded.bags
    history_field = (
        [Field("history", "user", "sequence", encoded.item_id.vocab_size, 0, history_length)]
        if history_length
        else []
    )
    user_bags = [
        dataclasses.replace(f, column=i) for i, f in enumerate([*history_field, *bags["user"]])
    ]
    schema_fields = [
        *[f for f in flat if f.source == "user"],
        *encoded.context_fields,
        *user_bags,
        *[f for f in flat if f.source == "item"],
        *bags["item"],
    ]
    return Schema(tuple(schema_fields), num_users, num_items)


def _summary(
    users,
    num_items,
    ratings,
    train_i,
    held,
    n_unrated,
    num_negatives,
    histories,
    history_length,
    sequence,
    tie_break,
    cut,
) -> dict:
    """The split's summary.json: sizes, what the cut left out, short candidate lists, how full
    the histories are."""
    num_users, rows, label = len(users), ratings.rows, ratings.label
    in_train, filled, examples = rows.in_train, histories.train_filled, histories.examples
    train_rows = int(in_train.sum())
    slots = {"train": (filled, train_rows)}  # (filled history slots, rows) per split
    for s in ("val", "test"):
        slots[s] = (int((examples[s][:, :history_length] > 0).sum()), len(examples[s]))
    return {
        "num_users": num_users,
        "num_items": num_items,
        "num_interactions": len(ratings.user_idx),
        "cut": cut,
        "train_rows": train_rows,
        "train_positives": int(label[in_train].sum()),
        "train_observed_negatives": int((label[in_train] == 0).sum()),
        "rows_between_validation_and_test": len(rows.between),
        "rows_after_test": len(rows.after),
        "val_users": len(rows.val),
        "test_users": len(rows.test),
        "train_only_users": int(num_users - len(rows.test)),
        "users_with_fewer_candidates": {
            name: {
                str(users["user_id"].iloc[u]): int(n)
                for u, n in zip(h.users, n_unrated[name], strict=True)
                if n < num_negatives
            }
            for name, h in held.items()
        },
        "items_unseen_in_train": int(num_items - len(np.unique(train_i))),
        "history_length": history_length,
        "sequence": sequence,
        "tie_break": tie_break,
        "mean_history_filled": {s: round(n / m, 3) if m else 0.0 for s, (n, m) in slots.items()},
    }


def _train_examples(big, user_idx, item_codes, counted, length, context_codes, in_train) -> int:
    """The train rows' examples, one block of rows at a time, into their final place (a file,
    given a folder): the whole matrix (n_train x width) is the split's largest array. Returns
    how many history slots are filled (the summary)."""
    big.create("train_history", (int(in_train.sum()), length + context_codes.shape[1]), np.int32)
    filled, done = 0, 0
    for start in range(0, len(user_idx), _HISTORY_BLOCK_ROWS):
        rows = start + np.flatnonzero(in_train[start : start + _HISTORY_BLOCK_ROWS])
        block = _examples(user_idx, item_codes, counted, length, context_codes, rows)
        big.put("train_history", done, block)
        filled += int((block[:, :length] > 0).sum())
        done += len(rows)
    return filled


def _latest(user_idx, item_codes, rule, length, context_codes, num_users) -> np.ndarray:
    """Serving only: each user's history as of the end of their data (every row counted by
    the sequence rule, held-out and later ones too: they are known by then), then the context
    codes of their last interaction."""
    last_row = np.searchsorted(user_idx, np.arange(num_users), side="right") - 1
    has_rows = (last_row >= 0) & (user_idx[np.maximum(last_row, 0)] == np.arange(num_users))
    return np.concatenate(
        [
            latest_items(user_idx, item_codes, rule, length, num_users),
            np.where(has_rows[:, None], context_codes[np.maximum(last_row, 0)], 0),
        ],
        axis=1,
    ).astype(np.int32)


def _draw_candidates(big, ratings, cut, num_items, num_negatives, seed):
    """Each held-out item's sampled candidates into big's "<name>_candidates": items the user
    had not rated by then (under `cut: causal`, known_before(name): the rows a live system
    knows then, the item itself included; under `cut: none`, every row). Returns, per split,
    each user's number of such items (the summary)."""
    user_idx, item_idx, rows = ratings.user_idx, ratings.item_idx, ratings.rows
    n_unrated = {}
    for name, held_rows, stream in (("val", rows.val, 1), ("test", rows.test, 2)):
        mask = rows.known_before(name) if cut == "causal" else np.ones(len(user_idx), dtype=bool)
        rated_keys = np.unique(user_idx[mask].astype(np.int64) * num_items + item_idx[mask])
        users = user_idx[held_rows]
        n_unrated[name] = (
            num_items
            - np.bincount(rated_keys // num_items, minlength=int(users.max(initial=-1)) + 1)[users]
        )
        big.create(f"{name}_candidates", (len(held_rows), num_negatives), np.int32)
        done = 0
        for block in candidate_blocks(
            users, rated_keys, num_items, num_negatives, rng_for(seed, "candidates", stream)
        ):
            big.put(f"{name}_candidates", done, block)
            done += len(block)
    return n_unrated


def _index_of(table_ids: pd.Series, ids: pd.Series) -> np.ndarray:
    """int32 row of each id in a table sorted by id (every id is there: preprocess checks)."""
    return np.searchsorted(table_ids.to_numpy(), ids.to_numpy()).astype(np.int32)


def _examples(user_idx, item_codes, counted_rows, length, context_codes, rows) -> np.ndarray:
    """(len(rows), length + n_context) int32: the history codes of each of `rows`
    (recent_items of np.flatnonzero(counted) = counted_rows), then its context codes."""
    out = np.empty((len(rows), length + context_codes.shape[1]), dtype=np.int32)
    out[:, :length] = _recent(user_idx, item_codes, counted_rows, length, rows)
    out[:, length:] = context_codes[rows]
    return out


class _BigArrays:
    """Where the split puts its largest arrays (the train history, the candidates), filled
    block by block: in memory, or, given a folder, straight into their .npy files there, each
    block written through a map that is closed at once, so that no array ever sits in this
    process's memory whole (the files are np.save's bytes: write_split leaves them be)."""

    def __init__(self, folder: Path | None):
        self.folder = None if folder is None else Path(folder)
        self.arrays: dict[str, np.ndarray] = {}

    def create(self, name: str, shape: tuple, dtype) -> None:
        if self.folder is None:
            self.arrays[name] = np.empty(shape, dtype=dtype)
        else:
            np.lib.format.open_memmap(self.folder / f"{name}.npy", "w+", dtype, shape).flush()

    def put(self, name: str, start: int, block: np.ndarray) -> None:
        if not len(block):
            return
        if self.folder is None:
            self.arrays[name][start : start + len(block)] = block
            return
        target = np.load(self.folder / f"{name}.npy", mmap_mode="r+")
        target[start : start + len(block)] = block
        target.flush()
        del target  # unmap: the written pages leave this process

    def get(self, name: str) -> np.ndarray:
        if self.folder is None:
            return self.arrays[name]
        return np.load(self.folder / f"{name}.npy", mmap_mode="r")


def _id_array(ids: pd.Series) -> np.ndarray:
    """Raw ids as int64, or as fixed-width text when they are not integers (np.save keeps
    both without pickling)."""
    if pd.api.types.is_integer_dtype(ids):
        return ids.to_numpy().astype(np.int64)
    return ids.astype(str).to_numpy(dtype=str)


def split_processed(
    cfg, processed_dir: Path, out_dir: Path | None = None
) -> SplitResult | CTRSplit:
    """The split stage's result for a Config, from the canonical tables in processed_dir;
    given out_dir, also written there (write_split) as it is made: the top-K protocol's
    largest arrays never sit in memory whole."""
    if out_dir is not None and cfg.dataset_spec.protocol != "ctr":
        with atomic_dir(out_dir) as tmp:
            _write_files(_split_tables(cfg, processed_dir, tmp), tmp)
        return read_split(out_dir)
    result = _split_tables(cfg, processed_dir, None)
    if out_dir is not None:
        write_split(result, out_dir)
    return result


def _split_tables(cfg, processed_dir: Path, folder: Path | None) -> SplitResult | CTRSplit:
    tables = {
        n: pd.read_parquet(Path(processed_dir) / f"{n}.parquet")
        for n in ("interactions", "users", "items")
    }
    spec = cfg.dataset_spec
    if spec.protocol == "ctr":
        return split_ctr(
            tables["interactions"],
            spec.fields,
            seed=cfg.seed,
            method=spec.ctr_split,
            fractions=spec.ctr_fractions,
            group=spec.ctr_group,
        )
    s = cfg.split
    return split_dataset(
        tables["interactions"],
        tables["users"],
        tables["items"],
        fields=spec.fields,
        seed=cfg.seed,
        min_positives=s.min_positives,
        num_negatives=cfg.eval.num_negatives,
        history_length=s.history_length,
        sequence=s.sequence,
        tie_break=s.tie_break,
        cut=s.cut,
        folder=folder,
    )


_ARRAYS = ("train_users", "train_items", "train_labels", "train_history", "user_ids", "item_ids")
# read memory-mapped, read-only: the largest arrays (GBs at ML-32M size), of which training
# and evaluation gather rows
_MAPPED = ("train_history", "val_candidates", "test_candidates")


def release_mapped_pages(array: np.ndarray) -> None:
    """Drop the pages of a read-only memory-mapped array (one of _MAPPED) that this process has
    read from its resident set; a later read maps them again from the page cache. A pass over
    a mapped array, block by block (the evaluation over the candidates: 4 KB a user), would
    otherwise keep every page it read resident, and the RSS would grow with the array. Does
    nothing for an array in memory (e.g. a sample's rows)."""
    if array.flags.writeable:  # a writable or copy-on-write map: dropping would lose writes
        return
    base = array
    while isinstance(base, np.ndarray):  # np.memmap's base is its mmap.mmap
        base = base.base
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def _read(split_dir: Path, name: str) -> np.ndarray:
    if name in _MAPPED:
        return np.load(split_dir / f"{name}.npy", mmap_mode="r", allow_pickle=False)
    return read_npy(split_dir / f"{name}.npy")


def feature_names(schema: Schema) -> list[str]:
    """The buffer names of a schema's feature arrays (see SplitResult.features)."""
    names = ["user_features", "item_features"]
    for side in ("user", "item"):
        names += [f"{side}_{f.name}" for f in schema.by_source(side, "sequence")]
        if schema.by_source(side, "dense"):
            names.append(f"{side}_dense")
    return [n for n in names if n != "user_history"]  # the history travels with each example


def write_split(result: SplitResult | CTRSplit, out_dir: Path) -> None:
    """All split outputs into `out_dir`, replaced as a whole (never half-written)."""
    if isinstance(result, CTRSplit):
        write_ctr_split(result, out_dir)
        return
    with atomic_dir(out_dir) as tmp:
        _write_files(result, tmp)


def _write_files(result: SplitResult, folder: Path) -> None:
    """Every file of a top-K split into `folder`, but those already there: the ones that
    split_dataset wrote itself (its `folder`)."""

    def put(name: str, array: np.ndarray, dtype=None) -> None:
        if not (folder / f"{name}.npy").exists():
            write_npy(folder / f"{name}.npy", array if dtype is None else array.astype(dtype))

    for name in _ARRAYS:
        put(name, getattr(result, name))
    for name in feature_names(result.schema):
        put(name, result.features[name])
    for split_name in ("val", "test"):
        held: HeldOut = getattr(result, split_name)
        put(f"{split_name}_users", held.users, np.int32)
        put(f"{split_name}_items", held.items, np.int32)
        put(f"{split_name}_candidates", held.candidates, np.int32)
        put(f"{split_name}_history", held.history)
    if result.latest is not None:
        put("user_latest", result.latest)
    for name in ("test_seen", "after_test"):
        if getattr(result, name) is not None:
            put(name, getattr(result, name))
    if result.vocabs:
        write_json(folder / "context_vocab.json", result.vocabs)
    write_json(folder / "schema.json", result.schema.to_dict())
    write_json(folder / "summary.json", result.summary)


def read_split(split_dir: Path) -> SplitResult | CTRSplit:
    split_dir = Path(split_dir)
    if not (split_dir / "schema.json").is_file():
        raise FileNotFoundError(
            f"{split_dir}/schema.json not found: run the split stage first (dvc repro split)."
        )
    schema = Schema.from_dict(read_json(split_dir / "schema.json"))
    summary = read_json(split_dir / "summary.json")
    if summary.get("protocol") == "ctr":
        return read_ctr_split(split_dir, schema, summary)
    arrays = {name: _read(split_dir, name) for name in _ARRAYS}
    features = {name: read_npy(split_dir / f"{name}.npy") for name in feature_names(schema)}
    parts = ("users", "items", "candidates", "history")  # HeldOut's fields; candidates mapped
    held = {s: HeldOut(*(_read(split_dir, f"{s}_{p}") for p in parts)) for s in ("val", "test")}
    optional = {
        name: read_npy(split_dir / f"{name}.npy")
        for name in ("user_latest", "test_seen", "after_test")
        if (split_dir / f"{name}.npy").is_file()
    }
    vocabs = split_dir / "context_vocab.json"
    return SplitResult(
        **arrays,
        val=held["val"],
        test=held["test"],
        features=features,
        schema=schema,
        summary=summary,
        latest=optional.get("user_latest"),
        vocabs=read_json(vocabs) if vocabs.is_file() else {},
        test_seen=optional.get("test_seen"),
        after_test=optional.get("after_test"),
    )
