"""The training loop: epochs of fresh negatives, validation every `val_every`, early stopping
on the validation metric `train.monitor`.

Plain PyTorch, no framework: one function a reader can hold in their head. The checkpoint and
the resume state are in checkpoint.py, the optimizer and its schedule in optim.py.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deepfm.config import Config
from deepfm.data.batches import feature_tensors
from deepfm.data.sampling import RatedIndex
from deepfm.data.splitting import CTRSplit, SplitResult
from deepfm.evaluation.metrics import ROWS, SAMPLED, parse_key, row_keys
from deepfm.evaluation.ranking import evaluate_held_out, user_sample
from deepfm.evaluation.rows import evaluate_rows
from deepfm.io import save_checkpoint
from deepfm.models import build_model
from deepfm.training import distributed
from deepfm.training.checkpoint import (
    LoopState,
    checkpoint_payload,
    data_fingerprint,
    load_resume,
    restore_resume,
    run_fingerprint,
    save_resume,
)
from deepfm.training.device import setup_torch
from deepfm.training.objectives import TrainingError, make_objective
from deepfm.training.optim import (
    clip_gradients,
    make_optimizer,
    make_scheduler,
    use_sparse_gradients,
)
from deepfm.training.progress import EpochProgress, log_row, log_timing
from deepfm.utils import deferred_interrupts

CURVE_K = 10  # validation computes the @k metrics at this k (the curves) and the monitor's k


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


def _check_ctr(cfg: Config, model, split: CTRSplit) -> None:
    """The ctr protocol scores rows by their given labels: only models that learn from the
    rows' fields apply, and the monitor is a row metric."""
    if not model.trainable:
        raise TrainingError(
            f"model {cfg.model!r} ranks items from users' histories (top-K protocol); dataset "
            f"{cfg.dataset!r} uses the ctr protocol: choose deepfm, xdeepfm, "
            "attention_deepfm, fm or lr."
        )
    if cfg.eval.sample_users:
        raise TrainingError(
            "params.yaml: 'eval.sample_users' is set, but the ctr protocol scores every row; "
            "set eval.sample_users to 0."
        )
    allowed = row_keys(grouped=split.val.groups is not None)
    if cfg.train.monitor not in allowed:
        raise TrainingError(
            f"params.yaml: 'train.monitor' is {cfg.train.monitor!r}; dataset {cfg.dataset!r} "
            f"uses the ctr protocol, scored by {', '.join(allowed)}: set train.monitor to one "
            "of them (e.g. -S train.monitor=auc)"
            + (
                "; gauc needs the rows' groups: declare protocol.group (a user field)."
                if cfg.train.monitor == "gauc"
                else "."
            )
        )


def train_steps(
    model,
    optimizer,
    batches,
    objective,
    grad_clip: float = 0.0,
    amp: bool = False,
    interrupted: threading.Event | None = None,
    ddp=None,
) -> float:
    """One pass of optimizer steps over an objective's batches; the mean loss per example.

    amp: run the forward pass under bfloat16 autocast (weights, gradients and the optimizer
    stay float32; bfloat16 has float32's range, so no loss scaling is needed; the objectives
    take their loss in float32).
    interrupted: a flag set by Ctrl-C (utils.deferred_interrupts); checked between batches.
    ddp: a distributed.Parallel when several processes train: the batches are this rank's
    shards, the loss goes through its DDP module (which averages the ranks' gradients),
    weighted by the rank's share of the global batch (Shard.weight), and the mean loss
    returned is over every rank's examples.
    """
    total = None
    count = 0
    device_type = next(model.parameters()).device.type
    for batch in batches:
        if interrupted is not None and interrupted.is_set():
            raise KeyboardInterrupt  # Ctrl-C, deferred to a point between two batches
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            loss, n = objective.loss(model, batch) if ddp is None else ddp.module(batch)
        optimizer.zero_grad(set_to_none=True)
        (loss if ddp is None else loss * ddp.shard.weight(n)).backward()
        if grad_clip > 0:
            clip_gradients(model.parameters(), grad_clip)
        optimizer.step()
        # summed on the device: a .item() per step would synchronise a GPU every batch
        weighted = loss.detach() * n
        total = weighted if total is None else total + weighted
        count += n
    if ddp is not None:
        total, count = ddp.ranks.sum([float("nan") if total is None else float(total), count])
        return total / max(count, 1)
    return float(total) / max(count, 1) if total is not None else float("nan")


def _outcome(state: LoopState, epochs_run, stop_reason, threads, device, model) -> TrainOutcome:
    return TrainOutcome(
        state.best_epoch,
        state.best_val,
        epochs_run,
        stop_reason,
        state.seconds,
        threads,
        str(device),
        model.num_parameters(),
        state.kept_epoch,
        state.kept_val,
    )


def train(
    cfg: Config,
    split: SplitResult,
    model_path: Path,
    *,
    live=None,
    timing_live=None,
    progress: bool | str | None = None,
    resume_path: Path | None = None,
) -> TrainOutcome:
    """Train cfg.model on the split; the checkpoint (the best epoch by the validation metric
    train.monitor, or the last epoch run: train.checkpoint) goes to model_path.

    With `resume_path`, the full state is saved there after every epoch, and a run started
    with the same params and data continues from the last completed epoch, ending exactly as
    an uninterrupted run would. The file is removed when training finishes.

    progress: None ("auto": a bar on a terminal, a line per epoch otherwise), "bar", "lines",
    or False / "off" (EpochProgress); True is "bar".

    Under torchrun (train.processes > 1; the train stage launches it) every rank calls this
    with the same arguments; rank 0 alone validates, writes model_path and resume_path and
    logs to live / timing_live (training.distributed).
    """
    world = distributed.world_size(cfg.train)
    threads, device = setup_torch(cfg.train, cfg.seed, world, distributed.local_rank())
    distributed.check_supported(cfg.train, device, world)
    ranks = distributed.join(device) if distributed.under_torchrun() else None
    signalled: list[threading.Event] = []  # _train's Ctrl-C / SIGTERM flag
    try:
        return _train(
            cfg, split, model_path, threads, device, ranks, live, timing_live, progress,
            resume_path, signalled,
        )  # fmt: skip
    except Exception as e:
        if ranks is None or not distributed.is_comm_error(e):
            raise
        if signalled and signalled[0].is_set():  # Ctrl-C stopped another rank first
            raise KeyboardInterrupt from e
        raise ranks.lost(e) from e
    finally:
        distributed.leave(ranks)


def _train(
    cfg, split, model_path, threads, device, ranks, live, timing_live, progress, resume_path,
    signalled,
) -> TrainOutcome:  # fmt: skip
    tc = cfg.train
    main = ranks is None or ranks.main  # the process that validates, saves and logs
    if not main:
        live = timing_live = None
        progress = False
    mode = {None: "auto", True: "bar", False: "off"}.get(progress, progress)
    report = EpochProgress(mode, tc.epochs)
    data = data_fingerprint(split)
    model = build_model(cfg.model, split.schema, feature_tensors(split), cfg.model_params).to(
        device
    )
    monitor = tc.monitor
    metric, _, monitor_k = parse_key(monitor)
    sign = 1.0 if metric.higher_is_better else -1.0  # sign * value: higher is better
    ks = sorted({CURVE_K, monitor_k or CURVE_K})
    if isinstance(split, CTRSplit):
        _check_ctr(cfg, model, split)
        rated = None

        def validate() -> dict:
            return evaluate_rows(model, split.val, device=device).metrics

    else:
        if ROWS in metric.rankings and SAMPLED not in metric.rankings:
            raise TrainingError(
                f"params.yaml: 'train.monitor' is {monitor!r}, a metric of the ctr protocol; "
                f"dataset {cfg.dataset!r} uses the top-K protocol: choose a ranking metric "
                "(e.g. full_ndcg@10)."
            )
        rated = RatedIndex.of_train(split)

        sample = user_sample(len(split.val.users), cfg.eval.sample_users, cfg.seed)
        val_users = split.val if sample is None else split.val.take(sample)

        def validate() -> dict:
            return evaluate_held_out(
                model, val_users, rated, ks=ks, batch_users=cfg.eval.batch_users, device=device
            ).metrics

    if not model.trainable:
        if not main:  # rank 0 fits it alone
            return _outcome(LoopState(), 0, "no training", threads, device, model)
        model.fit(split)
        val = validate()
        log_row(live, {f"val/{k}": v for k, v in val.items() if k != "users"})
        save_checkpoint(model_path, checkpoint_payload(cfg, model, 0, val, data))
        state = LoopState(best_val=val, kept_val=val)
        return _outcome(state, 0, "no training (fitted in closed form)", threads, device, model)

    if tc.sparse_embeddings:
        use_sparse_gradients(model)
    optimizer = make_optimizer(model, tc)
    scheduler = make_scheduler(optimizer, tc)
    objective = make_objective(cfg, split, rated, device)
    parallel = ranks.wrap(model, objective, device) if ranks is not None else None
    # the compiled module shares the model's parameters: checkpoints and evaluation use `model`
    step_model = model
    if tc.compile_mode != "none":
        step_model = torch.compile(model, mode=tc.compile_mode)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    state = LoopState()
    kept = None
    fingerprint = run_fingerprint(cfg, split)
    saved = load_resume(resume_path, fingerprint, warn=main)  # every rank reads the same file
    if saved is not None:
        state, kept = restore_resume(
            saved, model_path if main else None, model, optimizer, scheduler, shuffle
        )
        for row in state.history:  # DVC removed the curves too: replay them
            log_row(live, row)
        if main:
            print(
                f"resuming after epoch {state.epoch} (best so far: epoch {state.best_epoch})",
                flush=True,
            )

    stop_reason = f"reached train.epochs={tc.epochs}"
    epoch = state.epoch
    # Ctrl-C sets a flag that train_steps checks between batches: an interrupt never lands
    # inside a save or a finalizer, and the resume file always holds whole epochs.
    with deferred_interrupts() as interrupted:
        signalled.append(interrupted)
        while state.epoch < tc.epochs:
            epoch = state.epoch + 1
            start = time.perf_counter()
            model.train()
            if ranks is not None and ranks.world > 1:
                ranks.seed_epoch(cfg.seed, epoch)  # dropout: a stream per rank and epoch
            shard = parallel.shard if parallel is not None else None
            batches = objective.batches(epoch, tc.batch_size, shuffle, shard)
            train_loss = train_steps(
                step_model, optimizer, report.batches(batches, epoch), objective, tc.grad_clip,
                tc.amp, interrupted, parallel,
            )  # fmt: skip
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
                if main:
                    with distributed.all_cores(ranks, device):
                        val = validate()
                if ranks is not None:  # the others wait for rank 0's metrics
                    val = ranks.share(val)
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
            log_row(live, row)
            log_timing(timing_live, train_seconds, val_seconds if validated else None)
            report.epoch_done(epoch, train_loss, time.perf_counter() - start, val, monitor, CURVE_K)

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
                    kept = checkpoint_payload(cfg, model, epoch, val, data) if main else {}
                    if main:
                        save_checkpoint(model_path, kept)
            if resume_path is not None and main:
                save_resume(
                    resume_path, fingerprint, state, model, optimizer, scheduler, shuffle, kept
                )
            if ranks is not None:
                ranks.barrier()  # the others wait for rank 0's saves here, not in a step
            # stop only right after a validation, so the last epoch run is always a validated one
            since_best = epoch - state.best_epoch
            if validated and tc.min_epochs <= epoch < tc.epochs and since_best >= tc.patience:
                stop_reason = f"early stop: no better {monitor} for {since_best} epochs"
                break
    if resume_path is not None and main:
        resume_path.unlink(missing_ok=True)
    if kept is None:  # checkpoint best, and no validation gave a comparable (finite) monitor
        raise TrainingError(
            f"no validation gave a finite {monitor} (e.g. AUC of a validation split with one "
            "class only), so train.checkpoint: best kept no epoch and no checkpoint was "
            "written. Choose another train.monitor, or train.checkpoint: last."
        )
    return _outcome(state, epoch, stop_reason, threads, device, model)
