"""Vocabularies fitted on the train split only. Code 0 is padding / unknown."""

from __future__ import annotations

import numpy as np
import pandas as pd


def fit_vocab(values) -> np.ndarray:
    """Sorted distinct non-missing values; value vocab[j] gets code j + 1."""
    return np.sort(pd.Series(values).dropna().unique())


def encode(values, vocab: np.ndarray) -> np.ndarray:
    """Map values to codes 1..len(vocab); anything not in the vocabulary (or missing) -> 0."""
    codes = pd.Index(vocab).get_indexer(pd.Series(values, dtype=object))  # -1 where unknown
    return codes.astype(np.int64) + 1


def encode_lists(lists, vocab: np.ndarray) -> np.ndarray:
    """Encode a list-valued column into an (n, max_len) matrix, unknown values dropped, 0-padded."""
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    flat = encode(
        np.concatenate([np.asarray(x, dtype=object) for x in lists]) if len(lists) else [], vocab
    )
    rows = np.repeat(np.arange(len(lists)), lengths)
    keep = flat > 0
    rows, flat = rows[keep], flat[keep]
    # position of each kept code within its row
    starts = np.searchsorted(rows, np.arange(len(lists)))
    pos = np.arange(len(rows)) - starts[rows]
    out = np.zeros((len(lists), max(int(pos.max()) + 1 if len(pos) else 1, 1)), dtype=np.int64)
    out[rows, pos] = flat
    return out
