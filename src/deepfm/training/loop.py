"""The training loop: epochs of fresh negatives, validation every `val_every`, early stopping
on the validation metric `train.monitor`.

Plain PyTorch, no framework: `_train` reads as the run's steps in order (build the model and
its validation, fit in closed form or set up training, resume, the epochs, finish), each step
a function of its own. The checkpoint is in models/checkpoint.py, the resume state in
resume.py, the optimizer and its schedule in optim.py.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from deepfm.config import Config, TrainConfig
from deepfm.data.batches import feature_tensors
from deepfm.data.sampling import RatedIndex
from deepfm.data.splitting import CTRSplit, SplitResult
from deepfm.evaluation.metrics import ROWS, SAMPLED, parse_key, row_keys
from deepfm.evaluation.ranking import evaluate_held_out, user_sample
from deepfm.evaluation.rows import evaluate_rows
from deepfm.io import save_checkpoint
from deepfm.models import build_model
from deepfm.models.base import RankingModel
from deepfm.models.checkpoint import checkpoint_payload, data_fingerprint
from deepfm.training import distributed
from deepfm.training.device import setup_torch
from deepfm.training.monitor import check_monitor
from deepfm.training.objectives import (
    GivenLabels,
    GroupedPointwise,
    NextItemSoftmax,
    Pointwise,
    TrainingError,
    make_objective,
)
from deepfm.training.optim import (
    clip_gradients,
    make_optimizer,
    make_scheduler,
    use_sparse_gradients,
)
from deepfm.training.progress import EpochProgress, log_row, log_timing
from deepfm.training.resume import (
    LoopState,
    load_resume,
    restore_resume,
    run_fingerprint,
    save_resume,
)
from deepfm.utils import deferred_interrupts

CURVE_K = 10  # validation computes the @k metrics at this k (the curves) and the monitor's k

Objective = Pointwise | GroupedPointwise | NextItemSoftmax | GivenLabels
Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


class MetricLog(Protocol):
    """What the loop logs curves and timings to: a dvclive.Live (tests: a recorder)."""

    def log_metric(self, name: str, value: float) -> None: ...

    def next_step(self) -> None: ...


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


@dataclass
class Process:
    """This training process: its torch threads and device, its place among the ranks of a
    multi-process run (None: one plain process), and whether it is the one process that
    validates, saves and logs."""

    threads: int
    device: torch.device
    ranks: distributed.Ranks | None
    main: bool


@dataclass
class Logs:
    """Where a run reports: the curves, the timings, the person watching. On the processes
    other than rank 0: nowhere."""

    live: MetricLog | None
    timing_live: MetricLog | None
    report: EpochProgress


@dataclass
class Saves:
    """What the main process saves after an epoch: the kept checkpoint (train.checkpoint: the
    best or the last epoch) at model_path, the resume state at resume_path (if any)."""

    model_path: Path
    resume_path: Path | None
    data: str  # the split's data_fingerprint, recorded in the checkpoint
    fingerprint: str  # the run's run_fingerprint, recorded in the resume state
    kept: dict | None = None  # the kept checkpoint's payload ({} on the other ranks)


@dataclass
class Validation:
    """How this split is validated: `run` computes every validation metric of the model as
    it is now; `sign` * the monitor's value is higher when better."""

    run: Callable[[], dict]
    monitor: str
    sign: float
    rated: RatedIndex | None  # top-K: every user's rated items, which training samples around


@dataclass
class Trainer:
    """What the optimizer steps: the model (`step_model`: the same parameters, compiled or
    not), its optimizer and schedule, the objective, DDP's wrapper under several processes,
    and the generator that shuffles every epoch."""

    model: RankingModel
    step_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    objective: Objective
    parallel: distributed.Parallel | None
    shuffle: torch.Generator

    def resumed(self) -> tuple:
        """What the resume state saves and puts back, in resume.py's order."""
        return self.model, self.optimizer, self.scheduler, self.shuffle


@dataclass
class Run:
    """What every epoch step of a run reads and updates."""

    cfg: Config
    trainer: Trainer
    validation: Validation
    state: LoopState
    process: Process
    logs: Logs
    saves: Saves


def _check_ctr(cfg: Config, model: RankingModel, split: CTRSplit) -> None:
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
    amp: the forward pass under bfloat16 autocast (float32's range: no loss scaling; the
    weights, gradients, optimizer and the objectives' losses stay float32). interrupted: the
    Ctrl-C flag (utils.deferred_interrupts), checked between batches. ddp: a
    distributed.Parallel: this rank's shards, the loss through its DDP module weighted by the
    rank's share of the global batch (Shard.weight); the mean is over every rank's examples."""
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


def _outcome(
    state: LoopState, epochs_run: int, stop_reason: str, process: Process, model: RankingModel
) -> TrainOutcome:
    return TrainOutcome(
        state.best_epoch,
        state.best_val,
        epochs_run,
        stop_reason,
        state.seconds,
        process.threads,
        str(process.device),
        model.num_parameters(),
        state.kept_epoch,
        state.kept_val,
    )


def train(
    cfg: Config,
    split: SplitResult | CTRSplit,
    model_path: Path,
    *,
    live: MetricLog | None = None,
    timing_live: MetricLog | None = None,
    progress: bool | str | None = None,
    resume_path: Path | None = None,
) -> TrainOutcome:
    """Train cfg.model on the split; the checkpoint (the best epoch by the validation metric
    train.monitor, or the last epoch run: train.checkpoint) goes to model_path.

    With `resume_path`, the full state is saved there after every epoch, and a run started
    with the same params and data continues from the last completed epoch, ending exactly as
    an uninterrupted run would. The file is removed when training finishes.
    progress: EpochProgress's mode; None is "auto", True "bar" and False "off".
    Under torchrun (train.processes > 1; the train stage launches it) every rank calls this
    with the same arguments; rank 0 alone validates, writes model_path and resume_path and
    logs to live / timing_live (training.distributed).
    """
    check_monitor(cfg.train.monitor, cfg.eval.ks)  # a bad -S train.monitor fails at once
    world = distributed.world_size(cfg.train)
    threads, device = setup_torch(cfg.train, cfg.seed, world, distributed.local_rank())
    distributed.check_supported(cfg.train, device, world)
    ranks = distributed.join(device) if distributed.under_torchrun() else None
    process = Process(threads, device, ranks, main=ranks is None or ranks.main)
    signalled: list[threading.Event] = []  # _train's Ctrl-C / SIGTERM flag
    try:
        if not process.main:  # rank 0 alone logs and reports
            live = timing_live = None
            progress = False
        mode = {None: "auto", True: "bar", False: "off"}.get(progress, progress)
        logs = Logs(live, timing_live, EpochProgress(mode, cfg.train.epochs))
        return _train(cfg, split, model_path, resume_path, process, logs, signalled)
    except Exception as e:
        if ranks is None or not distributed.is_comm_error(e):
            raise
        if signalled and signalled[0].is_set():  # Ctrl-C stopped another rank first
            raise KeyboardInterrupt from e
        raise ranks.lost(e) from e
    finally:
        distributed.leave(ranks)


def _train(
    cfg: Config,
    split: SplitResult | CTRSplit,
    model_path: Path,
    resume_path: Path | None,
    process: Process,
    logs: Logs,
    signalled: list[threading.Event],
) -> TrainOutcome:
    """The run's steps in order. The model is built before anything else draws from torch's
    global generator (its initial weights are the first draws), and the shuffle generator
    is made after the optimizer (_trainer): moving either changes every number of a run."""
    data = data_fingerprint(split)
    model = build_model(cfg.model, split.schema, feature_tensors(split), cfg.model_params)
    model = model.to(process.device)
    validation = _validation(cfg, split, model, process.device)
    if not model.trainable:
        return _fit_closed_form(cfg, split, model, validation.run, process, logs, model_path, data)
    trainer = _trainer(cfg, split, model, validation.rated, process)
    saves = Saves(model_path, resume_path, data, run_fingerprint(cfg, split))
    state = _resume(saves, trainer, process, logs)
    run = Run(cfg, trainer, validation, state, process, logs, saves)
    stop_reason = _epochs(run, signalled)
    if resume_path is not None and process.main:
        resume_path.unlink(missing_ok=True)
    if saves.kept is None:  # checkpoint best, and no validation gave a comparable monitor
        raise TrainingError(
            f"no validation gave a finite {validation.monitor} (e.g. AUC of a validation split "
            "with one class only), so train.checkpoint: best kept no epoch and no checkpoint "
            "was written. Choose another train.monitor, or train.checkpoint: last."
        )
    return _outcome(state, state.epoch, stop_reason, process, model)


def _validation(
    cfg: Config, split: SplitResult | CTRSplit, model: RankingModel, device: torch.device
) -> Validation:
    """Validation by the split's protocol: every validation row scored (ctr), or the
    validation users' held-out items ranked (top-K; a seeded sample of the users with
    eval.sample_users) at CURVE_K and the monitor's k."""
    monitor = cfg.train.monitor
    metric, _, monitor_k = parse_key(monitor)
    sign = 1.0 if metric.higher_is_better else -1.0
    if isinstance(split, CTRSplit):
        _check_ctr(cfg, model, split)

        def row_metrics() -> dict:
            return evaluate_rows(model, split.val, device=device).metrics

        return Validation(row_metrics, monitor, sign, rated=None)
    if ROWS in metric.rankings and SAMPLED not in metric.rankings:
        raise TrainingError(
            f"params.yaml: 'train.monitor' is {monitor!r}, a metric of the ctr protocol; "
            f"dataset {cfg.dataset!r} uses the top-K protocol: choose a ranking metric "
            "(e.g. full_ndcg@10)."
        )
    ks = sorted({CURVE_K, monitor_k or CURVE_K})
    rated = RatedIndex.of_train(split)
    sample = user_sample(len(split.val.users), cfg.eval.sample_users, cfg.seed)
    val_users = split.val if sample is None else split.val.take(sample)
    batch_users = cfg.eval.batch_users

    def ranking_metrics() -> dict:
        return evaluate_held_out(
            model, val_users, rated, ks=ks, batch_users=batch_users, device=device
        ).metrics

    return Validation(ranking_metrics, monitor, sign, rated)


def _fit_closed_form(
    cfg: Config,
    split: SplitResult | CTRSplit,
    model: RankingModel,
    validate: Callable[[], dict],
    process: Process,
    logs: Logs,
    model_path: Path,
    data: str,
) -> TrainOutcome:
    """A model with nothing to train (ItemPop, item co-occurrence, EASE): fitted once by rank
    0, validated once, saved as epoch 0."""
    if not process.main:
        return _outcome(LoopState(), 0, "no training", process, model)
    model.fit(split)
    val = validate()
    log_row(logs.live, {f"val/{k}": v for k, v in val.items() if k != "users"})
    save_checkpoint(model_path, checkpoint_payload(cfg, model, 0, val, data))
    state = LoopState(best_val=val, kept_val=val)
    return _outcome(state, 0, "no training (fitted in closed form)", process, model)


def _trainer(
    cfg: Config,
    split: SplitResult | CTRSplit,
    model: RankingModel,
    rated: RatedIndex | None,
    process: Process,
) -> Trainer:
    """The optimizer, its schedule, the objective, DDP's wrapper and the shuffle generator,
    made in this order (the generator is seeded last)."""
    tc = cfg.train
    if tc.sparse_embeddings:
        use_sparse_gradients(model)
    optimizer = make_optimizer(model, tc)
    scheduler = make_scheduler(optimizer, tc)
    objective = make_objective(cfg, split, rated, process.device)
    ranks = process.ranks
    parallel = ranks.wrap(model, objective, process.device) if ranks is not None else None
    # the compiled module shares the model's parameters: checkpoints and evaluation use `model`
    step_model = model
    if tc.compile_mode != "none":
        step_model = torch.compile(model, mode=tc.compile_mode)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    return Trainer(model, step_model, optimizer, scheduler, objective, parallel, shuffle)


def _resume(saves: Saves, trainer: Trainer, process: Process, logs: Logs) -> LoopState:
    """Where the epochs start: an interrupted run's state (of the same fingerprint) put back
    in place, weights, optimizer, schedule, generators, kept checkpoint and curves; else
    epoch 0."""
    saved = load_resume(saves.resume_path, saves.fingerprint, warn=process.main)  # every rank
    if saved is None:
        return LoopState()
    model_path = saves.model_path if process.main else None
    state, saves.kept = restore_resume(saved, model_path, *trainer.resumed())
    for row in state.history:  # DVC removed the curves too: replay them
        log_row(logs.live, row)
    if process.main:
        print(
            f"resuming after epoch {state.epoch} (best so far: epoch {state.best_epoch})",
            flush=True,
        )
    return state


def _epochs(run: Run, signalled: list[threading.Event]) -> str:
    """The epochs after state.epoch, until train.epochs or an early stop; after each, the
    kept checkpoint and the resume state are saved. Returns why it stopped."""
    tc, state, saves, process = run.cfg.train, run.state, run.saves, run.process
    # Ctrl-C sets a flag that train_steps checks between batches: an interrupt never lands
    # inside a save or a finalizer, and the resume file always holds whole epochs.
    with deferred_interrupts() as interrupted:
        signalled.append(interrupted)
        while state.epoch < tc.epochs:
            epoch = state.epoch + 1
            val = _epoch(run, epoch, interrupted)
            if val is not None:
                _keep(run, epoch, val)
            if saves.resume_path is not None and process.main:
                save_resume(
                    saves.resume_path, saves.fingerprint, state, *run.trainer.resumed(), saves.kept
                )
            if process.ranks is not None:
                process.ranks.barrier()  # the others wait for rank 0's saves here, not in a step
            monitor = run.validation.monitor
            stop = _early_stop(tc, epoch, state.best_epoch, val is not None, monitor)
            if stop is not None:
                return stop
    return f"reached train.epochs={tc.epochs}"


def _epoch(run: Run, epoch: int, interrupted: threading.Event) -> dict | None:
    """One epoch: its training steps, a validation every train.val_every epochs (and after
    the last), the schedule's step, the curves and the epoch's line; added to `state`.
    Returns the validation metrics, or None in an epoch without validation."""
    tc, validation, logs = run.cfg.train, run.validation, run.logs
    start = time.perf_counter()
    train_loss = _train_epoch(run, epoch, interrupted)
    if not math.isfinite(train_loss):
        raise TrainingError(
            f"epoch {epoch}: the training loss is {train_loss}; stopping. The best "
            f"checkpoint (epoch {run.state.best_epoch}) is kept. Lower train.learning_rate or "
            "set train.grad_clip."
        )
    train_seconds = time.perf_counter() - start
    validated = epoch % tc.val_every == 0 or epoch == tc.epochs
    val, val_seconds = _validate(validation.run, run.process) if validated else ({}, 0.0)
    _step_scheduler(run.trainer.scheduler, val if validated else None, validation.monitor)
    row = {
        "train/loss": train_loss,
        **{f"val/{k}": v for k, v in val.items() if k != "users"},
        "train/lr": run.trainer.optimizer.param_groups[0]["lr"],
    }
    log_row(logs.live, row)
    log_timing(logs.timing_live, train_seconds, val_seconds if validated else None)
    seconds = time.perf_counter() - start
    logs.report.epoch_done(epoch, train_loss, seconds, val, validation.monitor, CURVE_K)
    run.state.epoch = epoch
    run.state.history.append(row)
    run.state.seconds.append(train_seconds)
    return val if validated else None


def _train_epoch(run: Run, epoch: int, interrupted: threading.Event) -> float:
    """The epoch's optimizer steps over a fresh draw of batches; the mean training loss."""
    tc, trainer, ranks = run.cfg.train, run.trainer, run.process.ranks
    trainer.model.train()
    if ranks is not None and ranks.world > 1:
        ranks.seed_epoch(run.cfg.seed, epoch)  # dropout: a stream per rank and epoch
    parallel = trainer.parallel
    shard = parallel.shard if parallel is not None else None
    batches = trainer.objective.batches(epoch, tc.batch_size, trainer.shuffle, shard)
    batches = run.logs.report.batches(batches, epoch)
    return train_steps(
        trainer.step_model,
        trainer.optimizer,
        batches,
        trainer.objective,
        tc.grad_clip,
        tc.amp,
        interrupted,
        parallel,
    )


def _validate(validate: Callable[[], dict], process: Process) -> tuple[dict, float]:
    """The validation metrics on every rank (rank 0 computes them, on every core while the
    others wait) and the seconds it took."""
    start = time.perf_counter()
    val = {}
    if process.main:
        with distributed.all_cores(process.ranks, process.device):
            val = validate()
    if process.ranks is not None:  # the others wait for rank 0's metrics
        val = process.ranks.share(val)
    return val, time.perf_counter() - start


def _step_scheduler(scheduler: Scheduler | None, val: dict | None, monitor: str) -> None:
    """The schedule's step at the end of an epoch; the plateau schedule steps only on a
    validation (val None: none this epoch), so plateau_patience counts validations."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if val is not None:
            scheduler.step(val[monitor])
    elif scheduler is not None:
        scheduler.step()


def _keep(run: Run, epoch: int, val: dict) -> None:
    """Record a validated epoch: the best so far by the monitor, and the checkpoint kept (the
    best epoch, or every epoch with train.checkpoint: last), written by the main process."""
    state, saves, validation, main = run.state, run.saves, run.validation, run.process.main
    score = validation.sign * val[validation.monitor]
    improved = score > state.best_score
    if improved:
        state.best_score, state.best_epoch, state.best_val = score, epoch, val
    if improved or run.cfg.train.checkpoint == "last":
        state.kept_epoch, state.kept_val = epoch, val
        model = run.trainer.model
        saves.kept = checkpoint_payload(run.cfg, model, epoch, val, saves.data) if main else {}
        if main:
            save_checkpoint(saves.model_path, saves.kept)


def _early_stop(
    tc: TrainConfig, epoch: int, best_epoch: int, validated: bool, monitor: str
) -> str | None:
    """Why to stop after this epoch, or None. Only right after a validation, so the last
    epoch run is always a validated one, and never before train.min_epochs."""
    since_best = epoch - best_epoch
    if validated and tc.min_epochs <= epoch < tc.epochs and since_best >= tc.patience:
        return f"early stop: no better {monitor} for {since_best} epochs"
    return None
