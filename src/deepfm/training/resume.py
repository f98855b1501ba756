"""The resume state of an interrupted run.

Saved after every epoch, it holds everything that decides the rest of a run; a run with the
same fingerprint (params and training data) continues from it, ending exactly as an
uninterrupted run would. The kept model's checkpoint is models/checkpoint.py's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepfm.config import Config
from deepfm.data.splitting import CTRSplit, SplitResult
from deepfm.io import load_checkpoint, save_checkpoint


def run_fingerprint(cfg: Config, split: SplitResult | CTRSplit) -> str:
    """What a resumable run must share with the interrupted one: every param the train stage
    reads and the training data itself."""
    digest = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    if isinstance(split, CTRSplit):
        arrays = (split.train.codes, split.train.labels, split.val.codes, split.val.labels)
    else:
        arrays = (
            *(split.train_users, split.train_items, split.train_labels, split.train_history),
            *(split.val.users, split.val.items, split.val.history),
            *(split.features[name] for name in sorted(split.features)),
        )
    for array in arrays:
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)  # no copy of a map
        for start in range(0, len(raw), 1 << 26):  # 64 MB at a time
            digest.update(raw[start : start + (1 << 26)])
    return digest.hexdigest()


@dataclass
class LoopState:
    """Everything that decides the rest of a run, saved after every completed epoch."""

    epoch: int = 0
    best_score: float = -math.inf  # the monitor's best value, negated if lower is better
    best_epoch: int = 0
    best_val: dict = field(default_factory=dict)
    kept_epoch: int = 0
    kept_val: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # per-epoch rows logged to dvclive
    seconds: list[float] = field(default_factory=list)


def save_resume(
    path, fingerprint, state: LoopState, model, optimizer, scheduler, shuffle, kept_payload
) -> None:
    loop = {**dataclasses.asdict(state), "best_score": float(state.best_score)}
    save_checkpoint(
        path,
        {
            "fingerprint": fingerprint,
            "loop": loop,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": shuffle.get_state(),
            "kept": kept_payload,
        },
    )


def load_resume(path: Path | None, fingerprint: str, warn: bool = True):
    """The saved state of an interrupted run with the same fingerprint, else None. A file that
    cannot be read, or that another run left, is only a lost shortcut: said (if `warn`: one
    rank of several says it), never an error."""
    if path is None or not path.is_file():
        return None
    try:
        saved = load_checkpoint(path)
        if saved.get("fingerprint") == fingerprint:
            return saved
        why = "was left by a run with other params or data"
    except Exception as e:
        why = f"cannot be read ({type(e).__name__}: {e})"
    if not warn:
        return None
    print(
        f"warning: the resume file {path} {why}; it is ignored and training starts from epoch 1.",
        file=sys.stderr,  # line-buffered: no flush needed
    )
    return None


def restore_resume(
    saved: dict, model_path: Path | None, model, optimizer, scheduler, shuffle
) -> tuple[LoopState, dict | None]:
    """Put a run back where the resume state `saved` (from load_resume) left it: weights,
    optimizer, scheduler, both random generators and the kept checkpoint at model_path (None:
    not written, as on the ranks other than 0 of a multi-process run).
    Returns (the loop state, the kept checkpoint's payload or None)."""
    state = LoopState(**saved["loop"])
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    shuffle.set_state(saved["shuffle_rng"])
    kept_payload = saved["kept"]
    if kept_payload is not None and model_path is not None:
        save_checkpoint(model_path, kept_payload)  # DVC removed it before rerunning
    return state, kept_payload
