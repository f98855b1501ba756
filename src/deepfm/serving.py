"""Using a trained model (the `deepfm` command is a thin layer over this; docs/architecture.md,
"The `deepfm` command"): a user's top-K with titles, a probability for each row of a file,
and the model card. A checkpoint is used with the split it was trained on, which maps raw ids
to indices and holds each user's rated items and latest history; `load` refuses a checkpoint
trained on other data. Every failure a user can cause is a ServingError or a CheckpointError
whose message names the problem and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deepfm.data.batches import history_tensor
from deepfm.data.fields import encode_new_context
from deepfm.data.splitting import CTRSplit, SplitResult, read_split
from deepfm.models.base import RankingModel
from deepfm.models.checkpoint import check_checkpoint_data, data_fingerprint, load_model

# Rows scored per forward pass by score_rows: bounds memory, not results.
SCORE_BATCH = 1 << 16


class ServingError(Exception):
    """A problem with what the user asked for; the message says what and how to fix it."""


@dataclass
class Served:
    """A checkpoint's model with the split it was trained on."""

    model: RankingModel
    payload: dict
    split: SplitResult | CTRSplit
    checkpoint: Path
    split_dir: Path

    @property
    def is_ctr(self) -> bool:
        return isinstance(self.split, CTRSplit)


def read_split_dir(split_dir: Path) -> SplitResult | CTRSplit:
    split_dir = Path(split_dir)
    if not (split_dir / "schema.json").is_file():
        raise ServingError(
            f"no split in {split_dir}: run `dvc repro` (or `make repro`) first, or pass the "
            "folder of one with --split."
        )
    return read_split(split_dir)


def load(checkpoint: Path, split_dir: Path) -> Served:
    """The model in `checkpoint` with the split in `split_dir`, checked to belong together."""
    checkpoint, split_dir = Path(checkpoint), Path(split_dir)
    if not checkpoint.is_file():  # said before anything is read
        raise checkpoint_not_found(checkpoint)
    split = read_split_dir(split_dir)
    model, payload = load_checkpoint_model(checkpoint)
    check_checkpoint_data(payload, split, checkpoint, split_dir)
    return Served(model, payload, split, checkpoint, split_dir)


def load_checkpoint_model(checkpoint: Path) -> tuple[RankingModel, dict]:
    """models.checkpoint.load_model, with a missing or unreadable file a ServingError."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise checkpoint_not_found(checkpoint)
    try:
        return load_model(checkpoint)
    except ValueError as e:  # a checkpoint of another format
        raise ServingError(str(e)) from None
    except Exception as e:  # not a checkpoint at all (torch raises many types)
        first = str(e).splitlines()[0] if str(e) else ""
        raise ServingError(
            f"{checkpoint} is not a checkpoint written by the train stage "
            f"({type(e).__name__}: {first}); pass the train stage's models/model.pt or an "
            "experiment's."
        ) from None


def checkpoint_not_found(checkpoint: Path) -> ServingError:
    return ServingError(
        f"checkpoint {checkpoint} not found: train one with `dvc repro` (or `make repro`), "
        "or pass an existing one with --checkpoint PATH."
    )


def _topk_split(served: Served, command: str) -> SplitResult:
    if served.is_ctr:
        raise ServingError(
            f"`{command}` ranks items for a user (the top-K protocol); {served.split_dir} is a "
            "split of the ctr protocol (rows of a click log, no users or items): score its "
            "rows with `deepfm score FILE` instead."
        )
    split = served.split
    if split.latest is None:
        raise ServingError(
            f"{served.split_dir} has no user_latest.npy (written by the split stage since the "
            "`deepfm` command exists): rerun the split stage, `dvc repro`."
        )
    return split


def _id_lookup(ids: np.ndarray, values) -> np.ndarray:
    """Raw ids -> their index in `ids` (-1 where absent), comparing as the split stores ids:
    integers, or text."""
    values = pd.Series(values, dtype=object).reset_index(drop=True)
    if np.issubdtype(ids.dtype, np.integer):
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
        whole = np.isfinite(numbers) & (numbers == np.round(numbers))
        query = np.where(whole, numbers, np.nan)
        found = pd.Index(ids.astype(np.float64)).get_indexer(query)
        return np.where(whole, found, -1)
    return pd.Index(ids.astype(str)).get_indexer(values.astype(str))


def _id_range(ids: np.ndarray) -> str:
    if len(ids) and np.issubdtype(ids.dtype, np.integer):
        return f"ids {ids.min()}..{ids.max()}"
    return "e.g. " + ", ".join(map(str, ids[:3]))


def user_index(served: Served, user) -> int:
    """The model's index of the raw user id `user` (text from a command line is fine)."""
    split = served.split
    index = int(_id_lookup(split.user_ids, [user])[0])
    if index < 0:
        raise ServingError(
            f"user {user} is not in the split in {served.split_dir} ({len(split.user_ids)} "
            f"users, {_id_range(split.user_ids)}): pass a user id of this dataset."
        )
    return index


def rated_items(split: SplitResult, user: int) -> np.ndarray:
    """Every item the user rated in any split the model's data holds (train, validation,
    test, and the ratings between and after them that the causal protocol keeps out of
    training), sorted."""
    train = split.train_items[split.train_users == user]
    held = [h.items[h.users == user] for h in (split.val, split.test)]
    later = [p[p[:, 0] == user, 1] for p in (split.test_seen, split.after_test) if p is not None]
    return np.unique(np.concatenate([train, *held, *later]).astype(np.int64))


def item_titles(processed_dir: Path, item_ids: np.ndarray) -> np.ndarray | None:
    """Each item's title from the canonical items table, aligned with `item_ids`; None when
    the table or its title column is absent (a dataset without titles)."""
    path = Path(processed_dir) / "items.parquet"
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    if "title" not in pq.read_schema(path).names:
        return None
    items = pd.read_parquet(path, columns=["item_id", "title"])
    by_id = pd.Series(items["title"].to_numpy(), index=items["item_id"].to_numpy())
    return by_id.reindex(item_ids).fillna("").astype(str).to_numpy()


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def recommend(served: Served, user, k: int = 10, titles: np.ndarray | None = None) -> pd.DataFrame:
    """The user's top-k items by the model's score, every item they rated excluded; the
    user-side inputs are their history and context as of the end of their data. Columns:
    rank, item_id, (title,) score (the sigmoid of the logit: a probability for the models
    trained on a log loss), logit. Ties go to the lower item index."""
    split = _topk_split(served, "recommend")
    if k < 1:
        raise ServingError(f"-k {k}: ask for at least one item.")
    u = user_index(served, user)
    all_items = torch.arange(split.schema.num_items)
    history = history_tensor(split.latest[u : u + 1], "cpu")
    with torch.inference_mode():
        logits = served.model.score_matrix(torch.tensor([u]), all_items, history)[0]
    logits = logits.double().numpy()
    candidates = np.setdiff1d(np.arange(split.schema.num_items), rated_items(split, u))
    top = candidates[np.argsort(-logits[candidates], kind="stable")[:k]]
    out = pd.DataFrame({"rank": np.arange(1, len(top) + 1), "item_id": split.item_ids[top]})
    if titles is not None:
        out["title"] = titles[top]
    out["score"] = sigmoid(logits[top])
    out["logit"] = logits[top]
    return out


def _missing(frame: pd.DataFrame, needed: list[str], name: str, how: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        have = ", ".join(map(str, frame.columns)) or "none"
        raise ServingError(
            f"{name} has no column {', '.join(missing)} (its columns: {have}); {how}"
        )


def _unknown(kind: str, values: pd.Series, index: np.ndarray, name: str, ids) -> None:
    bad = np.flatnonzero(index < 0)
    if len(bad):
        row = int(bad[0])
        more = f" and {len(bad) - 1} more row(s)" if len(bad) > 1 else ""
        raise ServingError(
            f"{name} line {row + 2}: {kind} {values.iloc[row]} is not in the dataset{more} "
            f"({len(ids)} {kind}s, {_id_range(ids)}); score only {kind}s the model knows."
        )


def score_rows(served: Served, frame: pd.DataFrame, name: str = "the file") -> pd.DataFrame:
    """`frame` with a `probability` column (and its `logit`) per row.

    Top-K: columns user_id and item_id (raw ids of the dataset); the user side is the user's
    as of the end of their data, and a context field's column, where given, replaces the
    user's last context. ctr: one column per field of the dataset (raw values, encoded with
    the split's vocabularies: a value never seen in training counts as unknown)."""
    split = served.split
    context = [f.name for f in split.schema.fields if f.source == "context"]
    if context and not split.vocabs:
        raise ServingError(
            f"{served.split_dir} has no context_vocab.json (written by the split stage since "
            "the `deepfm` command exists): rerun the split stage, `dvc repro`."
        )
    if served.is_ctr:
        _missing(frame, context, name, f"a row to score needs every field: {', '.join(context)}.")
        codes = np.stack([encode_new_context(frame[c], split.vocabs[c]) for c in context], axis=1)
        users = items = np.zeros(len(frame), dtype=np.int64)
        history = codes
    else:
        split = _topk_split(served, "score")
        fields = f" (and optionally the context fields {', '.join(context)})" if context else ""
        _missing(frame, ["user_id", "item_id"], name, f"it needs user_id,item_id{fields}.")
        users = _id_lookup(split.user_ids, frame["user_id"])
        _unknown("user", frame["user_id"], users, name, split.user_ids)
        items = _id_lookup(split.item_ids, frame["item_id"])
        _unknown("item", frame["item_id"], items, name, split.item_ids)
        history = split.latest[users].copy()
        offset = history.shape[1] - len(context)
        for j, c in enumerate(context):
            if c in frame.columns:
                history[:, offset + j] = encode_new_context(frame[c], split.vocabs[c])
    logits = []
    with torch.inference_mode():
        for start in range(0, len(frame), SCORE_BATCH):
            sl = slice(start, start + SCORE_BATCH)
            h = history_tensor(np.ascontiguousarray(history[sl]), "cpu")
            u, i = torch.from_numpy(users[sl].astype(np.int64)), torch.from_numpy(items[sl])
            logits.append(served.model(u, i.long(), h).double().numpy())
    logits = np.concatenate(logits) if logits else np.zeros(0)
    out = frame.copy()
    out["probability"] = sigmoid(logits)
    out["logit"] = logits
    return out


def model_card(
    checkpoint: Path, split_dir: Path | None = None, metrics: Path | None = None, lock=None
) -> dict:
    """What a checkpoint is, as a dict (JSON): the model and its params, the data it was
    trained on (dataset, shape, data fingerprint; whether the split in `split_dir` matches;
    dvc.lock's hash of the split), the metrics in `metrics` (metrics/eval.json) and whether
    they are this checkpoint's, and the environment."""
    from deepfm.io import read_json
    from deepfm.utils import environment

    checkpoint = Path(checkpoint)
    model, payload = load_checkpoint_model(checkpoint)
    schema = payload["schema"]
    data = {
        "dataset": payload.get("dataset"),
        "users": schema["num_users"],
        "items": schema["num_items"],
        "fields": {f["name"]: f["vocab_size"] for f in schema["fields"]},
        "fingerprint": payload.get("data"),
    }
    card = {
        "checkpoint": str(checkpoint),
        "model": payload["model"],
        "parameters": model.num_parameters(),
        "epoch": int(payload["epoch"]),
        "seed": payload.get("seed"),
        "model_params": payload["model_params"],
        "validation": payload.get("val", {}),
        "data": data,
    }
    if split_dir is not None and (Path(split_dir) / "schema.json").is_file():
        split = read_split(split_dir)
        try:
            check_checkpoint_data(payload, split, checkpoint, split_dir)
            card["data"]["split"] = {"path": str(split_dir), "matches": True}
        except ValueError as e:
            card["data"]["split"] = {"path": str(split_dir), "matches": False, "why": str(e)}
        card["data"]["split"]["fingerprint"] = data_fingerprint(split)
    if lock is not None and Path(lock).is_file():
        card["data"]["dvc_lock_split_md5"] = _locked_split_md5(Path(lock))
    if metrics is not None and Path(metrics).is_file():
        evaluated = read_json(metrics)
        same = (
            evaluated.get("model") == payload["model"]
            and evaluated.get("checkpoint_epoch") == int(payload["epoch"])
            and evaluated.get("parameters") == card["parameters"]
        )
        card["metrics"] = {
            "path": str(metrics),
            "of_this_checkpoint": same,
            "test": evaluated.get("test", {}),
            "val": evaluated.get("val", {}),
            "environment": evaluated.get("environment"),
        }
    card["environment"] = environment(torch.get_num_threads())
    return card


def _locked_split_md5(lock: Path) -> str | None:
    import yaml

    try:
        stages = yaml.safe_load(lock.read_text(encoding="utf-8")).get("stages", {})
        return stages["split"]["outs"][0]["md5"]
    except (OSError, yaml.YAMLError, AttributeError, KeyError, IndexError, TypeError):
        return None
