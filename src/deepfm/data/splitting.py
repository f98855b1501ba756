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
- context fields (columns of each interaction) travel with the example, after its history;
- for serving only (`deepfm recommend` / `score`, never training or evaluation): each user's
  history and context as of the end of their data (`latest`), and the context fields'
  vocabularies.

Users and items are addressed by their row in the canonical users / items tables
("index"); the feature matrices map an index to the embedding codes of its fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepfm.data.declaration import FieldSpec
from deepfm.data.fields import encode_context, encode_fields
from deepfm.data.rowsplit import CTRSplit, read_ctr_split, split_ctr, write_ctr_split
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

    def take(self, rows: np.ndarray) -> HeldOut:
        """The held-out rows `rows` (positions), e.g. a sample of evaluation users."""
        return HeldOut(
            self.users[rows], self.items[rows], self.candidates[rows], self.history[rows]
        )


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
    # n_context) per user, the history as of the end of their data (every split's counted
    # rows, held-out ones too) and the context codes of their last interaction; None in a
    # split written before it existed
    latest: np.ndarray | None = None
    # the context fields' vocabularies (fields.context_vocabularies); {} without such fields
    vocabs: dict = dataclasses.field(default_factory=dict)

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
    out = np.zeros((num_users, length), dtype=np.int32)
    for back in range(1, length + 1):
        source = counted_rows[np.maximum(end - back, 0)] if len(counted_rows) else end
        same_user = (end - back >= 0) & (user_idx[source] == users)
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
    context_fields, context_codes, vocabs = encode_context(fields, interactions, order, in_train)
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
    # serving only: the same as of the end of each user's data (every split's rows counted,
    # the held-out ones too: they are known by then) and the context of the last interaction
    every = np.ones(len(label), dtype=bool) if sequence == "rated" else label == 1
    last_row = np.searchsorted(user_idx, np.arange(num_users), side="right") - 1
    has_rows = (last_row >= 0) & (user_idx[np.maximum(last_row, 0)] == np.arange(num_users))
    latest = np.concatenate(
        [
            latest_items(user_idx, item_codes, every, history_length, num_users),
            np.where(has_rows[:, None], context_codes[np.maximum(last_row, 0)], 0),
        ],
        axis=1,
    ).astype(np.int32)
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
        latest=latest,
        vocabs=vocabs,
    )


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
            group=spec.ctr_group,
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
        write_ctr_split(result, out_dir)
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
        if result.latest is not None:
            write_npy(tmp / "user_latest.npy", result.latest)
        if result.vocabs:
            write_json(tmp / "context_vocab.json", result.vocabs)
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
        return read_ctr_split(split_dir, schema, summary)
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
    latest = split_dir / "user_latest.npy"
    vocabs = split_dir / "context_vocab.json"
    return SplitResult(
        **arrays,
        val=held["val"],
        test=held["test"],
        features=features,
        schema=schema,
        summary=summary,
        latest=read_npy(latest) if latest.is_file() else None,
        vocabs=read_json(vocabs) if vocabs.is_file() else {},
    )
