"""The ctr protocol's split: rows by order (or seeded random) into train / validation / test,
every field a context field encoded on the train rows only; in memory (split_ctr) or
streamed from the canonical parquet with bounded memory (split_ctr_stream), byte for byte the
same files."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepfm.data.declaration import FieldSpec
from deepfm.data.encoders import fit_vocab
from deepfm.data.fields import _bucketed, context_vocabularies, encode_arrow, encode_context
from deepfm.data.schema import Field, Schema
from deepfm.io import atomic_dir, read_json, read_npy, write_json, write_npy
from deepfm.utils import rng_for


@dataclass
class Rows:
    """Rows of the ctr protocol: each row's context codes and its given 0/1 label."""

    codes: np.ndarray  # (n, n_fields) int32
    labels: np.ndarray  # (n,) float32
    # (n,) uint64 group (user) id per row, 0 = none, for group AUC; validation and test
    # rows of a dataset that declares protocol.group, else None
    groups: np.ndarray | None = None


def group_ids(values: pd.Series) -> np.ndarray:
    """A group column's raw values -> (n,) uint64 ids: a hash of each value (no vocabulary
    to hold, whatever the number of users), 0 for a missing value (a row of no group)."""
    ids = pd.util.hash_pandas_object(values, index=False).to_numpy(np.uint64).copy()
    ids[ids == 0] = 1
    ids[values.isna().to_numpy()] = 0
    return ids


@dataclass
class CTRSplit:
    """Users and items are one placeholder each (index 0), so every model scores rows through
    the same interface."""

    train: Rows
    val: Rows
    test: Rows
    features: dict[str, np.ndarray]
    schema: Schema
    summary: dict
    # every field's vocabulary (fields.context_vocabularies): scoring new rows; {} in a split
    # written before it existed
    vocabs: dict = field(default_factory=dict)


def _parts(n: int, fractions: Sequence[float]) -> dict[str, tuple[int, int]]:
    """Positions [lo, hi) of train / val / test among n ordered rows."""
    n_train, n_val = round(fractions[0] * n), round(fractions[1] * n)
    if n_train == 0 or n_val == 0 or n - n_train - n_val <= 0:
        raise ValueError(
            f"{n} rows cannot be split {list(fractions)} with every part non-empty; declare "
            "more rows or other fractions."
        )
    return {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}


def _summary(method: str, labels: dict[str, np.ndarray], schema: Schema) -> dict:
    return {
        "protocol": "ctr",
        "split": method,
        "rows": {name: len(v) for name, v in labels.items()},
        "positive_rate": {name: round(float(v.mean()), 6) for name, v in labels.items()},
        "vocab_sizes": {f.name: f.vocab_size for f in schema.fields},
    }


def _placeholders() -> dict[str, np.ndarray]:
    """One user and one item without fields: every model scores rows through its usual
    interface."""
    return {f"{side}_features": np.zeros((1, 0), dtype=np.int64) for side in ("user", "item")}


def split_ctr(
    interactions: pd.DataFrame,
    fields: Sequence[FieldSpec],
    *,
    seed: int,
    method: str = "order",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    group: str | None = None,
) -> CTRSplit:
    """order: the first fraction of rows by timestamp (file order within one) to train, the
    next to validation, the rest to test; random: the same sizes over a seeded permutation.
    group: the column whose values group validation and test rows for group AUC."""
    n = len(interactions)
    if method == "order":
        order = np.argsort(interactions["timestamp"].to_numpy(), kind="stable")
    else:
        order = rng_for(seed, "ctr-split").permutation(n)
    parts = _parts(n, fractions)
    in_train = np.zeros(n, dtype=bool)
    in_train[: parts["train"][1]] = True  # positions in `order`
    context, codes, vocabs = encode_context(fields, interactions, order, in_train)
    labels = interactions["label"].to_numpy()[order].astype(np.float32)
    groups = None if group is None else group_ids(interactions[group].iloc[order])
    rows = {}
    for name, (lo, hi) in parts.items():  # the train rows need no groups (no group AUC)
        part_groups = None if groups is None or name == "train" else groups[lo:hi]
        rows[name] = Rows(codes[lo:hi], labels[lo:hi], part_groups)
    schema = Schema(tuple(context), 1, 1)
    summary = _summary(method, {name: r.labels for name, r in rows.items()}, schema)
    return CTRSplit(**rows, features=_placeholders(), schema=schema, summary=summary, vocabs=vocabs)


def split_ctr_stream(
    table_path: Path,
    fields: Sequence[FieldSpec],
    out_dir: Path,
    *,
    seed: int,
    method: str = "order",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    group: str | None = None,
    batch_rows: int = 1 << 18,
) -> dict:
    """split_ctr, streamed: the canonical parquet read in batches, twice (count the train
    rows' values, then encode), the codes written to .npy files row block by row block, so
    memory holds one batch whatever the number of rows. The files are byte for byte those of
    write_split(split_ctr(...)). Returns the summary.

    method "order" needs the rows in timestamp order already (both click-log parsers write
    them so); otherwise the whole table is split in memory."""
    import pyarrow.parquet as pq

    context = [f for f in fields if f.source == "context"]
    source = pq.ParquetFile(table_path)
    n = source.metadata.num_rows
    bounds = _parts(n, fractions)
    batches = _Batches(source, [*(f.name for f in context), "label", "timestamp"], batch_rows)
    if method == "order":
        if not _in_timestamp_order(batches):
            table = pd.read_parquet(table_path)
            result = split_ctr(
                table, fields, seed=seed, method=method, fractions=fractions, group=group
            )
            write_ctr_split(result, out_dir)
            return result.summary
        position = None  # row j sits at position j
    else:
        order = rng_for(seed, "ctr-split").permutation(n)
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)
    vocabs = _train_vocabularies(batches, context, position, bounds["train"][1])
    columns = (
        Field(f.name, "context", "sparse", len(vocabs[f.name]) + 1, column)
        for column, f in enumerate(context)
    )
    schema = Schema(tuple(columns), 1, 1)
    with atomic_dir(out_dir) as tmp:
        _write_rows(tmp, batches, context, vocabs, position, bounds, group)
        labels = {name: np.load(tmp / f"{name}_labels.npy", mmap_mode="r") for name in bounds}
        summary = _summary(method, labels, schema)
        del labels  # unmap before the folder moves into place
        write_json(tmp / "context_vocab.json", context_vocabularies(context, vocabs))
        write_json(tmp / "schema.json", schema.to_dict())
        write_json(tmp / "summary.json", summary)
    return summary


@dataclass
class _Batches:
    """The canonical parquet's `columns`, read batch by batch: one pass over the file per
    iteration."""

    source: Any  # a pyarrow.parquet.ParquetFile
    columns: list[str]
    batch_rows: int

    def __iter__(self) -> Iterator[tuple[int, pd.DataFrame]]:
        """(the batch's first row, the batch), in file order."""
        start = 0
        for batch in self.source.iter_batches(batch_size=self.batch_rows, columns=self.columns):
            frame = batch.to_pandas()
            yield start, frame
            start += len(frame)


def _in_timestamp_order(batches: _Batches) -> bool:
    """Whether the rows' timestamps never decrease: then the file's row order is the split's."""
    last = None
    for _, frame in batches:
        t = frame["timestamp"].to_numpy()
        if (last is not None and len(t) and t[0] < last) or (np.diff(t) < 0).any():
            return False
        last = t[-1] if len(t) else last
    return True


def _positions(position: np.ndarray | None, start: int, count: int) -> np.ndarray:
    """The split-order positions of rows start .. start + count (position None: their own)."""
    rows = np.arange(start, start + count)
    return rows if position is None else position[rows]


def _train_vocabularies(batches: _Batches, context, position, n_train: int) -> dict:
    """Pass 1: each field's vocabulary, fitted on the values of the train rows (the first
    n_train positions) only."""
    counts: dict[str, list[pd.Series]] = {f.name: [] for f in context}
    for start, frame in batches:
        train = _positions(position, start, len(frame)) < n_train
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
    return vocabs


def _write_rows(tmp: Path, batches: _Batches, context, vocabs, position, bounds, group) -> None:
    """Pass 2: each batch's rows encoded and written at their positions into the parts'
    <part>_codes / _labels (/ _groups) files in `tmp`."""
    _create_row_files(tmp, bounds, len(context), group)
    for start, frame in batches:
        pos = _positions(position, start, len(frame))
        codes = np.zeros((len(frame), len(context)), dtype=np.int32)
        for column, f in enumerate(context):
            codes[:, column] = encode_arrow(_bucketed(frame[f.name], f), vocabs[f.name])
        labels = frame["label"].to_numpy().astype(np.float32)
        groups = None if group is None else group_ids(frame[group])
        for name, (lo, hi) in bounds.items():
            mine = (pos >= lo) & (pos < hi)
            if mine.any():
                parts = [("codes", codes[mine]), ("labels", labels[mine])]
                if groups is not None and name != "train":
                    parts.append(("groups", groups[mine]))
                for kind, values in parts:
                    target = np.load(tmp / f"{name}_{kind}.npy", mmap_mode="r+")
                    target[pos[mine] - lo] = values
                    target.flush()
                    del target  # unmap: the written pages leave this process


def _create_row_files(tmp: Path, bounds, num_fields: int, group: str | None) -> None:
    """Each part's empty .npy files, of their final shape, for _write_rows to fill."""
    for name, (lo, hi) in bounds.items():
        for kind, shape, dtype in (("codes", (hi - lo, num_fields), np.int32),
                                   ("labels", (hi - lo,), np.float32)):  # fmt: skip
            np.lib.format.open_memmap(tmp / f"{name}_{kind}.npy", "w+", dtype, shape).flush()
        if group is not None and name != "train":
            shape = (hi - lo,)
            np.lib.format.open_memmap(tmp / f"{name}_groups.npy", "w+", np.uint64, shape).flush()


def write_ctr_split(result: CTRSplit, out_dir: Path) -> None:
    """The split's files into `out_dir`, replaced as a whole (never half-written)."""
    with atomic_dir(out_dir) as tmp:
        for name in ("train", "val", "test"):
            rows: Rows = getattr(result, name)
            write_npy(tmp / f"{name}_codes.npy", rows.codes)
            write_npy(tmp / f"{name}_labels.npy", rows.labels)
            if rows.groups is not None:
                write_npy(tmp / f"{name}_groups.npy", rows.groups)
        write_json(tmp / "context_vocab.json", result.vocabs)
        write_json(tmp / "schema.json", result.schema.to_dict())
        write_json(tmp / "summary.json", result.summary)


def read_ctr_split(split_dir: Path, schema: Schema, summary: dict) -> CTRSplit:
    rows = {  # the codes memory-mapped: a click log's can be many GB
        name: Rows(
            np.load(split_dir / f"{name}_codes.npy", mmap_mode="r", allow_pickle=False),
            read_npy(split_dir / f"{name}_labels.npy"),
            read_npy(groups) if (groups := split_dir / f"{name}_groups.npy").exists() else None,
        )
        for name in ("train", "val", "test")
    }
    vocabs = split_dir / "context_vocab.json"
    vocabs = read_json(vocabs) if vocabs.is_file() else {}
    return CTRSplit(**rows, features=_placeholders(), schema=schema, summary=summary, vocabs=vocabs)
