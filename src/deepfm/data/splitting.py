"""The evaluation protocol's split (docs/protocol.md), vectorized.

- leave-one-out on positives by (timestamp, tie-break: item_id or seeded random): last ->
  test, second-to-last -> val, for users with at least `min_positives` positives; everything
  else is train;
- fixed evaluation candidates: for every val / test user, `num_negatives` items the user
  never rated in any split, uniformly without replacement (fewer when fewer exist);
- encoders fitted on the train split only (0 = padding / unknown);
- the history field: for every example, the user's `history_length` most recent train
  positives (or train ratings: `sequence`) strictly before it in the protocol's order; the
  test item's history also has the validation item (it came first), no other example ever
  sees a held-out item;
- context fields (columns of each interaction) travel with the example, after its history.

Users and items are addressed by their row in the canonical users / items tables
("index"); the feature matrices map an index to the embedding codes of its fields.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepfm.data.declaration import FieldSpec
from deepfm.data.encoders import encode, encode_lists, fit_vocab
from deepfm.data.sampling import concat_ranges
from deepfm.data.schema import Field, Schema
from deepfm.io import atomic_dir, read_json, read_npy, write_json, write_npy
from deepfm.utils import rng_for

SEQUENCES = ("positives", "rated")
TIE_BREAKS = ("item_id", "random")

# Users scored per block when drawing candidates: bounds memory at block * num_items floats.
_CANDIDATE_BLOCK_CELLS = 1 << 24


@dataclass
class HeldOut:
    users: np.ndarray  # (n,) user index
    items: np.ndarray  # (n,) held-out positive item index
    candidates: np.ndarray  # (n, num_negatives) item index, -1 where the user has fewer
    # (n, history_length + n_context) int32: item_id codes of the preceding items (0-padded),
    # then the codes of the held-out interaction's context fields
    history: np.ndarray


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


def recent_items(
    user_idx: np.ndarray,
    item_codes: np.ndarray,
    counted: np.ndarray,
    length: int,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """(n_rows, length): for every row (or only `rows`), the codes of the same user's `length`
    most recent counted rows strictly before it, most recent first, 0-padded.

    Rows must be ordered by (user, timestamp, tie-break), the order that defines the split,
    so a row never sees an item that the protocol places after it.
    """
    rows = np.arange(len(user_idx)) if rows is None else rows
    counted_rows = np.flatnonzero(counted)
    before = np.searchsorted(counted_rows, rows)  # counted rows above each row
    out = np.zeros((len(rows), length), dtype=np.int32)
    for back in range(1, length + 1):
        source = counted_rows[np.maximum(before - back, 0)] if len(counted_rows) else before
        same_user = (before - back >= 0) & (user_idx[source] == user_idx[rows])
        out[:, back - 1] = np.where(same_user, item_codes[source], 0)
    return out


def sample_candidates(
    users: np.ndarray,
    rated_keys: np.ndarray,
    num_items: int,
    num_negatives: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """For each user, `num_negatives` distinct items not in its rated set, uniformly at random.

    `rated_keys` is the sorted array user * num_items + item of every rated pair. Returns a
    (len(users), num_negatives) matrix of item indices, sorted per row, padded with -1 where a
    user has fewer unrated items than asked for.
    """
    out = np.full((len(users), num_negatives), -1, dtype=np.int64)
    block = max(1, _CANDIDATE_BLOCK_CELLS // max(num_items, 1))
    take = min(num_negatives, num_items)
    for start in range(0, len(users), block):
        u = users[start : start + block]
        keys = rng.random((len(u), num_items))
        lo = np.searchsorted(rated_keys, u.astype(np.int64) * num_items)
        hi = np.searchsorted(rated_keys, (u.astype(np.int64) + 1) * num_items)
        rows = np.repeat(np.arange(len(u)), hi - lo)
        cols = rated_keys[concat_ranges(lo, hi - lo)] % num_items
        keys[rows, cols] = np.inf  # rated items sort last
        # k smallest of i.i.d. uniform keys = a uniform k-subset of the unrated items
        chosen = (
            np.argpartition(keys, take - 1, axis=1)[:, :take]
            if take < num_items
            else (np.argsort(keys, axis=1))[:, :take]
        )
        valid = np.take_along_axis(keys, chosen, axis=1) < np.inf
        chosen = np.where(valid, chosen, num_items)  # push padding to the end when sorting
        chosen.sort(axis=1)
        chosen[chosen == num_items] = -1
        out[start : start + len(u), :take] = chosen
    return out


def _fit_scaler(values: np.ndarray, f: FieldSpec) -> dict:
    """A dense field's fill value and scaling, from the train split's users / items only."""
    seen = values[~np.isnan(values)]
    mean = float(seen.mean()) if len(seen) else 0.0
    fill = mean if f.missing == "mean" else float(f.missing)
    if f.scaler == "standard":
        shift, scale = mean, float(seen.std()) if len(seen) else 1.0
    elif f.scaler == "minmax":
        shift = float(seen.min()) if len(seen) else 0.0
        scale = float(seen.max()) - shift if len(seen) else 1.0
    else:
        shift, scale = 0.0, 1.0
    return {"fill": fill, "shift": shift, "scale": scale if scale > 0 else 1.0}


def encode_fields(
    fields: Sequence[FieldSpec], tables: dict[str, pd.DataFrame], seen: dict[str, np.ndarray]
) -> tuple[list[Field], dict[str, list[Field]], dict[str, np.ndarray], dict]:
    """Encode every declared field of the users and items tables, fitted on the rows in
    `seen` (the users / items of the train split) only.

    Returns (sparse and dense fields, sequence fields by side, the feature arrays by buffer
    name, the dense fields' fitted scalers). Sparse and sequence values seen on fewer than
    `min_count` train users / items get code 0, like values never seen.
    """
    flat: list[Field] = []
    bags: dict[str, list[Field]] = {"user": [], "item": []}
    arrays: dict[str, np.ndarray] = {}
    scalers: dict[str, dict] = {}
    for side in ("user", "item"):
        table = tables[side]
        train_rows = table.iloc[seen[side]]
        sparse = [f for f in fields if f.source == side and f.kind == "sparse"]
        codes = []
        for column, f in enumerate(sparse):
            if f.bins or f.log_buckets:  # a number, bucketed
                values = _bucketed(table[f.name], f)
                train_values = values.iloc[seen[side]]
            else:
                values, train_values = table[f.name], train_rows[f.name]
            vocab = fit_vocab(_frequent(train_values, f.min_count))
            codes.append(encode(values, vocab))
            flat.append(Field(f.name, side, "sparse", len(vocab) + 1, column))
        arrays[f"{side}_features"] = (
            np.stack(codes, axis=1) if codes else np.zeros((len(table), 0), dtype=np.int64)
        )
        dense = [f for f in fields if f.source == side and f.kind == "dense"]
        if dense:
            columns = []
            for column, f in enumerate(dense):
                values = pd.to_numeric(table[f.name], errors="coerce").to_numpy(np.float64)
                scaler = _fit_scaler(values[seen[side]], f)
                values = np.where(np.isnan(values), scaler["fill"], values)
                columns.append((values - scaler["shift"]) / scaler["scale"])
                scalers[f.name] = {"scaler": f.scaler, **scaler}
                flat.append(Field(f.name, side, "dense", 0, column))
            arrays[f"{side}_dense"] = np.stack(columns, axis=1).astype(np.float32)
        sequence = [f for f in fields if f.source == side and f.kind == "sequence"]
        for column, f in enumerate(sequence):
            lists = [_as_list(v) for v in table[f.name]]
            if f.max_length:
                lists = [v[: f.max_length] for v in lists]
            train_flat = [v for i in seen[side] for v in lists[i]]
            vocab = fit_vocab(_frequent(pd.Series(train_flat, dtype=object), f.min_count))
            arrays[f"{side}_{f.name}"] = encode_lists(lists, vocab)
            bags[side].append(Field(f.name, side, "sequence", len(vocab) + 1, column))
    return flat, bags, arrays, scalers


def encode_context(
    fields: Sequence[FieldSpec], interactions: pd.DataFrame, order: np.ndarray, in_train
) -> tuple[list[Field], np.ndarray]:
    """The context fields (columns of each interaction): codes per row in the split's order,
    (n_rows, n_context) int32, with vocabularies fitted on the train rows only."""
    context = [f for f in fields if f.source == "context"]
    codes = np.zeros((len(order), len(context)), dtype=np.int32)
    out = []
    for column, f in enumerate(context):
        values = interactions[f.name].iloc[order].reset_index(drop=True)
        values = _bucketed(values, f)
        vocab = fit_vocab(_frequent(values[in_train], f.min_count))
        codes[:, column] = encode(values, vocab)
        out.append(Field(f.name, "context", "sparse", len(vocab) + 1, column))
    return out, codes


def _as_list(value) -> list:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return list(value)


def _frequent(values: pd.Series, min_count: int) -> pd.Series:
    """The values that occur at least `min_count` times (all of them for 1)."""
    if min_count <= 1:
        return values
    counts = values.value_counts()
    return pd.Series(counts.index[counts.to_numpy() >= min_count], dtype=object)


def _bucketed(values: pd.Series, f: FieldSpec) -> pd.Series:
    if f.bins:
        return bucket_values(values, f.bins)
    if f.log_buckets:
        return log_bucket_values(values)
    return values


def log_bucket_values(values: pd.Series) -> pd.Series:
    """Counts -> buckets: x > 2 -> floor(ln(x) ** 2), else x itself (negative counts too), as
    the Criteo competition's winners and the BARS benchmark bucket Criteo's integer features;
    missing stays missing."""
    x = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        bucket = np.where(x > 2, np.floor(np.log(np.where(x > 2, x, 1.0)) ** 2), np.floor(x))
    known = ~np.isnan(x)
    out = np.full(len(x), None, dtype=object)
    out[known] = bucket[known].astype(np.int64).astype(str)  # small integers: "5", "-1"
    return pd.Series(out, dtype=object)


def bucket_values(values: pd.Series, edges: tuple[float, ...]) -> pd.Series:
    """Numbers -> the label of their interval of `edges` ('<e0', '[e0,e1)', ..., '>=en');
    missing stays missing."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    labels = [f"<{edges[0]:g}"]
    labels += [f"[{a:g},{b:g})" for a, b in itertools.pairwise(edges)]
    labels += [f">={edges[-1]:g}"]
    which = np.searchsorted(np.asarray(edges), numbers, side="right")
    out = pd.Series(np.asarray(labels, dtype=object)[which], dtype=object)
    return out.where(~np.isnan(numbers), None)


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
) -> SplitResult:
    """sequence: which earlier rows make up a user's history, "positives" (train positives)
    or "rated" (every train rating, observed negatives too). tie_break: the order of one
    user's ratings with the same timestamp, "item_id" (ascending) or "random" (seeded)."""
    if sequence not in SEQUENCES or tie_break not in TIE_BREAKS:
        raise ValueError(
            f"sequence must be one of {SEQUENCES} (got {sequence!r}) and tie_break one of "
            f"{TIE_BREAKS} (got {tie_break!r})."
        )
    num_users, num_items = len(users), len(items)
    user_idx = np.searchsorted(users["user_id"].to_numpy(), interactions["user_id"].to_numpy())
    item_idx = np.searchsorted(items["item_id"].to_numpy(), interactions["item_id"].to_numpy())
    if tie_break == "item_id":  # the items table is sorted by item_id: the same order
        ties = item_idx
    else:  # a seeded random key per row: a random order within equal timestamps
        ties = rng_for(seed, "tie-break").permutation(len(interactions))
    order = np.lexsort((ties, interactions["timestamp"].to_numpy(), user_idx))
    user_idx, item_idx = user_idx[order], item_idx[order]
    label = interactions["label"].to_numpy()[order].astype(np.int8)

    val_rows, test_rows = leave_one_out(user_idx, label, min_positives)
    in_train = np.ones(len(user_idx), dtype=bool)
    in_train[val_rows] = False
    in_train[test_rows] = False

    # Encoders see the train split only: a user or item that occurs only in val/test is unknown.
    train_u, train_i = user_idx[in_train], item_idx[in_train]
    flat, bags, features, scalers = encode_fields(
        fields,
        {"user": users, "item": items},
        {"user": np.unique(train_u), "item": np.unique(train_i)},
    )
    context_fields, context_codes = encode_context(fields, interactions, order, in_train)
    # History is made of train rows only (positives, or every rating: `sequence`), so no
    # train example (e.g. an observed negative dated after the held-out items) and no
    # validation user sees a held-out item. The test item's history alone may also hold the
    # validation item, which precedes it and is known by then.
    item_id = next(f for f in flat if f.name == "item_id")
    item_codes = features["item_features"][:, item_id.column][item_idx]
    counted = in_train if sequence == "rated" else in_train & (label == 1)
    history = recent_items(user_idx, item_codes, counted, history_length)
    if history_length:
        with_val = counted.copy()
        with_val[val_rows] = True
        history[test_rows] = recent_items(
            user_idx, item_codes, with_val, history_length, rows=test_rows
        )
    # what changes from one example to the next travels with the example: its history codes,
    # then its context codes (one (n, history_length + n_context) matrix)
    example = np.concatenate([history, context_codes], axis=1)
    # schema order: user sparse, user dense, the history, other user bags, then the item's
    history_field = (
        [Field("history", "user", "sequence", item_id.vocab_size, 0, history_length)]
        if history_length
        else []
    )
    user_bags = [
        dataclasses.replace(f, column=i) for i, f in enumerate([*history_field, *bags["user"]])
    ]
    schema_fields = [
        *[f for f in flat if f.source == "user"],
        *context_fields,
        *user_bags,
        *[f for f in flat if f.source == "item"],
        *bags["item"],
    ]

    rated_keys = np.sort(user_idx.astype(np.int64) * num_items + item_idx)
    held = {}
    for name, rows, stream in (("val", val_rows, 1), ("test", test_rows, 2)):
        cand = sample_candidates(
            user_idx[rows],
            rated_keys,
            num_items,
            num_negatives,
            rng_for(seed, "candidates", stream),
        )
        held[name] = HeldOut(user_idx[rows], item_idx[rows], cand, example[rows])

    n_unrated = num_items - np.bincount(user_idx, minlength=num_users)
    short = {
        name: {
            str(users["user_id"].iloc[u]): int(n_unrated[u])
            for u in h.users[n_unrated[h.users] < num_negatives]
        }
        for name, h in held.items()
    }
    summary = {
        "num_users": num_users,
        "num_items": num_items,
        "num_interactions": len(user_idx),
        "train_rows": int(in_train.sum()),
        "train_positives": int(label[in_train].sum()),
        "train_observed_negatives": int((label[in_train] == 0).sum()),
        "val_users": len(val_rows),
        "test_users": len(test_rows),
        "train_only_users": int(num_users - len(test_rows)),
        "users_with_fewer_candidates": short,
        "items_unseen_in_train": int(num_items - len(np.unique(train_i))),
        "history_length": history_length,
        "sequence": sequence,
        "tie_break": tie_break,
        "mean_history_filled": {
            name: round(float((history[rows] > 0).sum(1).mean()), 3) if len(rows) else 0.0
            for name, rows in (
                ("train", np.flatnonzero(in_train)),
                ("val", val_rows),
                ("test", test_rows),
            )
        },
    }
    if scalers:  # how each dense field was filled and scaled (fitted on train only)
        summary["dense_scalers"] = scalers
    return SplitResult(
        train_users=train_u.astype(np.int32),
        train_items=train_i.astype(np.int32),
        train_labels=label[in_train],
        train_history=example[in_train],
        val=held["val"],
        test=held["test"],
        features=features,
        user_ids=_id_array(users["user_id"]),
        item_ids=_id_array(items["item_id"]),
        schema=Schema(tuple(schema_fields), num_users, num_items),
        summary=summary,
    )


@dataclass
class Rows:
    """Rows of the ctr protocol: each row's context codes and its given 0/1 label."""

    codes: np.ndarray  # (n, n_fields) int32
    labels: np.ndarray  # (n,) float32


@dataclass
class CTRSplit:
    """The ctr protocol's split: rows by order (or seeded random) into train / val / test,
    every field a context field encoded on the train rows only. Users and items are one
    placeholder each (index 0), so every model scores rows through the same interface."""

    train: Rows
    val: Rows
    test: Rows
    features: dict[str, np.ndarray]
    schema: Schema
    summary: dict


def split_ctr(
    interactions: pd.DataFrame,
    fields: Sequence[FieldSpec],
    *,
    seed: int,
    method: str = "order",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> CTRSplit:
    """order: the first fraction of rows by timestamp (file order within one) to train, the
    next to validation, the rest to test; random: the same sizes over a seeded permutation."""
    n = len(interactions)
    if method == "order":
        order = np.argsort(interactions["timestamp"].to_numpy(), kind="stable")
    else:
        order = rng_for(seed, "ctr-split").permutation(n)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    if n_train == 0 or n_val == 0 or n - n_train - n_val <= 0:
        raise ValueError(
            f"{n} rows cannot be split {list(fractions)} with every part non-empty; declare "
            "more rows or other fractions."
        )
    in_train = np.zeros(n, dtype=bool)
    in_train[:n_train] = True  # positions in `order`
    context, codes = encode_context(fields, interactions, order, in_train)
    labels = interactions["label"].to_numpy()[order].astype(np.float32)
    parts = {
        "train": slice(0, n_train),
        "val": slice(n_train, n_train + n_val),
        "test": slice(n_train + n_val, n),
    }
    rows = {name: Rows(codes[sl], labels[sl]) for name, sl in parts.items()}
    summary = {
        "protocol": "ctr",
        "split": method,
        "rows": {name: len(r.labels) for name, r in rows.items()},
        "positive_rate": {name: round(float(r.labels.mean()), 6) for name, r in rows.items()},
        "vocab_sizes": {f.name: f.vocab_size for f in context},
    }
    features = {
        "user_features": np.zeros((1, 0), dtype=np.int64),
        "item_features": np.zeros((1, 0), dtype=np.int64),
    }
    return CTRSplit(**rows, features=features, schema=Schema(tuple(context), 1, 1), summary=summary)


def split_ctr_stream(
    table_path: Path,
    fields: Sequence[FieldSpec],
    out_dir: Path,
    *,
    seed: int,
    method: str = "order",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    batch_rows: int = 1 << 18,
) -> dict:
    """split_ctr, streamed: the canonical parquet read in batches, twice (count the train
    rows' values, then encode), the codes written to .npy files row block by row block, so
    memory holds one batch whatever the number of rows. The files are byte for byte those of
    write_split(split_ctr(...)). Returns the summary.

    method "order" needs the rows in timestamp order already (both click-log parsers write
    them so); otherwise the whole table is split in memory."""
    import pyarrow.parquet as pq

    names = [f.name for f in fields if f.source == "context"]
    context = [f for f in fields if f.source == "context"]
    source = pq.ParquetFile(table_path)
    n = source.metadata.num_rows
    n_train, n_val = round(fractions[0] * n), round(fractions[1] * n)
    if n_train == 0 or n_val == 0 or n - n_train - n_val <= 0:
        raise ValueError(
            f"{n} rows cannot be split {list(fractions)} with every part non-empty; declare "
            "more rows or other fractions."
        )

    def batches():
        start = 0
        for batch in source.iter_batches(batch_size=batch_rows, columns=[*names, "label",
                                                                         "timestamp"]):  # fmt: skip
            frame = batch.to_pandas()
            yield start, frame
            start += len(frame)

    if method == "order":
        last = None
        for _, frame in batches():
            t = frame["timestamp"].to_numpy()
            if (last is not None and len(t) and t[0] < last) or (np.diff(t) < 0).any():
                table = pd.read_parquet(table_path)
                result = split_ctr(table, fields, seed=seed, method=method, fractions=fractions)
                write_split(result, out_dir)
                return result.summary
            last = t[-1] if len(t) else last
        position = None  # row j sits at position j
    else:
        order = rng_for(seed, "ctr-split").permutation(n)
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)

    def positions(start: int, count: int) -> np.ndarray:
        rows = np.arange(start, start + count)
        return rows if position is None else position[rows]

    # pass 1: the values of every field on the train rows
    counts: dict[str, list[pd.Series]] = {name: [] for name in names}
    for start, frame in batches():
        train = positions(start, len(frame)) < n_train
        for f in context:
            values = _bucketed(frame[f.name], f)[train]
            counts[f.name].append(values.value_counts(dropna=True))
            if len(counts[f.name]) >= 16:  # bound memory: merge what has piled up
                counts[f.name] = [pd.concat(counts[f.name]).groupby(level=0).sum()]
    vocabs = {}
    for f in context:
        total = pd.concat(counts[f.name]).groupby(level=0).sum() if counts[f.name] else None
        kept = [] if total is None else total.index[total.to_numpy() >= f.min_count]
        vocabs[f.name] = fit_vocab(pd.Series(kept, dtype=object))
    schema = Schema(
        tuple(
            Field(f.name, "context", "sparse", len(vocabs[f.name]) + 1, column)
            for column, f in enumerate(context)
        ),
        1,
        1,
    )

    # pass 2: encode and write each batch's rows at their positions
    bounds = {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, n),
    }
    with atomic_dir(out_dir) as tmp:
        for name, (lo, hi) in bounds.items():
            for kind, shape, dtype in (("codes", (hi - lo, len(context)), np.int32),
                                       ("labels", (hi - lo,), np.float32)):  # fmt: skip
                np.lib.format.open_memmap(tmp / f"{name}_{kind}.npy", "w+", dtype, shape).flush()
        for start, frame in batches():
            pos = positions(start, len(frame))
            codes = np.zeros((len(frame), len(context)), dtype=np.int32)
            for column, f in enumerate(context):
                codes[:, column] = _encode_arrow(_bucketed(frame[f.name], f), vocabs[f.name])
            labels = frame["label"].to_numpy().astype(np.float32)
            for name, (lo, hi) in bounds.items():
                mine = (pos >= lo) & (pos < hi)
                if mine.any():
                    for kind, values in (("codes", codes[mine]), ("labels", labels[mine])):
                        target = np.load(tmp / f"{name}_{kind}.npy", mmap_mode="r+")
                        target[pos[mine] - lo] = values
                        target.flush()
                        del target  # unmap: the written pages leave this process
        rows = {}
        rates = {}
        for name in bounds:
            labels = np.load(tmp / f"{name}_labels.npy", mmap_mode="r")
            rows[name] = len(labels)
            rates[name] = round(float(labels.mean()), 6)
            del labels
        summary = {
            "protocol": "ctr",
            "split": method,
            "rows": rows,
            "positive_rate": rates,
            "vocab_sizes": {f.name: f.vocab_size for f in schema.fields},
        }
        write_json(tmp / "schema.json", schema.to_dict())
        write_json(tmp / "summary.json", summary)
    return summary


def _encode_arrow(values: pd.Series, vocab: np.ndarray) -> np.ndarray:
    """encoders.encode, by Arrow's hash lookup (no Python object per value): the same codes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(vocab):
        return np.zeros(len(values), dtype=np.int64)
    try:
        index = pc.index_in(pa.array(values, from_pandas=True), value_set=pa.array(vocab))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return encode(values, vocab)  # mixed types: the general path
    return pc.fill_null(pc.add(index, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _id_array(ids: pd.Series) -> np.ndarray:
    """Raw ids as int64, or as fixed-width text when they are not integers (np.save keeps
    both without pickling)."""
    if pd.api.types.is_integer_dtype(ids):
        return ids.to_numpy().astype(np.int64)
    return ids.astype(str).to_numpy(dtype=str)


def split_processed(cfg, processed_dir: Path) -> SplitResult | CTRSplit:
    """The split stage's result for a Config, from the canonical tables in processed_dir."""
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
        )
    return split_dataset(
        tables["interactions"],
        tables["users"],
        tables["items"],
        fields=cfg.dataset_spec.fields,
        seed=cfg.seed,
        min_positives=cfg.split.min_positives,
        num_negatives=cfg.eval.num_negatives,
        history_length=cfg.split.history_length,
        sequence=cfg.split.sequence,
        tie_break=cfg.split.tie_break,
    )


_ARRAYS = ("train_users", "train_items", "train_labels", "train_history", "user_ids", "item_ids")


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
        with atomic_dir(out_dir) as tmp:
            for name in ("train", "val", "test"):
                rows: Rows = getattr(result, name)
                write_npy(tmp / f"{name}_codes.npy", rows.codes)
                write_npy(tmp / f"{name}_labels.npy", rows.labels)
            write_json(tmp / "schema.json", result.schema.to_dict())
            write_json(tmp / "summary.json", result.summary)
        return
    with atomic_dir(out_dir) as tmp:
        for name in _ARRAYS:
            write_npy(tmp / f"{name}.npy", getattr(result, name))
        for name in feature_names(result.schema):
            write_npy(tmp / f"{name}.npy", result.features[name])
        for split_name in ("val", "test"):
            held: HeldOut = getattr(result, split_name)
            write_npy(tmp / f"{split_name}_users.npy", held.users.astype(np.int32))
            write_npy(tmp / f"{split_name}_items.npy", held.items.astype(np.int32))
            write_npy(tmp / f"{split_name}_candidates.npy", held.candidates.astype(np.int32))
            write_npy(tmp / f"{split_name}_history.npy", held.history)
        write_json(tmp / "schema.json", result.schema.to_dict())
        write_json(tmp / "summary.json", result.summary)


def read_split(split_dir: Path) -> SplitResult | CTRSplit:
    split_dir = Path(split_dir)
    if not (split_dir / "schema.json").is_file():
        raise FileNotFoundError(
            f"{split_dir}/schema.json not found: run the split stage first (dvc repro split)."
        )
    schema = Schema.from_dict(read_json(split_dir / "schema.json"))
    summary = read_json(split_dir / "summary.json")
    if summary.get("protocol") == "ctr":
        rows = {  # the codes memory-mapped: a click log's can be many GB
            name: Rows(
                np.load(split_dir / f"{name}_codes.npy", mmap_mode="r", allow_pickle=False),
                read_npy(split_dir / f"{name}_labels.npy"),
            )
            for name in ("train", "val", "test")
        }
        features = {
            "user_features": np.zeros((1, 0), dtype=np.int64),
            "item_features": np.zeros((1, 0), dtype=np.int64),
        }
        return CTRSplit(**rows, features=features, schema=schema, summary=summary)
    arrays = {name: read_npy(split_dir / f"{name}.npy") for name in _ARRAYS}
    features = {name: read_npy(split_dir / f"{name}.npy") for name in feature_names(schema)}
    held = {
        s: HeldOut(
            read_npy(split_dir / f"{s}_users.npy"),
            read_npy(split_dir / f"{s}_items.npy"),
            read_npy(split_dir / f"{s}_candidates.npy"),
            read_npy(split_dir / f"{s}_history.npy"),
        )
        for s in ("val", "test")
    }
    return SplitResult(
        **arrays,
        val=held["val"],
        test=held["test"],
        features=features,
        schema=schema,
        summary=summary,
    )
