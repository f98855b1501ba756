"""The declared fields, encoded: vocabularies (min_count, bins, log buckets), bags and dense
scalers, all fitted on the train split only. Code 0 is padding / unknown."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from deepfm.data.declaration import FieldSpec
from deepfm.data.encoders import encode, encode_lists, fit_vocab
from deepfm.data.schema import Field


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
    """Every declared field of the users and items tables, fitted on the rows in `seen` (the
    users / items of the train split) only: (sparse and dense fields, sequence fields by side,
    the feature arrays by buffer name, the dense fields' fitted scalers). Values seen on fewer
    than `min_count` train users / items get code 0, like values never seen."""
    flat: list[Field] = []
    bags: dict[str, list[Field]] = {"user": [], "item": []}
    arrays: dict[str, np.ndarray] = {}
    scalers: dict[str, dict] = {}
    for side in ("user", "item"):
        table = tables[side]
        sparse = [f for f in fields if f.source == side and f.kind == "sparse"]
        codes = []
        for column, f in enumerate(sparse):
            values = _bucketed(table[f.name], f)  # a number with bins or log buckets
            vocab = fit_vocab(_frequent(values.iloc[seen[side]], f.min_count))
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
) -> tuple[list[Field], np.ndarray, dict]:
    """The context fields (columns of each interaction): codes per row in the split's order,
    (n_rows, n_context) int32, with vocabularies fitted on the train rows only. Also returns
    the vocabularies, as `context_vocabularies` keeps them (a new row's values -> codes)."""
    context = [f for f in fields if f.source == "context"]
    codes = np.zeros((len(order), len(context)), dtype=np.int32)
    out, vocabs = [], {}
    for column, f in enumerate(context):
        values = interactions[f.name].iloc[order].reset_index(drop=True)
        values = _bucketed(values, f)
        vocab = fit_vocab(_frequent(values[in_train], f.min_count))
        codes[:, column] = encode(values, vocab)
        out.append(Field(f.name, "context", "sparse", len(vocab) + 1, column))
        vocabs[f.name] = vocab
    return out, codes, context_vocabularies(context, vocabs)


def context_vocabularies(context: Sequence[FieldSpec], vocabs: dict) -> dict:
    """What encodes a context field's raw values as the split did, as JSON: per field its
    bucketing and its vocabulary (value j has code j + 1; anything else 0). Written with the
    split (context_vocab.json) so that new rows can be scored (`deepfm score`)."""
    return {
        f.name: {
            "bins": list(f.bins),
            "log_buckets": bool(f.log_buckets),
            "values": [v.item() if isinstance(v, np.generic) else v for v in vocabs[f.name]],
        }
        for f in context
    }


def encode_new_context(values: pd.Series, entry: dict) -> np.ndarray:
    """Raw values of one context field (e.g. a column of a file to score) -> its codes, with
    an entry of `context_vocabularies`. Text that the vocabulary holds as numbers is read as
    numbers; a value the train rows never showed gets 0, as in the split."""
    spec = FieldSpec("", "context", "sparse", bins=tuple(entry["bins"]),
                     log_buckets=entry["log_buckets"])  # fmt: skip
    values = _bucketed(pd.Series(values, dtype=object).reset_index(drop=True), spec)
    vocab = np.asarray(entry["values"], dtype=object)
    if len(vocab) and not any(isinstance(v, str) for v in vocab):  # a numeric vocabulary
        numbers = pd.to_numeric(values, errors="coerce")
        values = pd.Series(
            [None if np.isnan(x) else int(x) if float(x).is_integer() else x for x in numbers],
            dtype=object,
        )
    return encode(values, vocab)


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


def encode_arrow(values: pd.Series, vocab: np.ndarray) -> np.ndarray:
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
