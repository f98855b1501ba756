"""The training loop: epochs of fresh negatives, validation after each, early stopping.

Plain PyTorch, no framework: one function a reader can hold in their head.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from deepfm.config import MODEL_SECTIONS, Config, TrainConfig
from deepfm.data.batches import epoch_examples, feature_tensors, iterate_batches
from deepfm.data.sampling import RatedIndex
from deepfm.data.schema import Schema
from deepfm.data.split import SplitResult
from deepfm.io import load_checkpoint, save_checkpoint
from deepfm.models import build_model
from deepfm.models.base import RankingModel
from deepfm.training.evaluate import evaluate_held_out
from deepfm.utils import physical_cores

MONITOR = "full_ndcg@10"  # early stopping watches validation full-ranking NDCG@10
CHECKPOINT_FORMAT = 1


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the best checkpoint is left untouched."""


@dataclass
class TrainOutcome:
    best_epoch: int
    best_val: dict
    epochs_run: int
    stop_reason: str
    seconds_per_epoch: list[float] = field(default_factory=list)
    num_threads: int = 1
    device: str = "cpu"
    num_parameters: int = 0


def setup_torch(cfg: TrainConfig, seed: int) -> tuple[int, torch.device]:
    """Threads, determinism and device. Returns (threads, device)."""
    threads = cfg.num_threads or physical_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif cfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "params.yaml: 'train.device' is 'cuda' but no CUDA device is visible; "
            "set train.device to 'cpu' or 'auto'."
        )
    else:
        device = cfg.device
    return threads, torch.device(device)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    embedding_params, other_params = [], []
    for module in model.modules():
        target = (
            embedding_params if isinstance(module, nn.Embedding | nn.EmbeddingBag) else other_params
        )
        target.extend(p for p in module.parameters(recurse=False) if p.requires_grad)
    groups = [
        {"params": embedding_params, "weight_decay": cfg.embedding_l2},
        {"params": other_params, "weight_decay": cfg.weight_decay},
    ]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.learning_rate)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.learning_rate)
    return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=0.9)


def checkpoint_payload(cfg: Config, model: RankingModel, epoch: int, val: dict) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "model": cfg.model,
        "model_params": dataclasses.asdict(cfg.model_params),
        "schema": model.schema.to_dict(),
        "epoch": epoch,
        "val": val,
        "seed": cfg.seed,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


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
    features = {k: state[k] for k in ("user_features", "item_features", "item_genres")}
    params = MODEL_SECTIONS[payload["model"]](**payload["model_params"])
    model = build_model(payload["model"], schema, features, params)
    model.load_state_dict(state)
    model.eval()
    return model, payload


def _log(live, metrics: dict, prefix: str) -> None:
    if live is None:
        return
    for key, value in metrics.items():
        if isinstance(value, float) and math.isfinite(value):
            live.log_metric(f"{prefix}/{key}", round(value, 6))


def train(
    cfg: Config,
    split: SplitResult,
    model_path: Path,
    *,
    live=None,
    timing_live=None,
    progress: bool | None = None,
) -> TrainOutcome:
    """Train cfg.model on the split; the best epoch (by validation MONITOR) goes to model_path."""
    tc = cfg.train
    threads, device = setup_torch(tc, cfg.seed)
    progress = sys.stderr.isatty() if progress is None else progress
    model = build_model(cfg.model, split.schema, feature_tensors(split), cfg.model_params).to(
        device
    )
    rated = RatedIndex(
        split.train_users, split.train_items, split.schema.num_users, split.schema.num_items
    )

    def validate() -> dict:
        return evaluate_held_out(
            model, split.val, rated, ks=[10], batch_users=cfg.eval.batch_users, device=device
        ).metrics

    if not model.trainable:
        model.fit(split.train_users, split.train_items, split.train_labels)
        val = validate()
        _log(live, {k: v for k, v in val.items() if k != "users"}, "val")
        if live is not None:
            live.next_step()
        save_checkpoint(model_path, checkpoint_payload(cfg, model, 0, val))
        return TrainOutcome(
            0,
            val,
            0,
            "no training (fitted in closed form)",
            [],
            threads,
            str(device),
            model.num_parameters(),
        )

    optimizer = make_optimizer(model, tc)
    loss_fn = nn.BCEWithLogitsLoss()
    shuffle = torch.Generator().manual_seed(cfg.seed)
    best_score, best_epoch, best_val, bad_epochs = -math.inf, 0, {}, 0
    seconds: list[float] = []
    stop_reason = f"reached train.epochs={tc.epochs}"
    for epoch in range(1, tc.epochs + 1):
        start = time.perf_counter()
        model.train()
        users, items, labels = epoch_examples(
            split,
            rated,
            seed=cfg.seed,
            epoch=epoch,
            negatives_per_positive=tc.negatives_per_positive,
            observed_negatives=tc.observed_negatives,
        )
        tensors = tuple(torch.from_numpy(a).to(device) for a in (users, items, labels))
        total_loss = torch.zeros((), device=device)
        n_batches = math.ceil(len(users) / tc.batch_size)
        batches = iterate_batches(tensors, tc.batch_size, shuffle)
        for u, i, y in tqdm(
            batches, total=n_batches, desc=f"epoch {epoch}", disable=not progress, leave=False
        ):
            loss = loss_fn(model(u, i), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            total_loss += loss.detach() * len(y)
        train_loss = float(total_loss) / len(users)
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"epoch {epoch}: the training loss is {train_loss}; stopping. The best checkpoint "
                f"(epoch {best_epoch}) is kept. Lower train.learning_rate or set train.grad_clip."
            )
        train_seconds = time.perf_counter() - start
        val_start = time.perf_counter()
        val = validate()
        val_seconds = time.perf_counter() - val_start
        seconds.append(train_seconds)

        _log(live, {"loss": train_loss}, "train")
        _log(live, {k: v for k, v in val.items() if k != "users"}, "val")
        if live is not None:
            live.next_step()
        if timing_live is not None:
            timing_live.log_metric("train/seconds_per_epoch", round(train_seconds, 3))
            timing_live.log_metric("val/seconds", round(val_seconds, 3))
            timing_live.next_step()
        if progress:
            tqdm.write(
                f"epoch {epoch}: loss {train_loss:.4f}  val {MONITOR} {val[MONITOR]:.4f}  "
                f"hr@10 {val['hr@10']:.4f}  auc {val['auc']:.4f}  ({train_seconds:.1f}s)"
            )

        if val[MONITOR] > best_score:
            best_score, best_epoch, best_val, bad_epochs = val[MONITOR], epoch, val, 0
            save_checkpoint(model_path, checkpoint_payload(cfg, model, epoch, val))
        else:
            bad_epochs += 1
            if epoch >= tc.min_epochs and bad_epochs >= tc.patience:
                stop_reason = f"early stop: no better {MONITOR} for {bad_epochs} epochs"
                break
    return TrainOutcome(
        best_epoch,
        best_val,
        epoch,
        stop_reason,
        seconds,
        threads,
        str(device),
        model.num_parameters(),
    )
