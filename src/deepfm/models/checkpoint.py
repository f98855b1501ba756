"""The model checkpoint (models/model.pt): the kept epoch's weights with what rebuilds the model
(`load_model`), and the data fingerprint that ties it to the split it was trained on.

Here, below evaluation and training, so that evaluating a checkpoint needs no training code;
the resume state of an interrupted run is training's (training/resume.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from deepfm.config import MODEL_SECTIONS, Config
from deepfm.data.schema import Schema
from deepfm.data.splitting import CTRSplit, SplitResult, feature_names
from deepfm.io import load_checkpoint
from deepfm.models import build_model
from deepfm.models.base import RankingModel

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used with the split at hand; the message names both."""


def checkpoint_payload(
    cfg: Config, model: RankingModel, epoch: int, val: dict, data: str | None = None
) -> dict:
    """data: the data_fingerprint of the split the model was trained on."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": cfg.model,
        "model_params": dataclasses.asdict(cfg.model_params),
        "schema": model.schema.to_dict(),
        "epoch": epoch,
        "val": val,
        "seed": cfg.seed,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    if data is not None:  # absent in checkpoints written before it existed
        payload["dataset"] = cfg.dataset
        payload["data"] = data
    return payload


def load_model(path: Path) -> tuple[RankingModel, dict]:
    """Rebuild a model from a checkpoint written by `train` (weights_only, no pickle)."""
    payload = load_checkpoint(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: checkpoint format {payload.get('format')!r} is not "
            f"{CHECKPOINT_FORMAT}; retrain with this version (dvc repro train)."
        )
    schema = Schema.from_dict(payload["schema"])
    state = payload["state_dict"]
    features = {k: state[k] for k in feature_names(schema)}
    section = MODEL_SECTIONS[payload["model"]]
    gone = sorted(set(payload["model_params"]) - {f.name for f in dataclasses.fields(section)})
    if gone:  # a switch removed since (docs/tuning-log.md, "Pruned")
        raise ValueError(
            f"{path}: its {payload['model']} params name {', '.join(gone)}, which this version "
            "no longer has (docs/tuning-log.md); retrain with this version (dvc repro train)."
        )
    params = section(**payload["model_params"])
    model = build_model(payload["model"], schema, features, params)
    model.load_state_dict(state)
    model.eval()
    return model, payload


def data_fingerprint(split: SplitResult | CTRSplit) -> str:
    """What a model learns from and is evaluated on, as one sha256: the schema, the raw ids,
    the train rows and the held-out items (top-K), or the labels of every part (ctr). Two
    splits that differ only in their sampled candidates share it (the same seed-independent
    data); another dataset, version, tie-break or protocol setting does not."""
    digest = hashlib.sha256(json.dumps(split.schema.to_dict(), sort_keys=True).encode())
    if isinstance(split, CTRSplit):
        arrays = [getattr(split, p).labels for p in ("train", "val", "test")]
    else:
        arrays = [
            *(split.user_ids, split.item_ids),
            *(split.train_users, split.train_items, split.train_labels),
            *(split.val.users, split.val.items, split.test.items),
        ]
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def check_checkpoint_data(payload: dict, split: SplitResult | CTRSplit, checkpoint, split_dir):
    """Refuse a checkpoint trained on other data than `split` (read from split_dir): another
    dataset (its schema differs) or other rows of the same shape (its data fingerprint)."""
    fix = (
        "pass the split it was trained on with --split, or train on this one (dvc repro; "
        "dvc exp apply for an experiment's checkpoint)"
    )
    theirs = Schema.from_dict(payload["schema"])
    history = theirs.field("history")
    try:  # a model may read fewer history items than the split holds (its history_length)
        ours = split.schema.reading_history(history.length if history is not None else 0)
    except ValueError:
        ours = split.schema
    if theirs != ours:
        where = f" ({payload['dataset']})" if "dataset" in payload else ""
        raise CheckpointError(
            f"{checkpoint} was trained on another dataset{where} than the split in {split_dir} "
            f"(checkpoint: {_shape(theirs)}; split: {_shape(split.schema)}): {fix}."
        )
    if "data" in payload and payload["data"] != (ours := data_fingerprint(split)):
        raise CheckpointError(
            f"{checkpoint} was trained on other rows than the split in {split_dir} (the same "
            f"fields and sizes, data fingerprint {payload['data'][:12]} vs {ours[:12]}: another "
            f"dataset version, split setting or seed): {fix}."
        )


def _shape(schema: Schema) -> str:
    fields = ", ".join(f"{f.name} {f.vocab_size}" for f in schema.fields if f.vocab_size)
    return f"{schema.num_users} users x {schema.num_items} items, vocabularies {fields}"
