"""The training loop: epochs of fresh negatives, validation every `val_every`, early stopping.

Plain PyTorch, no framework: one function a reader can hold in their head.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from deepfm.config import MODEL_SECTIONS, Config, TrainConfig
from deepfm.data.batches import feature_tensors
from deepfm.data.sampling import RatedIndex
from deepfm.data.schema import Schema
from deepfm.data.splitting import SplitResult
from deepfm.evaluation.metrics import parse_key
from deepfm.evaluation.ranking import evaluate_held_out
from deepfm.io import load_checkpoint, save_checkpoint
from deepfm.models import build_model
from deepfm.models.base import RankingModel
from deepfm.training.objectives import TrainingError, make_objective
from deepfm.utils import deferred_interrupts, physical_cores

CURVE_K = 10  # validation computes the @k metrics at this k (the curves) and the monitor's k
CHECKPOINT_FORMAT = 1


@dataclass
class TrainOutcome:
    best_epoch: int  # the best validation epoch
    best_val: dict
    epochs_run: int
    stop_reason: str
    seconds_per_epoch: list[float] = field(default_factory=list)
    num_threads: int = 1
    device: str = "cpu"
    num_parameters: int = 0
    kept_epoch: int = 0  # the epoch whose weights are in the checkpoint (train.checkpoint)
    kept_val: dict = field(default_factory=dict)


def setup_torch(cfg: TrainConfig, seed: int) -> tuple[int, torch.device]:
    """Threads, determinism and device. Returns (threads, device)."""
    threads = cfg.num_threads or physical_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    elif cfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "params.yaml: 'train.device' is 'cuda' but no CUDA device is visible; "
            "set train.device to 'cpu' or 'auto'."
        )
    else:
        device = cfg.device
    if cfg.amp and device != "cuda":
        raise TrainingError(
            f"params.yaml: 'train.amp' is true but training runs on {device}; mixed precision "
            "is for CUDA only. Set train.amp to false, or train.device to 'cuda' / 'auto' on a "
            "machine with a CUDA GPU."
        )
    return threads, torch.device(device)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    embedding_params, other_params = [], []
    for module in model.modules():
        target = embedding_params if isinstance(module, nn.Embedding) else other_params
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
            live.log_metric(f"{prefix}/{key}" if prefix else key, round(value, 6))


def train_steps(
    model,
    optimizer,
    batches,
    objective,
    grad_clip: float = 0.0,
    amp: bool = False,
    interrupted: threading.Event | None = None,
) -> float:
    """One pass of optimizer steps over an objective's batches; the mean loss per example.

    amp: run the forward pass under bfloat16 autocast (weights, gradients and the optimizer
    stay float32; bfloat16 has float32's range, so no loss scaling is needed; the objectives
    take their loss in float32).
    interrupted: a flag set by Ctrl-C (utils.deferred_interrupts); checked between batches.
    """
    total = None
    count = 0
    device_type = next(model.parameters()).device.type
    for batch in batches:
        if interrupted is not None and interrupted.is_set():
            raise KeyboardInterrupt  # Ctrl-C, deferred to a point between two batches
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            loss, n = objective.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        # summed on the device: a .item() per step would synchronise a GPU every batch
        weighted = loss.detach() * n
        total = weighted if total is None else total + weighted
        count += n
    return float(total) / max(count, 1) if total is not None else float("nan")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.scheduler == "plateau":  # on the validation monitor, in its direction
        mode = "max" if parse_key(cfg.monitor)[0].higher_is_better else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None


def run_fingerprint(cfg: Config, split: SplitResult) -> str:
    """What a resumable run must share with the interrupted one: every param the train stage
    reads and the training data itself."""
    digest = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    for array in (
        split.train_users,
        split.train_items,
        split.train_labels,
        split.train_history,
        split.val.users,
        split.val.items,
        split.val.history,
        split.user_features,
        split.item_features,
        split.item_genres,
    ):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@dataclass
class _LoopState:
    """Everything that decides the rest of a run, saved after every completed epoch."""

    epoch: int = 0
    best_score: float = -math.inf  # the monitor's best value, negated if lower is better
    best_epoch: int = 0
    best_val: dict = field(default_factory=dict)
    kept_epoch: int = 0
    kept_val: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # per-epoch rows logged to dvclive
    seconds: list[float] = field(default_factory=list)


def _save_resume(
    path, fingerprint, state: _LoopState, model, optimizer, scheduler, shuffle, kept_payload
) -> None:
    save_checkpoint(
        path,
        {
            "fingerprint": fingerprint,
            "loop": {**dataclasses.asdict(state), "best_score": float(state.best_score)},
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": shuffle.get_state(),
            "kept": kept_payload,
        },
    )


def _load_resume(path: Path | None, fingerprint: str):
    """The saved state of an interrupted run with the same fingerprint, else None. A file that
    cannot be read, or that another run left, is only a lost shortcut: said, never an error."""
    if path is None or not path.is_file():
        return None
    try:
        saved = load_checkpoint(path)
        if saved.get("fingerprint") == fingerprint:
            return saved
        why = "was left by a run with other params or data"
    except Exception as e:
        why = f"cannot be read ({type(e).__name__}: {e})"
    print(
        f"warning: the resume file {path} {why}; it is ignored and training starts from epoch 1.",
        file=sys.stderr,  # line-buffered: no flush needed
    )
    return None


def train(
    cfg: Config,
    split: SplitResult,
    model_path: Path,
    *,
    live=None,
    timing_live=None,
    progress: bool | None = None,
    resume_path: Path | None = None,
) -> TrainOutcome:
    """Train cfg.model on the split; the checkpoint (the best epoch by the validation metric
    train.monitor, or the last epoch run: train.checkpoint) goes to model_path.

    With `resume_path`, the full state is saved there after every epoch, and a run started
    with the same params and data continues from the last completed epoch, ending exactly as
    an uninterrupted run would. The file is removed when training finishes.
    """
    tc = cfg.train
    threads, device = setup_torch(tc, cfg.seed)
    progress = sys.stderr.isatty() if progress is None else progress
    model = build_model(cfg.model, split.schema, feature_tensors(split), cfg.model_params).to(
        device
    )
    rated = RatedIndex(
        split.train_users, split.train_items, split.schema.num_users, split.schema.num_items
    )

    monitor = tc.monitor
    metric, _, monitor_k = parse_key(monitor)
    sign = 1.0 if metric.higher_is_better else -1.0  # sign * value: higher is better
    ks = sorted({CURVE_K, monitor_k or CURVE_K})

    def validate() -> dict:
        return evaluate_held_out(
            model, split.val, rated, ks=ks, batch_users=cfg.eval.batch_users, device=device
        ).metrics

    if not model.trainable:
        model.fit(split)
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
            0,
            val,
        )

    optimizer = make_optimizer(model, tc)
    scheduler = make_scheduler(optimizer, tc)
    objective = make_objective(cfg, split, rated, device)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    state = _LoopState()
    kept_payload = None
    fingerprint = run_fingerprint(cfg, split)
    saved = _load_resume(resume_path, fingerprint)
    if saved is not None:
        state = _LoopState(**saved["loop"])
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        shuffle.set_state(saved["shuffle_rng"])
        kept_payload = saved["kept"]
        if kept_payload is not None:
            save_checkpoint(model_path, kept_payload)  # DVC removed it before rerunning
        for row in state.history:  # DVC removed the curves too: replay them
            _log(live, row, "")
            if live is not None:
                live.next_step()
        print(
            f"resuming after epoch {state.epoch} (best so far: epoch {state.best_epoch})",
            flush=True,
        )

    stop_reason = f"reached train.epochs={tc.epochs}"
    epoch = state.epoch
    # Ctrl-C sets a flag that train_steps checks between batches: an interrupt never lands
    # inside a save or a finalizer, and the resume file always holds whole epochs.
    with deferred_interrupts() as interrupted:
        while state.epoch < tc.epochs:
            epoch = state.epoch + 1
            start = time.perf_counter()
            model.train()
            batches = tqdm(
                objective.batches(epoch, tc.batch_size, shuffle),
                desc=f"epoch {epoch}",
                disable=not progress,
                leave=False,
            )
            train_loss = train_steps(
                model, optimizer, batches, objective, tc.grad_clip, tc.amp, interrupted
            )
            if not math.isfinite(train_loss):
                raise TrainingError(
                    f"epoch {epoch}: the training loss is {train_loss}; stopping. The best "
                    f"checkpoint (epoch {state.best_epoch}) is kept. Lower train.learning_rate or "
                    "set train.grad_clip."
                )
            train_seconds = time.perf_counter() - start
            validated = epoch % tc.val_every == 0 or epoch == tc.epochs
            val, val_seconds = {}, 0.0
            if validated:
                val_start = time.perf_counter()
                val = validate()
                val_seconds = time.perf_counter() - val_start
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if validated:  # plateau_patience counts validations
                    scheduler.step(val[monitor])
            elif scheduler is not None:
                scheduler.step()

            row = {
                "train/loss": train_loss,
                **{f"val/{k}": v for k, v in val.items() if k != "users"},
                "train/lr": optimizer.param_groups[0]["lr"],
            }
            _log(live, row, "")
            if live is not None:
                live.next_step()
            if timing_live is not None:
                timing_live.log_metric("train/seconds_per_epoch", round(train_seconds, 3))
                if validated:
                    timing_live.log_metric("val/seconds", round(val_seconds, 3))
                timing_live.next_step()
            if progress:
                shown = (
                    f"  val {monitor} {val[monitor]:.4f}  hr@{CURVE_K} {val[f'hr@{CURVE_K}']:.4f}  "
                    f"auc {val['auc']:.4f}"
                    if validated
                    else ""
                )
                tqdm.write(f"epoch {epoch}: loss {train_loss:.4f}{shown}  ({train_seconds:.1f}s)")

            state.epoch = epoch
            state.history.append(row)
            state.seconds.append(train_seconds)
            if validated:
                score = sign * val[monitor]
                improved = score > state.best_score
                if improved:
                    state.best_score, state.best_epoch, state.best_val = score, epoch, val
                if improved or tc.checkpoint == "last":
                    state.kept_epoch, state.kept_val = epoch, val
                    kept_payload = checkpoint_payload(cfg, model, epoch, val)
                    save_checkpoint(model_path, kept_payload)
            if resume_path is not None:
                _save_resume(
                    resume_path,
                    fingerprint,
                    state,
                    model,
                    optimizer,
                    scheduler,
                    shuffle,
                    kept_payload,
                )
            # stop only right after a validation, so the last epoch run is always a validated one
            since_best = epoch - state.best_epoch
            if (
                validated
                and epoch < tc.epochs
                and epoch >= tc.min_epochs
                and since_best >= tc.patience
            ):
                stop_reason = f"early stop: no better {monitor} for {since_best} epochs"
                break
    if resume_path is not None:
        resume_path.unlink(missing_ok=True)
    return TrainOutcome(
        state.best_epoch,
        state.best_val,
        epoch,
        stop_reason,
        state.seconds,
        threads,
        str(device),
        model.num_parameters(),
        state.kept_epoch,
        state.kept_val,
    )
