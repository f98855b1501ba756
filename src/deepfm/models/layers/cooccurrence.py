"""Item pairs that co-occur in the users' train sequences: what the item_cooccurrence
baseline (deepfm.models.item_cooccurrence) counts."""

from __future__ import annotations

import numpy as np


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
