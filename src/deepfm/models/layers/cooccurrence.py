"""Item pairs that co-occur in the users' train sequences: what the item_cooccurrence
baseline (deepfm.models.item_cooccurrence) counts."""

from __future__ import annotations

import numpy as np


def cooccurrence_pairs(
    users: np.ndarray, codes: np.ndarray, window: int, direction: str = "both"
) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of every counted pair of rows at most `window` apart in the same user's
    sequence (both ways with direction "both"). Rows must be one user's sequence after
    another, each in time order."""
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for d in range(1, min(window, len(users) - 1) + 1):
        same = users[:-d] == users[d:]
        if not same.any():
            break  # no sequence is longer than d
        a, b = codes[:-d][same], codes[d:][same]
        parts.append((a, b))
        if direction == "both":
            parts.append((b, a))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    a, b = (np.concatenate(col) for col in zip(*parts, strict=True))
    keep = (a > 0) & (b > 0)  # code 0 (unknown) is never counted
    return a[keep].astype(np.int64), b[keep].astype(np.int64)
